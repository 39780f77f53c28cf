"""What-if study: the policies over real network traces as the link gets slower or faster (docs/what-if.md).

    python docs/examples/what_if.py --out what-if --jobs 2  # the study on the page: 15 traces, 8k tokens
    python docs/examples/what_if.py --quick --out /tmp/w    # synthetic traces, 2k tokens: seconds

Everything runs in the simulator (SimPy, the built-in device profile measured on a 2-core CPU); energy is
modelled. Writes what-if.csv (one row per run, with its configuration) and two figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import sparkv

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"
REAL_TRACES = [f"{SHARED}/{name}" for name in ("mahimahi_lte_us", "nyu_mets_lte", "ucc_5g_ireland", "5gophers_mmwave",
                                                 "norway_hsdpa_3g")]  # fmt: skip
CODECS = ["fp16", "int4-t32-s1-rot"]  # lossless half precision; 4-bit at 29.9 % of its bytes
SYNTHETIC = ["lte:seed=1,dur=120", "ge:seed=2,good=20mbps,bad=1mbps,dur=120"]
POLICIES = ["local", "stream", "cake", "sparkv", "oracle"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("what-if"))
    parser.add_argument("--quick", action="store_true", help="synthetic traces, a short context")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)

    traces = SYNTHETIC if args.quick or not SHARED.is_dir() else REAL_TRACES
    base = sparkv.scenario(context_tokens=2048 if args.quick else 8192, chunk_tokens=512, device="cpu-smollm2")
    scales = [0.5, 2.0] if args.quick else [0.25, 0.5, 1.0, 2.0, 4.0]
    grid = sparkv.sweep(base, trace=traces, bandwidth_scale=scales, codec=CODECS, policy=POLICIES, jobs=args.jobs)
    table = grid.table
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "what-if.csv", index=False)

    ok = table[table["status"] == "ok"]
    median_ttft = ok.pivot_table(index=["codec", "bandwidth_scale"], columns="policy", values="ttft_s",
                                 aggfunc="median")  # fmt: skip
    print(f"{len(table)} runs over {table['trace'].nunique()} traces; median TTFT (s) by codec and bandwidth scale:")
    print(median_ttft[[p for p in POLICIES if p in median_ttft]].round(2).to_string())
    key = ["trace", "codec", "bandwidth_scale"]
    by_policy = {p: ok[ok["policy"] == p].set_index(key)["ttft_s"] for p in ("local", "stream", "sparkv", "oracle")}
    best_single = by_policy["local"].combine(by_policy["stream"], min)
    for name, ratio in (("best of local/stream", best_single / by_policy["sparkv"]),
                        ("oracle", by_policy["oracle"] / by_policy["sparkv"])):  # fmt: skip
        print(f"sparkv vs {name}: median x{ratio.median():.2f}, p10 x{ratio.quantile(0.1):.2f}, "
              f"worst x{ratio.min():.2f} (above 1: sparkv faster)")  # fmt: skip
    unfinished = table[table["status"] != "ok"].groupby("policy").size()
    if len(unfinished):
        print("runs that did not finish within 3600 s simulated (left out of the medians): "
              + ", ".join(f"{p} {n}" for p, n in unfinished.items()))  # fmt: skip
    looped = table.groupby("trace")["trace_looped"].sum()
    print(f"{int((looped > 0).sum())} of {len(looped)} traces replayed from their start under a long run "
          f"({int(looped.sum())} runs): their trace was shorter than the request")  # fmt: skip
    figures = [plot_ttft(median_ttft, args.out / "what-if-ttft.png"),
               plot_front(ok, args.out / "what-if-energy.png")]  # fmt: skip
    print("wrote", args.out / "what-if.csv", *figures)
    return {"table": table, "median_ttft": median_ttft, "figures": figures}


def plot_ttft(median_ttft: Any, path: Path) -> Path:
    """Median TTFT against the bandwidth scale, one line per policy, one panel per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codecs = list(dict.fromkeys(median_ttft.index.get_level_values("codec")))
    fig, axes = plt.subplots(1, len(codecs), figsize=(5.2 * len(codecs), 4), sharey=True, squeeze=False)
    for ax, codec in zip(axes[0], codecs, strict=True):
        part = median_ttft.loc[codec]
        for policy in part.columns:
            ax.plot(part.index, part[policy], marker="o", label=policy)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bandwidth scale (x the trace's rates)")
        ax.set_title(f"codec {codec}", fontsize="medium")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("median TTFT over traces (s, simulated)")
    axes[0, -1].legend()
    fig.suptitle("Time to first token as the link speeds up")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_front(ok: Any, path: Path) -> Path:
    """Every run's energy against its TTFT, one colour per policy: the TTFT-energy front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for policy, group in ok.groupby("policy"):
        ax.scatter(group["ttft_s"], group["energy_j"], s=12, alpha=0.7, label=policy)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("TTFT (s, simulated)")
    ax.set_ylabel("energy (J, modelled)")
    ax.set_title("Energy against TTFT, one point per run")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
