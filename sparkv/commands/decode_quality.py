"""`sparkv decode --quality`: generated long-context tasks (needle in a haystack, multi-key, variable
tracking) answered by the real model under each decode policy; accuracy, and the top-M recall of KVSwap's
predicted selection against the exact one (from every token's scores recorded in the full-KV run)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from sparkv.analysis.decode_quality import topm_recall
from sparkv.analysis.decode_tasks import TASKS, Task, make_tasks
from sparkv.commands.common import format_table
from sparkv.commands.decode_real import CALIB_TOKENS, _tokens
from sparkv.core.decode import DecodeScenario
from sparkv.core.errors import UserError
from sparkv.executor.model.decode import calibrate_projections, prefill_keys
from sparkv.executor.model.decode_run import TokenScores, prepare_real_decode, run_real_decode
from sparkv.executor.model.models import LoadedModel, load_model
from sparkv.policies.decode import make_decode_policy
from sparkv.traces.scores import regroup

ANSWER_STEPS = 28  # SmolLM2 first repeats the question's sentence, then gives the number


def add_quality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quality", nargs="?", const=True, default=False, metavar="FILE",
                   help="generated long-context tasks on the real model; with --whatif-table, FILE: quality results "
                        "(decode-quality.json, decode-kelle-quality.json; comma-separated) for the accuracy column")
    p.add_argument("--tasks", default="niah,multikey,vt", help=f"task kinds (of {', '.join(TASKS)})")
    p.add_argument("--lengths", default="4096,8192", help="context lengths in tokens (default 4096,8192)")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="needle depths (default 0.1,0.5,0.9)")
    p.add_argument("--instances", type=int, default=1, help="seeds per task, length and depth (default 1)")


def _prompt_ids(loaded: LoadedModel, task: Task, limit: int) -> torch.Tensor:
    """The task as a chat turn, with the assistant's turn opened; the haystack trimmed to `limit` tokens."""
    tok = loaded.tokenizer
    if tok is None:
        raise UserError("--quality needs a model with a tokenizer (smollm2 or a HF directory)")
    text = task.prompt
    for _ in range(8):  # trim the haystack (the question stays) until the prompt fits
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)  # fmt: skip
        if len(ids) <= limit:
            return torch.tensor(ids, dtype=torch.long)
        body, _, question = text.rpartition("\n\n")
        keep = int(len(body) * limit / len(ids) * 0.98)
        text = body[:keep] + "\n\n" + question
    raise UserError(f"cannot fit task {task.kind} into {limit} tokens")


def run_quality(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    kinds = [k.strip() for k in args.tasks.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in TASKS]
    if unknown:
        raise UserError(f"unknown task kinds {unknown}; choose from {', '.join(TASKS)}")
    try:
        lengths = [int(v) for v in args.lengths.split(",")]
        depths = [float(v) for v in args.depths.split(",")]
    except ValueError as exc:
        raise UserError(f"bad --lengths or --depths: {exc}") from exc
    loaded = load_model(args.hf_model)
    calib_ids = _tokens(loaded, CALIB_TOKENS, 10_000)  # calibration text: the built-in logbook, no task uses it
    calib_keys, _, _ = prefill_keys(loaded, calib_ids)
    projections = calibrate_projections(calib_keys, scenario.rank)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for length in lengths:
        for task in make_tasks(kinds, length, depths, args.instances):
            ids = _prompt_ids(loaded, task, length)
            sc = scenario.with_(context_tokens=int(ids.shape[0]), steps=ANSWER_STEPS, seed=task.seed)
            setup = prepare_real_decode(loaded, ids, None, sc, args.kv_dir, projections=projections)
            row: dict[str, Any] = {"kind": task.kind, "length": length, "tokens": int(ids.shape[0]),
                                   "depth": task.depth, "seed": task.seed, "answer": task.answer}  # fmt: skip
            try:
                for name in names:
                    record = TokenScores(sc.steps, setup.geometry.num_layers, sc.context_tokens + sc.steps) if (
                        name == "full-kv") else None  # fmt: skip
                    _, _, _, tokens = run_real_decode(setup, make_decode_policy(name), token_scores=record)
                    text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
                    row[name] = float(task.answer in text)
                    row[f"{name}_text"] = text.strip()[:40]
                    if record is not None:
                        trace = regroup(record.trace(sc.context_tokens, "quality full-kv run"), sc.group_tokens)
                        geo = setup.geometry
                        row["recall"] = topm_recall(trace, geo.select_groups, geo.sink_groups)["recall_mean"]
            finally:
                setup.files.close()
            rows.append(row)
            print(f"  {task.kind} {row['tokens']} tokens depth {task.depth}: "
                  + ", ".join(f"{n} {'ok' if row.get(n) else 'wrong'}" for n in names)
                  + (f"; recall {row['recall']:.3f}" if "recall" in row else "")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    summary = []
    for kind in kinds:
        for length in lengths:
            group = [r for r in rows if r["kind"] == kind and r["length"] == length]
            if not group:
                continue
            entry: dict[str, Any] = {"kind": kind, "length": length, "n": len(group)}
            for name in names:
                entry[name] = 100.0 * sum(r[name] for r in group) / len(group)
            recalls = [r["recall"] for r in group if "recall" in r]
            entry["recall"] = sum(recalls) / len(recalls) if recalls else float("nan")
            summary.append(entry)
    cols = [("kind", "task", ""), ("length", "tokens", "d"), ("n", "n", "d")]
    cols += [(n, f"{n} %", ".0f") for n in names] + [("recall", "top-M recall", ".3f")]
    print(f"quality: {loaded.model_id}, G={scenario.group_tokens}, M={scenario.select_tokens}, r={scenario.rank}, "
          f"greedy answers of {ANSWER_STEPS} tokens; accuracy = the answer string appears")  # fmt: skip
    print(format_table(summary, cols))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode-quality.json").write_text(
            json.dumps({"scenario": scenario.to_dict(), "rows": rows, "summary": summary}, indent=1))  # fmt: skip
    return 0
