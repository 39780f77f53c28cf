"""`sparkv decode --whatif-table --measure-quality`: a small real accuracy measurement for the table's (policy,
budget) pairs: generated long-context tasks (needle, multi-key, variable tracking) at a short context, answered
greedily by the real model under each policy at each budget fraction. Accuracy does not depend on the storage
profile (the same selections follow from the same scores), so it is measured once per (policy, budget)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from sparkv.analysis.decode_tasks import TASKS, make_tasks
from sparkv.analysis.decode_whatif_table import head_budget_tokens
from sparkv.commands.decode_kelle import _scenario, head_policy
from sparkv.commands.decode_quality import ANSWER_STEPS, _prompt_ids
from sparkv.core.decode import DecodeScenario
from sparkv.executor.model.decode import calibrate_projections, prefill_keys
from sparkv.executor.model.decode_run import prepare_real_decode, run_real_decode
from sparkv.executor.model.kelle_run import prepare_kelle, run_kelle_real
from sparkv.executor.model.models import load_model
from sparkv.executor.model.smollm2 import cache_root
from sparkv.policies.decode import HEAD_DECODE_POLICIES, make_decode_policy

QUICK_KINDS = ("niah", "multikey", "vt")
QUICK_DEPTHS = (0.3, 0.7)
QUICK_TOKENS = 2048  # short contexts keep the measurement to minutes on 2 cores; budgets are fractions of it
WHOLE_KV = ("full-kv", "full-reload")  # attend every token: measured once, at the first budget


def measure_quality(args: argparse.Namespace, config: dict[str, Any]) -> Path:
    """Run the tasks for every (policy, budget fraction) of `config`; write and return the results file."""
    loaded = load_model(args.hf_model)
    torch.set_num_threads(args.threads)
    base = DecodeScenario.from_dict(config["scenario"]).with_(storage="this-vm")
    fracs, policies = config["budget_fractions"], config["policies"]
    calib = TASKS["niah"](1536, 0.5, 10_000)  # calibration text for the key projections: a haystack no task uses
    projections = calibrate_projections(prefill_keys(loaded, _prompt_ids(loaded, calib, 2048))[0], base.rank)
    tasks = make_tasks(list(QUICK_KINDS), QUICK_TOKENS, list(QUICK_DEPTHS), args.instances)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    print(f"measuring accuracy: {loaded.model_id}, {len(tasks)} tasks of ~{QUICK_TOKENS} tokens "
          f"({', '.join(QUICK_KINDS)} at depths {', '.join(map(str, QUICK_DEPTHS))}), {len(policies)} policies x "
          f"{len(fracs)} budgets, greedy answers of {ANSWER_STEPS} tokens", flush=True)  # fmt: skip
    for task in tasks:
        ids = _prompt_ids(loaded, task, QUICK_TOKENS)
        sc = base.with_(context_tokens=int(ids.shape[0]), steps=ANSWER_STEPS, seed=task.seed)
        about = {"kind": task.kind, "length": QUICK_TOKENS, "tokens": int(ids.shape[0]), "depth": task.depth,
                 "seed": task.seed, "answer": task.answer}  # fmt: skip

        def record(policy: str, frac: float, tokens: list[int], about: dict[str, Any] = about, answer: str =
                   task.answer) -> None:  # fmt: skip
            text = loaded.tokenizer.decode(tokens, skip_special_tokens=True) if loaded.tokenizer else ""
            rows.append({**about, "policy": policy, "budget_fraction": frac, "correct": float(answer in text),
                         "text": text.strip()[:40]})  # fmt: skip

        group = [p for p in policies if p not in HEAD_DECODE_POLICIES]
        for i, frac in enumerate(fracs):
            setup = prepare_real_decode(loaded, ids, None, sc.with_(budget_fraction=frac, budget_bytes=0),
                                        args.kv_dir, projections=projections)  # fmt: skip
            try:
                for name in group:
                    if name in WHOLE_KV and i > 0:
                        continue
                    record(name, frac, run_real_decode(setup, make_decode_policy(name))[3])
            finally:
                setup.files.close()
        heads = [p for p in policies if p in HEAD_DECODE_POLICIES]
        if heads:
            hs = _scenario(sc)
            kelle = prepare_kelle(loaded, ids, hs, args.kv_dir)
            for frac in fracs:
                for name in heads:
                    budget = head_budget_tokens(frac, hs.context_tokens)
                    record(name, frac, run_kelle_real(kelle, head_policy(name, budget, hs.context_tokens + hs.steps))
                           .tokens)  # fmt: skip
        done = [r for r in rows if r["seed"] == task.seed and r["kind"] == task.kind and r["depth"] == task.depth]
        print(f"  {task.kind} depth {task.depth}: {sum(r['correct'] for r in done):.0f}/{len(done)} answers right "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    out = (args.out or cache_root() / "whatif") / "decode-whatif-quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"scenario": base.to_dict(), "model_id": loaded.model_id, "tasks": list(QUICK_KINDS),
                               "depths": list(QUICK_DEPTHS), "target_tokens": QUICK_TOKENS,
                               "instances": args.instances, "answer_steps": ANSWER_STEPS,
                               "policies": policies, "budget_fractions": fracs, "rows": rows,
                               "wall_s": time.perf_counter() - t0}, indent=1))  # fmt: skip
    print(f"wrote {out} (pass it as --quality {out} to redraw the table without measuring)")
    return out
