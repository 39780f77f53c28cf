"""A real-device validation run: the same requests in the real executor and in the simulator (docs/validation.md).

    python docs/examples/validate_real.py --out validation         # SmolLM2-135M on this CPU (a few minutes)
    python docs/examples/validate_real.py --tiny --out /tmp/v      # a tiny random model: seconds

Each real run starts a KV server process, replays the trace on a paced loopback link, prefills the model
layer by layer and streams the rest; the simulator predicts the same request from the same cost table.
Writes validation.csv (predicted and measured TTFT per run) and a scatter figure, then runs the policies
once more for real on the built-in document and shows each full answer against the reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

import sparkv

TRACES = ["const:20mbps,600s", "steps:2s@40mbps,2s@4mbps"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("validation"))
    parser.add_argument("--tiny", action="store_true", help="a tiny random-weight model instead of SmolLM2")
    args = parser.parse_args(argv)

    if args.tiny:
        from sparkv.executor.model.models import tiny_model_dir

        os.environ.setdefault("SPARKV_CACHE", tempfile.mkdtemp(prefix="sparkv-cache-"))  # KV store files
        model = str(tiny_model_dir(Path(tempfile.mkdtemp(prefix="tiny-")) / "m", num_layers=3, tokenizer=True))
        base = sparkv.scenario(model=model, context_tokens=192, chunk_tokens=64, device="analytic-cpu-2core")
    else:
        base = sparkv.scenario(model="smollm2-135m", context_tokens=2048, chunk_tokens=256, device="cpu-smollm2")
    policies = ["local", "stream", "cake"] if args.tiny else ["local", "stream", "cake", "sparkv"]
    table = sparkv.validate(base, TRACES, policies, link="pacing", probe=not args.tiny, progress=lambda line: None)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "validation.csv", index=False)
    shown = table[["trace", "policy", "sim_ttft_s", "real_ttft_s", "ttft_err_pct", "replay_mismatches"]]
    print("predicted (sim) vs measured (real) TTFT:")
    print(shown.round(3).to_string(index=False))
    err = table["ttft_err_pct"].abs()
    print(f"|error|: median {err.median():.1f} %, max {err.max():.1f} %; replay mismatches "
          f"{int(table['replay_mismatches'].sum())} (0: every real decision reproduced)")  # fmt: skip
    figure = plot_pairs(table, args.out / "validation-ttft.png")

    # enough tokens for the whole answer ("The new password ... is saffron-876" is 15 tokens)
    real = sparkv.run_real(base, policies, document="builtin", link="pacing", max_new_tokens=20,
                           bandwidth_scale="auto")  # fmt: skip
    answers = real.table[["policy", "ttft_s", "answer", "answer_matches"]]
    print(f"question: {real.question} (reference {real.reference!r})")
    for row in answers.itertuples():
        print(f"  {row.policy:7s} {row.ttft_s:7.3f} s  matches: {row.answer_matches!s:5s}  answer: {row.answer!r}")
    print("wrote", args.out / "validation.csv", figure)
    return {"table": table, "answers": answers, "figure": figure}


def plot_pairs(table: Any, path: Path) -> Path:
    """Measured against predicted TTFT, one point per real run, with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for policy, group in table.groupby("policy"):
        ax.scatter(group["sim_ttft_s"], group["real_ttft_s"], label=policy)
    top = 1.1 * float(max(table["sim_ttft_s"].max(), table["real_ttft_s"].max()))
    ax.plot([0, top], [0, top], color="0.5", lw=0.8, ls="--", label="measured = predicted")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted TTFT (s, simulator)")
    ax.set_ylabel("measured TTFT (s, real executor)")
    ax.set_title("Simulator vs real runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
