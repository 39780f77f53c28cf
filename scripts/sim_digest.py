"""A digest of simulated results over a fixed set of scenarios, to prove a change leaves them unchanged.

    PYTHONPATH=$PWD python scripts/sim_digest.py [--verbose]

Runs every registered loading policy (the oracle too) on each scenario below in the SimPy model and hashes
each `Result.to_dict()` (TTFT, energy, spans, bytes, cells, config, policy log) as canonical JSON; prints one
sha256 per scenario and one over all. Deterministic: the simulator has no wall-clock inputs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from sparkv import api
from sparkv.core.config import Scenario

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
POLICIES = ["local", "stream", "cake", "static", "sparkv", "oracle"]  # fixed: new policies do not change it
SCENARIOS = [
    Scenario(context_tokens=2048, chunk_tokens=256, trace="lte:seed=0"),
    Scenario(context_tokens=8192, chunk_tokens=512, trace="lte:seed=3", codec="int8"),
    Scenario(context_tokens=4096, chunk_tokens=512, trace=str(TRACES / "mahimahi_lte_us" / "Verizon-LTE-short.down"),
             compute_noise=0.05),
    Scenario(context_tokens=8192, chunk_tokens=512, trace=str(TRACES / "nyu_mets_lte" / "7Train1.csv")),
]


def digest(verbose: bool = False) -> str:
    total = hashlib.sha256()
    for sc in SCENARIOS:
        run = api.simulate(sc, POLICIES, warn=False)
        h = hashlib.sha256()
        for r in sorted(run.results, key=lambda r: r.policy):
            blob = json.dumps(r.to_dict(), sort_keys=True, default=str).encode()
            h.update(blob)
            if verbose:
                print(f"  {r.policy:8s} ttft {r.ttft_s:.6f} s  {hashlib.sha256(blob).hexdigest()[:12]}")
        print(f"{h.hexdigest()}  {sc.context_tokens} tokens, {sc.trace.split('/')[-1]}, {sc.codec}"
              f"{', stalled: ' + ', '.join(run.stalled) if run.stalled else ''}")
        total.update(h.digest())
    return total.hexdigest()


if __name__ == "__main__":
    print(f"all: {digest('--verbose' in sys.argv)}")
