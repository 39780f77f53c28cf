"""Bring your own trace and your own device profile (docs/own-traces-and-profiles.md).

    python docs/examples/own_trace_and_profile.py --out own    # seconds

1. A bandwidth log of your own (here: a headerless `time_s,bytes_per_second` CSV written by this script)
   named with loader options, checked with the same statistics `sparkv traces show` prints.
2. A trace built in Python from numpy arrays, simulated without any file.
3. A device profile of your own: a built-in analytic one with your numbers, saved as JSON and used by path.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

import sparkv
from sparkv.cost_models.profiles import load_profile
from sparkv.traces import Trace, trace_stats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("own"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. a log of (time s, bytes/s) without a header: say which column is which, and in what unit
    rng = np.random.default_rng(0)
    rates_bps = np.clip(rng.normal(1.5e6, 0.6e6, 90), 0.0, None)  # 90 s around 12 Mbit/s
    log = args.out / "my-link.csv"
    log.write_text("".join(f"{t},{r:.0f}\n" for t, r in enumerate(rates_bps)))
    spec = f"{log}?format=columns&time_col=0&rate_col=1&rate_unit=B/s&gaps=outage"
    trace = sparkv.load_trace(spec)
    stats = trace_stats(trace)
    print(f"{trace.name}: {stats.duration_s:.0f} s, mean {stats.mean_mbit_s:.2f} Mbit/s, p10 {stats.p10_mbit_s:.2f} "
          f"Mbit/s, gaps: {trace.info['gaps']}")  # fmt: skip

    # 2. a trace from arrays: 10 s at 20 Mbit/s, then 5 s at 1 Mbit/s, looping (rates in BYTES per second)
    fade = Trace(np.array([0.0, 10.0]), np.array([20e6 / 8, 1e6 / 8]), 15.0, name="fade")
    sc = sparkv.scenario(context_tokens=4096, chunk_tokens=512, trace=spec)
    from_file = sparkv.simulate(sc, ["local", "stream", "sparkv"]).table
    from_arrays = sparkv.simulate(sc, ["local", "stream", "sparkv"], trace=fade).table

    # 3. a device profile of your own: start from a built-in analytic profile and put in your numbers
    phone = load_profile("snapdragon-8gen3-npu")
    mine = dataclasses.replace(
        phone, name="my-phone", device="my phone: the Snapdragon profile at half its compute rate, 6 W active",
        compute=dataclasses.replace(phone.compute, peak_flops=phone.compute.peak_flops / 2),
        power=dataclasses.replace(phone.power, active_w=6.0),
        valid_for="a what-if estimate: half the Snapdragon 8 Gen 3 NPU's rate",
    )  # fmt: skip
    path = mine.save(args.out / "my-phone.json")
    on_mine = sparkv.simulate(sc.with_(device=str(path)), ["local", "stream", "sparkv"]).table

    columns = ["policy", "ttft_s", "energy_j", "mb_streamed", "trace_name", "device"]
    for title, table in (("your CSV", from_file), ("a trace from arrays", from_arrays), ("your profile", on_mine)):
        print(f"{title}:")
        print(table[columns].round(3).to_string(index=False))
    return {"trace": trace, "from_file": from_file, "from_arrays": from_arrays, "on_mine": on_mine, "profile": path}


if __name__ == "__main__":
    main()
