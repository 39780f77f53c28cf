"""Tune the SparKV policy on training traces, then judge it on traces it never saw (docs/tuning.md).

    python docs/examples/tune_heldout.py --out tuned            # the page's run: 3G traces, budget 120
    python docs/examples/tune_heldout.py --quick --out /tmp/t   # synthetic traces, budget 8: seconds

The search (differential evolution over SparKVConfig, seeded with the defaults) sees only the training
traces; the held-out traces are simulated afterwards with the default and the tuned config. Writes the
tuned config (tuned-sparkv.json: load it with `--policy-config` or pass its path as a policy name), the
per-run table and a figure of held-out TTFT.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import sparkv

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces" / "norway_hsdpa_3g"
SYNTHETIC_TRAIN = ["lte:seed=1,dur=120,mean=4mbps", "ge:seed=2,good=8mbps,bad=0.5mbps,dur=120"]
SYNTHETIC_TEST = ["lte:seed=7,dur=120,mean=4mbps"]


def split(traces: list[str]) -> tuple[list[str], list[str]]:
    """Every third trace held out (a fixed split, so the page's numbers can be reproduced)."""
    return [t for i, t in enumerate(traces) if i % 3 != 2], [t for i, t in enumerate(traces) if i % 3 == 2]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tuned"))
    parser.add_argument("--quick", action="store_true", help="synthetic traces, a tiny budget")
    parser.add_argument("--budget", type=int, help="config evaluations (default 120; quick 8)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)

    if args.quick or not SHARED.is_dir():
        train, test = SYNTHETIC_TRAIN, SYNTHETIC_TEST
    else:
        train, test = split(sorted(str(p) for p in SHARED.iterdir() if p.name.startswith("norway_")))
    base = sparkv.scenario(context_tokens=1024 if args.quick else 4096, chunk_tokens=256, device="cpu-smollm2")
    run = sparkv.tune(base, train, test, budget=args.budget or (8 if args.quick else 120), popsize=2 if args.quick
                      else 3, bandwidth_scales=[1.0] if args.quick else [0.5, 1.0], jobs=args.jobs)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    config = run.save(args.out / "tuned-sparkv.json")
    summary = run.summary()
    print(f"training traces: {len(train)}, held-out traces: {len(test)}; {run.info.get('evaluations', 0)} configs")
    print(summary.round(3).to_string(index=False))
    # the saved config is a policy like any other: simulate it beside the default on the held-out traces
    check = sparkv.sweep(base, trace=test, policy=["sparkv", str(config)])
    held = check.table.pivot_table(index="trace_name", columns="policy", values="ttft_s")
    print("held-out TTFT (s):")
    print(held.round(3).to_string())
    run.table.to_csv(args.out / "tune-runs.csv", index=False)
    figure = plot_heldout(held, args.out / "tune-heldout.png")
    print("wrote", config, args.out / "tune-runs.csv", figure)
    return {"run": run, "summary": summary, "held_out": held, "config": config, "figure": figure}


def plot_heldout(held: Any, path: Path) -> Path:
    """Held-out TTFT per trace, default against tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    held.plot.bar(ax=ax, rot=20)
    ax.set_ylabel("TTFT (s, simulated)")
    ax.set_xlabel("")
    ax.set_title("Held-out traces: default SparKV config vs tuned")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
