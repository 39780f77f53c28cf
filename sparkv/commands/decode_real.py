"""`sparkv decode --real` and `--validate`: the decode policies on the real model and disk, and the simulator
replaying each real run's score trace with a compute model fitted to separate calibration runs."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sparkv.analysis.decode_hillinfer import fit_host_scoring
from sparkv.analysis.decode_probe import Bracket, SpeedScale, describe_scale, probed_run
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
from sparkv.commands.values import nonneg_float, pos_int
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
from sparkv.executor.model.decode_speed import DecodeSpeedProbe, ProbeShape, shape_of_run
from sparkv.executor.model.decode_storage import run_real_storage_decode
from sparkv.executor.model.document import TOKENS_PER_ENTRY, station_logbook
from sparkv.executor.model.kvfile import READER_KINDS, resolve_reader
from sparkv.executor.model.models import LoadedModel, load_model, tiny_model
from sparkv.executor.model.smollm2 import cache_root
from sparkv.policies.decode import make_decode_policy
from sparkv.policies.decode.storage_scoring import StorageScoring
from sparkv.sim.decode import build_decode_world, simulate_decode
from sparkv.sim.decode_storage import run_storage_decode_sim
from sparkv.traces.scores import ScoreTrace

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
    p.add_argument("--reader", choices=READER_KINDS, default="auto",
                   help="how real decode reads are issued: threads (a pool of --queue-depth threads, os.preadv), "
                        "aio (Linux native AIO, one io_submit per batch: fewer GIL hand-overs beside the "
                        "compute; not for hillinfer, whose key-plane reads share the thread pool), auto (threads)")
    p.add_argument("--calib-steps", type=int, default=6, help="steps of each calibration run (--validate)")
    p.add_argument("--calibrate", choices=("joint", "per-policy"), default="joint",
                   help="--validate: one compute fit over every calibration run (all run first), or one per "
                        "policy from a calibration run right before its measured run")
    p.add_argument("--probe-disk", action="store_true",
                   help="--validate: measure the disk holding --kv-dir first (about 10 s) and simulate with that "
                        "profile instead of --storage")
    p.add_argument("--no-probe-speed", dest="probe_speed", action="store_false",
                   help="--validate: no compute probes (by default each calibration and measured run is bracketed "
                        "by two probes of the policy's decode work and the simulated compute scaled by their ratio)")
    p.add_argument("--speed-tolerance", type=nonneg_float, default=0.05,
                   help="--validate: a measured run whose two probes differ by more than this fraction is measured "
                        "again (default 0.05)")
    p.add_argument("--probe-attempts", type=pos_int, default=3,
                   help="--validate: measured runs per policy at most while its probes disagree (default 3)")
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
    reader = resolve_reader(getattr(args, "reader", "auto"))
    setup = replace(prepare_real_decode(loaded, ids, calib, scenario, args.kv_dir), reader=reader)
    torch.set_num_threads(args.threads)  # one token at a time: more threads only add synchronisation
    how = "reused from an earlier build in" if setup.reused else "prefilled, KV written to"
    print(f"real decode: {loaded.model_id}, {scenario.context_tokens} tokens {how} {args.kv_dir}, keys projected "
          f"to rank {scenario.rank} ({time.perf_counter() - t0:.1f} s); reads through {reader}, "
          f"{args.threads} torch thread(s)")  # fmt: skip
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
    files first and simulates with that profile instead of the scenario's. With speed probes (the default),
    each calibration run and each measured run is bracketed by two compute probes of the policy's own decode
    work; the simulated compute is scaled by their ratio, and a measured run whose probes disagree by more
    than `--speed-tolerance` is measured again (`--probe-attempts` in all)."""
    setup = prepare(args, scenario)
    storage = load_storage(scenario.storage)
    probing = getattr(args, "probe_speed", True)
    tolerance, attempts = getattr(args, "speed_tolerance", 0.05), getattr(args, "probe_attempts", 3)
    try:
        if getattr(args, "probe_disk", False):
            storage, saved = probe_disk(args.kv_dir, getattr(args, "out", None))
            scenario = scenario.with_(storage=str(saved) if saved else storage.name)
            setup = RealDecodeSetup(**{**setup.__dict__, "scenario": scenario})
        calib_sc = scenario.with_(steps=max(2, min(args.calib_steps, scenario.steps)))
        calib_setup = RealDecodeSetup(**{**setup.__dict__, "scenario": calib_sc})
        shape_setup = RealDecodeSetup(**{**setup.__dict__, "scenario": scenario.with_(steps=1)})
        state: dict[str, Any] = {"hill": None, "host": None}
        probes: dict[str, tuple[ProbeShape, Callable[[], float]]] = {}
        calib_brackets: dict[str, Bracket] = {}

        def calibrate(name: str) -> tuple[str, str, DecodeEngine]:
            if name == "hillinfer":  # the kernel measured now, on this machine's real keys
                state["hill"] = real_hill_options(args, setup, storage=storage)
            policy = build_policy(name, state["hill"])
            if probing:
                probes[name] = probe_for(name)
                before = probes[name][1]()
            calib, _, engine, _ = run_real_decode(calib_setup, policy, log=True)
            if probing:
                calib_brackets[name] = Bracket(before, probes[name][1](), tolerance)
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

        def probe_for(name: str) -> tuple[ProbeShape, Callable[[], float]]:
            """The policy's probe: its shape from one untimed logged step, then the probe built on it."""
            policy = build_policy(name, state["hill"])
            once, _, engine, _ = run_real_decode(shape_setup, policy, log=True)
            scoring = "host-kernel" if isinstance(policy, StorageScoring) else policy.score_kind
            shape = shape_of_run(engine, scoring, once.extra.get("scoring_samples"))
            return shape, decode_probe(setup, shape, getattr(args, "hill_bits", 8))

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

            def measured(name: str = name) -> tuple[Result, ScoreTrace]:
                real, trace, _, _ = run_real_decode(setup, build_policy(name, state["hill"]))
                return real, trace

            scale: SpeedScale | None = None
            if probing:
                shape, probe = probes[name]
                kept = probed_run(measured, probe, tolerance, attempts)
                real, trace = kept.value
                scale = SpeedScale(calib_brackets[name], kept.bracket, len(kept.attempts))
                speed = {"shape": shape.to_dict(), **scale.to_dict(), **kept.to_dict(), "tolerance": tolerance,
                         "max_attempts": attempts,
                         "unit": "seconds of one probe sweep (median of its sweeps)"}  # fmt: skip
                real.extra["decode_speed"] = speed
                print(describe_scale(name, scale, shape.to_dict()))
            else:
                real, trace = measured()
            sim, at_calibration = simulate_pair(name, real, trace, scenario, setup, storage, fits[name],
                                                state["host"], scale)  # fmt: skip
            reals.append(real)
            sims.append(sim)
            row = compare_runs(real, sim)
            if scale is not None and at_calibration is not None:
                flat = compare_runs(real, at_calibration)
                row.update({"speed_factor": scale.factor, "probe_attempts": scale.attempts,
                            "probe_steady": scale.run.steady, "probe_change": scale.run.change,
                            "calib_probe_ms": 1e3 * scale.calibration.seconds, "run_probe_ms": 1e3 * scale.run.seconds,
                            "speed": real.extra["decode_speed"],
                            **{f"{k}_unscaled": flat[k] for k in UNSCALED}})  # fmt: skip
            rows.append(row)
    finally:
        setup.files.close()
    return reals + sims, rows


UNSCALED = ("median_err", "p90_err", "err_median", "err_p90")  # errors of the replay at the calibration's speed


def decode_probe(setup: RealDecodeSetup, shape: ProbeShape, bits: int) -> Callable[[], float]:
    """A compute probe of `shape` on this setup's model and keys: each call, the seconds of one probe."""
    probe = DecodeSpeedProbe(setup.loaded, setup.files.layout, setup.cache, setup.scenario.context_tokens,
                             setup.first_token, shape, bits)  # fmt: skip
    return lambda: probe().seconds


def simulate_pair(name: str, real: Result, trace: ScoreTrace, scenario: DecodeScenario, setup: RealDecodeSetup,
                  storage: StorageProfile, fit: DecodeCompute, host: HostScoring | None,
                  scale: SpeedScale | None) -> tuple[Result, Result | None]:  # fmt: skip
    """The simulator's replay of `real` with its compute scaled by the probes (when probed), and the replay at
    the calibration's own speed (None without probes)."""

    def sim_at(factor: float | None) -> Result:
        why = "measured run's compute probes / its calibration run's"
        compute = fit if factor is None else fit.scaled(factor, why)
        world = build_decode_world(scenario, compute=compute, scores=trace, storage=storage,
                                   spec=spec_for_disk(setup.loaded))  # fmt: skip
        if name == "hillinfer":  # the same settings as the real run, the fitted host kernel
            scaled_host = host if factor is None or host is None else host.scaled(factor, why)
            return run_storage_decode_sim(world, make_decode_policy(name, **settings_of(real)), host=scaled_host)[0]
        return simulate_decode(world, make_decode_policy(name))

    if scale is None:
        return sim_at(None), None
    return sim_at(scale.factor), sim_at(None)


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


PROBE_COLUMNS = [
    ("policy", "policy", ""),
    ("calib_probe_ms", "calibration probe ms", ".2f"),
    ("run_probe_ms", "run probe ms", ".2f"),
    ("probe_change", "run probes after/before-1", "+.3f"),
    ("probe_attempts", "attempts", "d"),
    ("speed_factor", "sim compute x", ".3f"),
    ("median_err_unscaled", "median err unscaled", ".3f"),
    ("p90_err_unscaled", "p90 err unscaled", ".3f"),
    ("err_median_unscaled", "per-step err median unscaled", ".3f"),
    ("err_p90_unscaled", "per-step err p90 unscaled", ".3f"),
    ("real_spread", "real p10-p90 / median", ".3f"),
    ("sim_spread", "sim p10-p90 / median", ".3f"),
]


def print_validation(rows: list[dict[str, Any]]) -> None:
    print(format_table(rows, VALIDATE_COLUMNS))
    print("median/p90 err: |sim - real| / real of the step-time median and p90; per-step err: the same per step, "
          "then its median and p90; bytes/hits equal: every step's bytes read and reuse hits identical")  # fmt: skip
    probed = [r for r in rows if "speed_factor" in r]
    if probed:
        print(format_table(probed, PROBE_COLUMNS))
        print("probes: ms of one probe sweep (geometric mean of the two around a run); sim compute x: run probe / "
              "calibration probe, the factor the simulated compute is scaled by; unscaled: the errors of the replay "
              "at the calibration's speed; p10-p90 / median: the step-time swing within one run (steps after the "
              "first), which no per-run scale can follow")  # fmt: skip


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
