"""`sparkv evaluate --paper`: the seed paper's comparison table (see `sparkv.analysis.paper`)."""

from __future__ import annotations

import argparse
import json
import os
import platform

from sparkv.analysis.paper import PAPER_CLAIMS, PaperConfig, paper_jobs, paper_summary, run_paper_job
from sparkv.commands.common import floats, format_table, write_csv
from sparkv.core.attention import parse_attention
from sparkv.core.errors import UserError

COLUMNS = [
    ("device", "device", ""), ("model", "model", ""), ("n", "scenarios", "d"),
    ("vs_local", f"x local dense (paper {PAPER_CLAIMS['local']})", ".2f"),
    ("vs_stream", f"x CacheGen (paper {PAPER_CLAIMS['stream']})", ".2f"),
    ("vs_cake", f"x cake same codec+attention (paper {PAPER_CLAIMS['cake']})", ".3f"),
    ("vs_local_sparse", "x local sparse", ".2f"), ("sparkv_ttft_med_s", "sparkv TTFT med s", ".2f"),
]  # fmt: skip


def paper_config(args: argparse.Namespace) -> PaperConfig:
    from sparkv.analysis.evaluate import default_traces
    from sparkv.traces.expand import expand_traces

    d = PaperConfig(traces=[])
    traces = expand_traces(args.trace) if args.trace else default_traces()
    contexts = [int(x) for x in floats(args.context_tokens)] if args.context_tokens else d.context_tokens
    ratios = floats(args.ratios) if args.ratios else d.ratios
    if any(c <= 0 for c in contexts) or any(r <= 0 for r in ratios):
        raise UserError(f"--context-tokens and --ratios must be positive, got {contexts}, {ratios}")
    attention = parse_attention(args.attention).name if args.attention != "dense" else d.attention
    codec = args.codec if args.codec != "fp16" else d.codec
    devices = [args.device] if args.device else d.devices
    models = [args.model] if args.model != "smollm2-135m" else d.models
    chunk = args.chunk_tokens if args.chunk_tokens != 512 else d.chunk_tokens
    return PaperConfig(traces, devices, models, contexts, ratios, chunk, codec, attention)


def run_paper(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    cfg = paper_config(args)
    jobs = paper_jobs(cfg)
    print(f"evaluate --paper: {len(cfg.devices)} devices x {len(cfg.models)} models x {len(cfg.context_tokens)} "
          f"contexts x {len(cfg.traces)} traces x {len(cfg.ratios)} ratios = {len(jobs)} scenarios; codec "
          f"{cfg.codec}, attention {cfg.attention}, {cfg.chunk_tokens}-token chunks")  # fmt: skip
    rows = []
    n_jobs = max(1, args.jobs)
    with tqdm(total=len(jobs), unit="scenario") as bar:
        if n_jobs == 1:
            for job in jobs:
                rows.append(run_paper_job(job))
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=n_jobs) as pool:
                for row in pool.map(run_paper_job, jobs):
                    rows.append(row)
                    bar.update()
    summary = paper_summary(rows)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "paper_rows.csv")
    (out / "paper.json").write_text(json.dumps({"config": cfg.to_dict(), "summary": summary, "claims": PAPER_CLAIMS,
                                                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}},
                                               indent=1, default=str))  # fmt: skip
    print("\nSparKV's TTFT gain, median over scenarios (simulated; roofline device profiles, modelled sparse kernel)")
    print(format_table(summary, COLUMNS))
    print(f"wrote {out}/ (paper_rows.csv, paper.json)")
    return 0
