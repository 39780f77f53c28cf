"""TTFT per policy with 0, 25 % and 50 % of an 8k context's chunks on local disk, simulated over real traces.

    PYTHONPATH=$PWD python scripts/local_disk_table.py [STORAGE]   (default storage profile: this-vm)

Scenario: SmolLM2-135M spec, 8192 context tokens in chunks of 512, device profile cpu-smollm2, fp16 codec,
the traces below from ../shared/traces; prints TTFT in seconds per policy (the oracle only without local KV,
where it is defined) and the configuration.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sparkv import api
from sparkv.core.config import LocalKV, Scenario

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
FILES = ["nyu_mets_lte/7Train1.csv", "mahimahi_lte_us/Verizon-LTE-short.down", "norway_hsdpa_3g/norway_bus_1"]
POLICIES = ["local", "stream", "cake", "sparkv", "oracle", "disk+local", "disk+stream", "disk+cake"]


def main(storage: str = "this-vm") -> None:
    print(f"8192 context tokens, 16 chunks of 512, smollm2-135m on cpu-smollm2, fp16; local disk: {storage}")
    print(f"{'trace':28s} {'local':>6s} " + " ".join(f"{p:>11s}" for p in POLICIES) + "   (TTFT s)")
    for name in FILES:
        path = TRACES / name
        trace = str(path)
        for pct in (0, 25, 50):
            n = 16 * pct // 100
            sc = Scenario(context_tokens=8192, chunk_tokens=512, trace=trace,
                          local=LocalKV(n, storage=storage) if n else None)  # fmt: skip
            names = [p for p in POLICIES if (p == "oracle") == (n == 0) or p in ("local", "stream", "cake", "sparkv")]
            names = [p for p in names if n or not p.startswith("disk+")]
            run = api.simulate(sc, names, warn=False)
            ttft = {r.policy: r.ttft_s for r in run.results}
            cells = " ".join(f"{ttft[p]:11.2f}" if p in ttft else f"{'-':>11s}" for p in POLICIES)
            print(f"{Path(trace).name[:28]:28s} {pct:5d}% {cells}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
