"""`sparkv decode --real` and `--validate`: the decode policies on the real model and disk, and the simulator
replaying each real run's score trace with a compute model fitted to separate calibration runs."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sparkv.analysis.decode_hillinfer import fit_host_scoring
from sparkv.analysis.decode_validate import compare_runs, fit_decode_compute
from sparkv.commands.common import format_table
from sparkv.commands.decode_hillinfer import (
    build_policy,
    hill_options,
    hill_study,
    measure_host_scoring,
    print_hill_stats,
    settings_of,
)
from sparkv.core.decode import DecodeScenario
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.cost_models.decode_compute import DecodeCompute
from sparkv.cost_models.smartssd import HostScoring, get_smartssd
from sparkv.cost_models.storage import StorageProfile, load_storage
from sparkv.engine.decode import DecodeEngine
from sparkv.executor.model.decode_run import (
    RealDecodeSetup,
    TokenScores,
    prepare_real_decode,
    run_real_decode,
    spec_for_disk,
)
from sparkv.executor.model.decode_storage import run_real_storage_decode
from sparkv.executor.model.document import TOKENS_PER_ENTRY, station_logbook
from sparkv.executor.model.models import LoadedModel, load_model, tiny_model
from sparkv.executor.model.smollm2 import cache_root
from sparkv.policies.decode import make_decode_policy
from sparkv.sim.decode import build_decode_world, simulate_decode
from sparkv.sim.decode_storage import run_storage_decode_sim

# tokens of the calibration text for the key projections: post-RoPE keys at positions the calibration never
# reached fall outside its subspace (top-M recall at 4k: 0.57 calibrated on 2k tokens, 0.70 on 8k; docs/decode.md)
CALIB_TOKENS = 8192


def add_real_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", action="store_true", help="run the policies on the real model, KV files on disk")
    p.add_argument("--validate", action="store_true",
                   help="real runs, then the simulator replaying each run's scores: step-time error, same decisions")
    p.add_argument("--hf-model", default="smollm2", help="model for --real: smollm2, tiny, or a HF directory")
    p.add_argument("--kv-dir", type=Path, default=cache_root() / "decode-kv",
                   help="folder for the KV files, hundreds of MB (on a disk: O_DIRECT; default "
                        "$SPARKV_CACHE/decode-kv, ~/.cache/sparkv/decode-kv)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for real decode (default 1)")
    p.add_argument("--calib-steps", type=int, default=6, help="steps of each calibration run (--validate)")
    p.add_argument("--calibrate", choices=("joint", "per-policy"), default="joint",
                   help="--validate: one compute fit over every calibration run (all run first), or one per "
                        "policy from a calibration run right before its measured run")
    p.add_argument("--probe-disk", action="store_true",
                   help="--validate: measure the disk holding --kv-dir first (about 10 s) and simulate with that "
                        "profile instead of --storage")
    p.add_argument("--record-scores", type=Path,
                   help="with --real: also record every token's predicted and exact scores to this .npz (per-token "
                        "trace for --sweep-g and recall; untimed extra work)")  # fmt: skip


def _loaded(name: str) -> LoadedModel:
    if name == "tiny":
        return tiny_model("llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2)
    return load_model(name)


def _tokens(loaded: LoadedModel, count: int, seed: int) -> torch.Tensor:
    """`count` tokens of the built-in logbook (seeded), or random ids for a model without a tokenizer."""
    if loaded.tokenizer is None:
        return torch.randint(0, loaded.spec.vocab_size, (count,), generator=torch.Generator().manual_seed(seed))
    doc = station_logbook(entries=int(count / TOKENS_PER_ENTRY * 1.2) + 10, seed=seed)
    ids = loaded.encode(doc.text, max_tokens=count)
    if int(ids.shape[0]) < count:
        raise UserError(f"the built-in document gives {int(ids.shape[0])} tokens, fewer than {count}")
    return ids


def prepare(args: argparse.Namespace, scenario: DecodeScenario) -> RealDecodeSetup:
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    loaded = _loaded(args.hf_model)
    ids = _tokens(loaded, scenario.context_tokens, scenario.seed)
    calib_count = CALIB_TOKENS if loaded.tokenizer is not None else min(CALIB_TOKENS, scenario.context_tokens)
    calib = _tokens(loaded, calib_count, scenario.seed + 1000)
    t0 = time.perf_counter()
    setup = prepare_real_decode(loaded, ids, calib, scenario, args.kv_dir)
    torch.set_num_threads(args.threads)  # one token at a time: more threads only add synchronisation
    how = "reused from an earlier build in" if setup.reused else "prefilled, KV written to"
    print(f"real decode: {loaded.model_id}, {scenario.context_tokens} tokens {how} {args.kv_dir}, keys projected "
          f"to rank {scenario.rank} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return setup


def real_hill_options(args: argparse.Namespace, setup: RealDecodeSetup, host: HostScoring | None = None,
                      storage: StorageProfile | None = None) -> dict[str, Any]:  # fmt: skip
    """HillInfer's settings for a real run: the host kernel measured on this machine's real keys (or `host`),
    B_c from `storage` (default: the scenario's profile)."""
    spec, sc = setup.loaded.spec, setup.scenario
    keys = setup.cache.keys[0][:, : sc.context_tokens].transpose(0, 1).reshape(sc.context_tokens, -1).numpy()
    host = host or measure_host_scoring(keys, spec, sc.group_tokens, args.hill_bits)
    storage = storage or load_storage(sc.storage)
    return hill_options(sc, spec, storage, get_smartssd("samsung-smartssd"), host, args.hill_bits)


def run_real(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> list[Result]:
    setup = prepare(args, scenario)
    hill = real_hill_options(args, setup) if "hillinfer" in names else None
    results = []
    try:
        for i, name in enumerate(names):
            record = None
            if args.record_scores is not None and i == 0:
                tokens = scenario.context_tokens + scenario.steps
                record = TokenScores(scenario.steps, setup.geometry.num_layers, tokens)
            result, _, _, _ = run_real_decode(setup, build_policy(name, hill), token_scores=record)
            results.append(result)
            if record is not None:
                path = record.trace(scenario.context_tokens, f"recorded: real {name} run, {setup.loaded.model_id}")
                print(f"per-token scores of the {name} run written to {path.save(args.record_scores)}")
    finally:
        setup.files.close()
    return results


def validate(
    args: argparse.Namespace, scenario: DecodeScenario, names: list[str]
) -> tuple[list[Result], list[dict[str, Any]]]:
    """Calibration runs (short), then a real run per policy and its replay in the simulator. `--calibrate
    joint` runs every calibration first and fits them together; `per-policy` calibrates each policy right
    before its measured run (less drift between the two). `--probe-disk` measures the disk holding the KV
    files first and simulates with that profile instead of the scenario's."""
    setup = prepare(args, scenario)
    storage = load_storage(scenario.storage)
    try:
        if getattr(args, "probe_disk", False):
            storage, saved = probe_disk(args.kv_dir, getattr(args, "out", None))
            scenario = scenario.with_(storage=str(saved) if saved else storage.name)
            setup = RealDecodeSetup(**{**setup.__dict__, "scenario": scenario})
        calib_sc = scenario.with_(steps=max(2, min(args.calib_steps, scenario.steps)))
        calib_setup = RealDecodeSetup(**{**setup.__dict__, "scenario": calib_sc})
        state: dict[str, Any] = {"hill": None, "host": None}

        def calibrate(name: str) -> tuple[str, str, DecodeEngine]:
            if name == "hillinfer":  # the kernel measured now, on this machine's real keys
                state["hill"] = real_hill_options(args, setup, storage=storage)
            policy = build_policy(name, state["hill"])
            calib, _, engine, _ = run_real_decode(calib_setup, policy, log=True)
            if name == "hillinfer":
                kernel_s = 1.0 / float(state["hill"]["cpu_tokens_per_s"])
                host = fit_host_scoring(calib.extra["scoring_samples"], per_token_s=kernel_s)
                state["host"] = host
                state["hill"] = real_hill_options(args, setup, host, storage=storage)
                print(f"hillinfer host scoring: kernel {host.per_token_s * 1e9:.1f} ns/token (measured now), hot phase "
                      f"{host.hot_fixed_s * 1e3:.3f} ms + per token, cold share {host.cpu_fixed_s * 1e3:.3f} ms + "
                      "per token (fitted to its calibration run)")  # fmt: skip
            # hillinfer's layer spans hold no scoring (its scoring phase is fitted on its own)
            return ("none" if name == "hillinfer" else policy.score_kind, name, engine)

        def describe_fit(fit: DecodeCompute, what: str) -> None:
            print(f"decode compute fitted on {what} of {calib_sc.steps} steps: "
                  f"{json.dumps({k: v for k, v in fit.to_dict().items() if k.endswith('_s')})}")  # fmt: skip

        per_policy = args.calibrate == "per-policy"
        fits: dict[str, DecodeCompute] = {}
        if not per_policy:
            runs = [calibrate(name) for name in names]
            joint = fit_decode_compute(runs, scenario.rank)
            describe_fit(joint, f"{len(runs)} calibration runs")
            fits = dict.fromkeys(names, joint)
        else:
            print("each policy is calibrated right before its measured run and predicted with that fit "
                  "(--calibrate per-policy)")
        reals, sims, rows = [], [], []
        for name in names:
            if per_policy:
                fits[name] = fit_decode_compute([calibrate(name)], scenario.rank)
                describe_fit(fits[name], f"{name}'s calibration run")
            real, trace, _, _ = run_real_decode(setup, build_policy(name, state["hill"]))
            world = build_decode_world(scenario, compute=fits[name], scores=trace, storage=storage,
                                       spec=spec_for_disk(setup.loaded))  # fmt: skip
            if name == "hillinfer":  # the same settings as the real run, the fitted host kernel
                sim, _ = run_storage_decode_sim(world, make_decode_policy(name, **settings_of(real)),
                                                host=state["host"])  # fmt: skip
            else:
                sim = simulate_decode(world, make_decode_policy(name))
            reals.append(real)
            sims.append(sim)
            rows.append(compare_runs(real, sim))
    finally:
        setup.files.close()
    return reals + sims, rows


def probe_disk(kv_dir: Path, out: Path | None, file_bytes: int = 256 << 20, cell_s: float = 0.08
               ) -> tuple[StorageProfile, Path | None]:  # fmt: skip
    """A short measured profile of the disk holding `kv_dir` (sizes 512 B-1 MiB x depths 1-16, about 10 s),
    and where it was saved (into `out`, when given)."""
    from sparkv.profiling.disk import profile_disk

    t0 = time.perf_counter()
    profile = profile_disk(kv_dir, file_bytes=file_bytes, cell_s=cell_s)
    profile = replace(profile, name=f"{profile.name}-probed",
                      sources={**profile.sources, "when": "probed by decode --validate --probe-disk right before "
                               "the validation"})  # fmt: skip
    print(f"disk probed ({time.perf_counter() - t0:.1f} s): {profile.bandwidth_bps(16 << 10, 16) / 1e6:.0f} MB/s "
          f"at 16 KiB and {profile.bandwidth_bps(1 << 20, 16) / 1e6:.0f} MB/s at 1 MiB (depth 16), per batch "
          f"{profile.batch_fixed_s * 1e6:.0f} us; the simulator uses this profile")  # fmt: skip
    return profile, profile.save(Path(out) / "disk-probed.json") if out is not None else None


VALIDATE_COLUMNS = [
    ("policy", "policy", ""),
    ("real_median_ms", "real median ms", ".2f"),
    ("sim_median_ms", "sim median ms", ".2f"),
    ("median_err", "median err", ".3f"),
    ("real_p90_ms", "real p90 ms", ".2f"),
    ("sim_p90_ms", "sim p90 ms", ".2f"),
    ("p90_err", "p90 err", ".3f"),
    ("err_median", "per-step err median", ".3f"),
    ("err_p90", "per-step err p90", ".3f"),
    ("real_hidden", "real read hidden", ".2f"),
    ("bytes_match", "bytes equal", ""),
    ("hits_match", "hits equal", ""),
]


def print_validation(rows: list[dict[str, Any]]) -> None:
    print(format_table(rows, VALIDATE_COLUMNS))
    print("median/p90 err: |sim - real| / real of the step-time median and p90; per-step err: the same per step, "
          "then its median and p90; bytes/hits equal: every step's bytes read and reuse hits identical")  # fmt: skip


def run_hill_study(args: argparse.Namespace, scenario: DecodeScenario) -> int:
    """A real HillInfer run probing INT8 (or INT4) vs fp16 overlap on its own decode queries, then the study
    tables (split vs brute force, what-if) with the host kernel fitted to that run."""
    setup = prepare(args, scenario)
    try:
        policy = build_policy("hillinfer", real_hill_options(args, setup))
        real, _, _, _ = run_real_storage_decode(setup, policy, get_smartssd("samsung-smartssd"), probe_overlap=True)
    finally:
        setup.files.close()
    values = [s["overlap"] for s in real.extra["scoring_samples"]]
    overlap = {"overlap_mean": sum(values) / len(values), "overlap_min": min(values), "queries": float(len(values))}
    print_hill_stats([real])
    return hill_study(args, scenario, real, overlap, args.out, spec=spec_for_disk(setup.loaded))
