"""`sparkv decode --quality`: generated long-context tasks (needle in a haystack, multi-key, variable
tracking) and questions on real documents (`--quality-documents`, LEval JSONL read in place, scored by the
dataset's metric) answered by the real model under each decode policy; accuracy, the share of answers equal to
full KV's, and the top-M recall of KVSwap's predicted selection against the exact one (from every token's
scores recorded in the full-KV run)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from sparkv.analysis.decode_quality import topm_recall
from sparkv.analysis.decode_tasks import TASKS, Task, document_tasks, make_tasks
from sparkv.commands.common import format_table
from sparkv.commands.decode_real import CALIB_TOKENS, _tokens
from sparkv.core.decode import DecodeScenario
from sparkv.core.errors import UserError
from sparkv.executor.model.decode import calibrate_projections, prefill_keys
from sparkv.executor.model.decode_run import TokenScores, prepare_real_decode, run_real_decode
from sparkv.executor.model.models import LoadedModel, eos_token_ids, load_model
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
    p.add_argument("--quality-documents",
                   help="--quality: also questions on these LEval-format JSONL files (comma-separated, read in place), "
                        "the document trimmed to each of --lengths; --doc-count documents per file")
    p.add_argument("--doc-questions", type=int, default=2,
                   help="--quality-documents: questions per document (default 2)")


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


def until_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    """The generated tokens before the first end-of-sequence token (greedy decoding runs on past it)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def _verdict(name: str, row: dict[str, Any], task: Task) -> str:
    if not task.metric:
        return f"{name} {'ok' if row.get(name) else 'wrong'}"
    return f"{name} {task.metric} {row[name]:.2f}"


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
    files = [f.strip() for f in (args.quality_documents or "").split(",") if f.strip()]
    documents = [t for f in files for t in document_tasks(f, args.doc_count, args.doc_questions)]
    kinds += list(dict.fromkeys(t.kind for t in documents))
    loaded = load_model(args.hf_model)
    calib_ids = _tokens(loaded, CALIB_TOKENS, 10_000)  # calibration text: the built-in logbook, no task uses it
    calib_keys, _, _ = prefill_keys(loaded, calib_ids)
    projections = calibrate_projections(calib_keys, scenario.rank)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    eos = eos_token_ids(loaded)
    t0 = time.perf_counter()
    for length in lengths:
        for task in [*make_tasks([k for k in kinds if k in TASKS], length, depths, args.instances), *documents]:
            ids = _prompt_ids(loaded, task, length)
            sc = scenario.with_(context_tokens=int(ids.shape[0]), steps=ANSWER_STEPS, seed=task.seed)
            setup = prepare_real_decode(loaded, ids, None, sc, args.kv_dir, projections=projections)
            row: dict[str, Any] = {"kind": task.kind, "length": length, "tokens": int(ids.shape[0]),
                                   "depth": task.depth, "seed": task.seed, "answer": task.answer[:80],
                                   "metric": task.metric or "answer string"}  # fmt: skip
            texts: dict[str, str] = {}
            try:
                for name in names:
                    record = TokenScores(sc.steps, setup.geometry.num_layers, sc.context_tokens + sc.steps) if (
                        name == "full-kv") else None  # fmt: skip
                    _, _, _, tokens = run_real_decode(setup, make_decode_policy(name), token_scores=record)
                    text = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
                    answer = loaded.tokenizer.decode(until_eos(tokens, eos), skip_special_tokens=True).strip()
                    row[name] = task.score(answer if task.metric else text)  # documents: the answer up to its end
                    row[f"{name}_text"] = text.strip()[:80]
                    texts[name] = answer
                    if record is not None:
                        trace = regroup(record.trace(sc.context_tokens, "quality full-kv run"), sc.group_tokens)
                        geo = setup.geometry
                        row["recall"] = topm_recall(trace, geo.select_groups, geo.sink_groups)["recall_mean"]
            finally:
                setup.files.close()
            if "full-kv" in texts:
                for name in names:
                    if name != "full-kv":
                        row[f"{name}_same"] = float(texts[name] == texts["full-kv"])
            rows.append(row)
            where = f"depth {task.depth}" if not task.metric else f"question {task.seed} ({task.metric})"
            print(f"  {task.kind} {row['tokens']} tokens {where}: " + ", ".join(_verdict(n, row, task) for n in names)
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
            for name in names:
                same = [r[f"{name}_same"] for r in group if f"{name}_same" in r]
                if same:
                    entry[f"{name}_same"] = 100.0 * sum(same) / len(same)
            summary.append(entry)
    cols = [("kind", "task", ""), ("length", "tokens", "d"), ("n", "n", "d")]
    cols += [(n, f"{n} %", ".0f") for n in names] + [("recall", "top-M recall", ".3f")]
    cols += [(f"{n}_same", f"{n} = full-kv %", ".0f") for n in names if n != "full-kv" and "full-kv" in names]
    print(f"quality: {loaded.model_id}, G={scenario.group_tokens}, M={scenario.select_tokens}, r={scenario.rank}, "
          f"greedy answers of {ANSWER_STEPS} tokens; accuracy = % of tasks whose answer string appears (generated) or "
          f"the mean score x100 by the dataset's metric (documents: exam = option letter, f1 = token F1); "
          f"'= full-kv %': answers identical to full KV's, up to the end-of-sequence token")  # fmt: skip
    print(format_table(summary, cols))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode-quality.json").write_text(
            json.dumps({"scenario": scenario.to_dict(), "model_id": loaded.model_id, "config": {
                "tasks": [k for k in kinds if k in TASKS], "lengths": lengths, "depths": depths,
                "instances": args.instances, "documents": files, "doc_count": args.doc_count,
                "doc_questions": args.doc_questions, "answer_steps": ANSWER_STEPS, "calib_tokens": CALIB_TOKENS,
                "policies": names}, "rows": rows, "summary": summary}, indent=1))  # fmt: skip
    return 0
