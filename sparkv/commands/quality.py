"""`sparkv quality`: answer quality of lossy KV codecs vs the lossless KV, on LEval documents with the real model."""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sparkv.analysis.quality import ATTENTION_PREFIX, DEFAULT_CODECS, TASKS, DocumentCost, Outcome, QualityConfig
from sparkv.analysis.sparse_study import CellRecord
from sparkv.commands.common import format_table
from sparkv.commands.values import pos_float, pos_int
from sparkv.core.attention import parse_attention
from sparkv.core.errors import UserError

TARGET = {"max_bytes_pct": 30.0, "min_first_token_pct": 95.0, "max_score_drop_points": 1.0}


def register(sub: argparse._SubParsersAction) -> None:
    d = QualityConfig()
    p = sub.add_parser("quality", help="answer quality of KV codecs vs lossless KV on LEval (real model)")
    p.add_argument("--codec", action="append", help=f"codec to test, repeatable (default {' '.join(DEFAULT_CODECS)})")
    p.add_argument("--dataset", action="append",
                   help=f"LEval task ({', '.join(TASKS)}) or a JSONL file of documents: LEval's fields, or "
                        "FILE.jsonl?context=F&question=F&answer=F[&metric=exam|f1|rouge|contains]; repeatable "
                        "(default: the three LEval tasks)")  # fmt: skip
    p.add_argument("--documents", type=pos_int, default=d.documents, help=f"documents per dataset ({d.documents})")
    p.add_argument("--questions-per-doc", type=pos_int, default=d.questions_per_doc,
                   help=f"questions per document ({d.questions_per_doc})")
    p.add_argument("--max-context-tokens", type=pos_int, default=d.max_context_tokens,
                   help=f"truncate each document to this many tokens ({d.max_context_tokens})")
    p.add_argument("--chunk-tokens", type=pos_int, default=d.chunk_tokens,
                   help=f"tokens per KV cell ({d.chunk_tokens})")
    p.add_argument("--new-tokens", type=pos_int, default=d.new_tokens,
                   help=f"greedy tokens compared and scored ({d.new_tokens})")
    p.add_argument("--model", default=d.model, help="smollm2 or a Hugging Face model directory (default smollm2)")
    p.add_argument("--data-dir", type=Path, help="folder with the LEval JSONL files (default ../shared/datasets/leval)")
    p.add_argument("--out", type=Path, help="folder for quality.json (configuration and every answer) and quality.csv")
    p.add_argument("--attention",
                   help="also compute the context locally with this attention and compare with dense (e.g. "
                   "block-sparse:tau=0.9,block=64); writes sparsity.csv (per cell kept blocks, wall s) and "
                   "sparsity_profile.json (the fit the simulator uses) to --out")
    p.add_argument("--layer-bits", metavar="CODECS",
                   help="instead: measure each layer's sensitivity (KL when that layer alone goes through each "
                   "of these comma-separated codecs) and choose a codec per layer within --byte-budget-pct")
    p.add_argument("--byte-budget-pct", type=pos_float, default=35.0,
                   help="bytes of the per-layer choice, %% of fp16 (default 35)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=quality)


def config_from_args(args: argparse.Namespace) -> QualityConfig:
    from sparkv.cost_models.codecs import get_codec

    for name in ("documents", "questions_per_doc", "max_context_tokens", "chunk_tokens", "new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    codecs = tuple(dict.fromkeys(get_codec(n).name for n in (args.codec or DEFAULT_CODECS)))  # checks names
    return QualityConfig(
        codecs=codecs,
        datasets=tuple(dict.fromkeys(args.dataset or TASKS)),
        documents=args.documents,
        questions_per_doc=args.questions_per_doc,
        max_context_tokens=args.max_context_tokens,
        chunk_tokens=args.chunk_tokens,
        new_tokens=args.new_tokens,
        model=args.model,
        data_dir=str(args.data_dir or ""),
        attention=(parse_attention(args.attention).name,) if args.attention else (),  # checks the name
    )


def summarise(outcomes: list[Outcome], costs: list[DocumentCost], codec: str, dataset: str | None) -> dict[str, Any]:
    """One table row: a codec over one dataset (or all, for None)."""
    rows = [o for o in outcomes if o.codec == codec and dataset in (None, o.dataset)]
    spent = [c.cost for c in costs if c.codec == codec and dataset in (None, c.dataset)]
    wire, fp16, cells = (sum(getattr(c, f) for c in spent) for f in ("wire_bytes", "fp16_bytes", "cells"))
    score_l = 100 * statistics.fmean(o.score_lossless for o in rows) if rows else float("nan")
    score_c = 100 * statistics.fmean(o.score_codec for o in rows) if rows else float("nan")

    def pct(values: list[float]) -> float:
        return 100 * statistics.fmean(values) if values else float("nan")

    return {
        "codec": codec,
        "dataset": dataset or "all",
        "questions": len(rows),
        "bytes_pct_fp16": 100 * wire / fp16 if fp16 else float("nan"),
        "first_token_pct": pct([float(o.first_token) for o in rows]),
        "prefix_pct": pct([o.prefix_fraction for o in rows]),
        "exact_pct": pct([float(o.exact) for o in rows]),
        "kl_nats": statistics.fmean(o.kl_nats for o in rows) if rows else float("nan"),
        "score_lossless_pts": score_l,
        "score_codec_pts": score_c,
        "score_diff_pts": score_c - score_l,
        "encode_ms_per_cell": 1e3 * sum(c.encode_s for c in spent) / cells if cells else float("nan"),
        "decode_ms_per_cell": 1e3 * sum(c.decode_s for c in spent) / cells if cells else float("nan"),
    }


def meets_target(row: dict[str, Any]) -> bool:
    return bool(
        row["bytes_pct_fp16"] <= TARGET["max_bytes_pct"]
        and row["first_token_pct"] >= TARGET["min_first_token_pct"]
        and row["score_diff_pts"] >= -TARGET["max_score_drop_points"]
    )


def columns(new_tokens: int) -> list[tuple[str, str, str]]:
    return [
        ("dataset", "dataset", ""),
        ("questions", "questions", "d"),
        ("bytes_pct_fp16", "bytes % of fp16", ".1f"),
        ("first_token_pct", "first token agree %", ".1f"),
        ("prefix_pct", f"{new_tokens}-token agree %", ".1f"),
        ("exact_pct", f"{new_tokens}-token exact %", ".1f"),
        ("kl_nats", "mean KL nats", ".4f"),
        ("score_lossless_pts", "score lossless pts", ".1f"),
        ("score_codec_pts", "score codec pts", ".1f"),
        ("score_diff_pts", "diff pts", "+.1f"),
    ]


def quality(args: argparse.Namespace) -> int:
    import torch

    from sparkv.analysis.quality import run_quality
    from sparkv.executor.model.models import load_model

    config = config_from_args(args)
    loaded = load_model(config.model, device="cpu", dtype="float32")
    if args.layer_bits:
        return layer_bits(args, config, loaded)
    t0 = time.perf_counter()
    cells: list[CellRecord] = []
    outcomes, costs = run_quality(loaded, config, show_progress=not args.no_progress, cells=cells)
    wall_s = time.perf_counter() - t0
    if not outcomes:
        raise UserError("no questions were run: check --dataset, --documents and --questions-per-doc")
    summaries = []
    datasets = list(dict.fromkeys(o.dataset for o in outcomes))  # a file's label is its stem
    for codec in (*config.codecs, *(ATTENTION_PREFIX + a for a in config.attention)):
        rows = [summarise(outcomes, costs, codec, d) for d in datasets] + [summarise(outcomes, costs, codec, None)]
        summaries += rows
        total = rows[-1]
        print(f"\ncodec {codec}: encode {total['encode_ms_per_cell']:.2f} ms/cell, "
              f"decode {total['decode_ms_per_cell']:.2f} ms/cell (K+V, {config.chunk_tokens} tokens)")
        print(format_table(rows, columns(config.new_tokens)))
    overall = [s for s in summaries if s["dataset"] == "all"]
    met = [s["codec"] for s in overall if meets_target(s)]
    ctx = sorted({o.context_tokens for o in outcomes})
    if cells:
        print_sparsity(cells)
    variants = len(config.codecs) + len(config.attention)
    print(f"\n{len(outcomes) // variants} questions, context {ctx[0]}-{ctx[-1]} tokens, model "
          f"{loaded.model_id}, {torch.get_num_threads()} torch threads, {wall_s:.0f} s")
    print(f"target (<= {TARGET['max_bytes_pct']:g}% of fp16 bytes, >= {TARGET['min_first_token_pct']:g}% first-token "
          f"agreement, score within {TARGET['max_score_drop_points']:g} pt of lossless): "
          f"{', '.join(met) if met else 'met by none'}")
    if args.out is not None:
        write_outputs(args.out, config, summaries, outcomes, costs, {
            "model_id": loaded.model_id, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "wall_s": wall_s, "target": TARGET,
        })
        if cells:
            write_cells(args.out / "sparsity.csv", cells)
            write_sparsity_profile(args.out / "sparsity_profile.json", cells, config, loaded.model_id)
    return 0


def write_outputs(out: Path, config: QualityConfig, summaries: list[dict[str, Any]], outcomes: list[Outcome],
                  costs: list[DocumentCost], run: dict[str, Any]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        data = {"config": asdict(config), "run": run, "summaries": summaries,
                "outcomes": [asdict(o) for o in outcomes], "costs": [asdict(c) for c in costs]}
        (out / "quality.json").write_text(json.dumps(data, indent=1))
        with open(out / "quality.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summaries[0]))
            writer.writeheader()
            writer.writerows(summaries)
    except OSError as exc:
        raise UserError(f"cannot write results to {out}: {exc.strerror or exc}") from exc
    print(f"wrote {out / 'quality.json'} and {out / 'quality.csv'}")


def print_sparsity(cells: list[CellRecord]) -> None:
    """Kept / computed fraction of the causal key blocks, over all cells and per layer."""
    kept = sum(c.kept_blocks for c in cells) / max(sum(c.allowed_blocks for c in cells), 1)
    done = sum(c.computed_blocks for c in cells) / max(sum(c.allowed_blocks for c in cells), 1)
    layers = sorted({c.layer for c in cells})
    per_layer = []
    for layer in layers:
        sel = [c for c in cells if c.layer == layer]
        per_layer.append(sum(c.computed_blocks for c in sel) / max(sum(c.allowed_blocks for c in sel), 1))
    print(f"\nblock-sparse prefill, {len(cells)} cells: kept {100 * kept:.1f}% and computed {100 * done:.1f}% of "
          f"the causal key blocks; computed % per layer: {' '.join(f'{100 * f:.0f}' for f in per_layer)}")


def write_cells(path: Path, cells: list[CellRecord]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*asdict(cells[0]), "computed_fraction"])
        writer.writeheader()
        writer.writerows({**asdict(c), "computed_fraction": c.computed_fraction} for c in cells)
    print(f"wrote {path}")


def write_sparsity_profile(path: Path, cells: list[CellRecord], config: QualityConfig, model_id: str) -> None:
    """The per-layer sparsity fit (`sparkv.cost_models.sparse_cost`) and this machine's wall-time fit."""
    import torch

    from sparkv.analysis.sparse_study import fit_cell_wall
    from sparkv.cost_models.sparse_cost import fit_sparsity

    for attention in config.attention[:1]:  # one attention per run: the cells are all its own
        rows = [asdict(c) | {"computed_fraction": c.computed_fraction} for c in cells]
        docs = sorted({c.document for c in cells})
        source = (f"sparkv quality --attention {attention}: {len(docs)} LEval documents ({', '.join(docs)}), "
                  f"<= {config.max_context_tokens} tokens, {config.chunk_tokens}-token chunks, {model_id}, "
                  f"float32 on CPU ({platform.machine()}, {torch.get_num_threads()} threads)")  # fmt: skip
        profile = fit_sparsity(rows, attention, model_id, source)
        wall = fit_cell_wall(cells)
        data = profile.to_dict() | {"cpu_wall_fit": asdict(wall)}
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"sparsity fit ({attention}): held-out |f - f_pred| {profile.heldout_mae:.3f} "
              f"({profile.heldout_mae_log:.2f} in log f), chunk effect sigma {profile.chunk_sigma:.2f}, cell sigma "
              f"{profile.cell_sigma:.2f} (log); wall per cell here: {wall.base_s * 1e3:.2f} ms + "
              f"{wall.per_token_s * 1e6:.2f} us/token + {wall.per_block_s * 1e6:.2f} us/block computed, held-out "
              f"median error {100 * wall.heldout_rel_err:.0f}%; wrote {path}")  # fmt: skip


def layer_bits(args: argparse.Namespace, config: QualityConfig, loaded: Any) -> int:
    """`--layer-bits`: per-layer sensitivity, the allocation under the budget, and its file."""
    from sparkv.analysis.layer_bits import run_layer_bits
    from sparkv.cost_models.codecs import get_codec

    codecs = [get_codec(c.strip()).name for c in args.layer_bits.split(",") if c.strip()]
    if len(codecs) < 2 or not 0 < args.byte_budget_pct <= 100:
        raise UserError(f"--layer-bits needs >= 2 codecs and --byte-budget-pct in (0, 100], got "
                        f"{args.layer_bits!r}, {args.byte_budget_pct}")  # fmt: skip
    t0 = time.perf_counter()
    try:
        sens, wire, alloc = run_layer_bits(loaded, config, codecs, args.byte_budget_pct)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    rows = [{"layer": layer, **{f"kl_{c}": float(sens[layer, j]) for j, c in enumerate(codecs)},
             "chosen": codecs[alloc.choice[layer]]} for layer in range(sens.shape[0])]  # fmt: skip
    print(format_table(rows, [("layer", "layer", "d"), *((f"kl_{c}", f"KL nats {c}", ".5f") for c in codecs),
                              ("chosen", "chosen", "")]))  # fmt: skip
    fp16 = alloc.budget_bytes * 100 / args.byte_budget_pct
    print(f"chosen codec: {alloc.codec}\n  {100 * alloc.bytes / fp16:.1f}% of fp16 bytes (budget "
          f"{args.byte_budget_pct:g}%), additive KL estimate {alloc.predicted_kl_nats:.4f} nats; uniform: "
          + ", ".join(f"{c} {100 * wire[:, j].sum() / fp16:.1f}% / {sens[:, j].sum():.4f} nats"
                      for j, c in enumerate(codecs))
          + f" ({time.perf_counter() - t0:.0f} s; check it with sparkv quality --codec '{alloc.codec}')")  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        data = {"config": asdict(config), "codecs": codecs, "byte_budget_pct": args.byte_budget_pct,
                "sensitivity_kl_nats": sens.tolist(), "cell_wire_bytes": wire.tolist(),
                "allocation": asdict(alloc), "model_id": loaded.model_id}  # fmt: skip
        (args.out / "layer_bits.json").write_text(json.dumps(data, indent=1))
        print(f"wrote {args.out / 'layer_bits.json'}")
    return 0
