"""Run the profiler end to end and assemble a `DeviceProfile`: measure, fit, judge on held-out points,
measure power if a sensor is readable (else an estimate that says so), and describe the machine.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from sparkv.cost_models.energy import ComputePower
from sparkv.cost_models.fit import FitReport, error_summary, select_and_fit
from sparkv.cost_models.profiles import DeviceProfile
from sparkv.cost_models.timing import load_state, machine_info
from sparkv.executor.sensors import measure_energy, open_sensor
from sparkv.profiling.profiler import (
    Measured,
    ProfileConfig,
    config_dict,
    measure_compute,
    measure_install,
    measure_query,
    plan_points,
)

SMOLLM2_ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
QUICK = ProfileConfig(
    model="tiny",
    max_context=128,
    query_tokens=8,
    chunk_sizes=(16, 32),
    past_levels=3,
    heldout_points=3,
    heldout_grid_points=3,
    repeats=2,
    passes=1,
    codecs=("fp16", "int8"),
    install_tokens=(16, 64),
    install_repeats=3,
    retries=0,
    quiet_wait_s=0.0,
)


def canonical_model(name: str) -> str:
    """The built-in spec name a profile is keyed by (SmolLM2 loads as ...-instruct, its spec is smollm2-135m)."""
    return "smollm2-135m" if name.lower() in SMOLLM2_ALIASES else name


def short_model(name: str) -> str:
    return "smollm2" if name.lower() in SMOLLM2_ALIASES else name.lower().replace("/", "-")


def estimate_power(device: str, threads: int) -> ComputePower:
    """Power by state when no sensor is readable: a stated estimate, never a measurement."""
    if device.startswith("cuda"):
        return ComputePower(300.0, 60.0, "estimate (no NVML reading): a datacenter GPU under load / idle")
    return ComputePower(
        4.5 * threads + 2.0,
        1.0 * threads,
        f"estimate (no readable RAPL here): ~4.5 W per busy server core (EPYC 7003: 280 W TDP / 64 cores) "
        f"x {threads} threads + 2 W uncore/DRAM share; idle ~1 W per core",
    )


def measure_power(loaded: Any, device: str, threads: int, burst: Callable[[], object]) -> ComputePower:
    """Idle (1 s asleep) and active (during `burst`) power from a sensor, else `estimate_power`."""
    sensor = open_sensor(device)
    if sensor is None:
        return estimate_power(device, threads)
    try:
        _, idle_j, idle_s = measure_energy(sensor, lambda: time.sleep(1.0))
        _, busy_j, busy_s = measure_energy(sensor, burst)
    finally:
        sensor.close()
    if idle_j is None or busy_j is None or busy_s <= 0:
        return estimate_power(device, threads)
    return ComputePower(busy_j / busy_s, idle_j / idle_s, f"measured with {sensor.name} during profiling")


def _load(cfg: ProfileConfig, loaded: Any) -> Any:
    if loaded is not None:
        return loaded
    from sparkv.executor.model.models import load_model, tiny_model

    if cfg.model == "tiny":
        return tiny_model(num_layers=4, hidden_size=64, device=cfg.device, dtype=cfg.dtype)
    return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)


def run_profile(
    cfg: ProfileConfig, name: str = "", loaded: Any = None, show_progress: bool = True
) -> tuple[DeviceProfile, FitReport]:
    """Measure, fit and describe; returns the profile (not yet saved) and the fit report."""
    import torch

    t0 = time.perf_counter()
    load_before = load_state()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    loaded = _load(cfg, loaded)
    spec = loaded.spec
    points = plan_points(cfg, spec.num_layers)
    steps = len(points) * cfg.passes + len(cfg.codecs) + 2
    with tqdm(total=steps, desc="sparkv profile", unit="step", file=sys.stderr, disable=not show_progress) as bar:
        def tick(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()

        measured = measure_compute(loaded, cfg, points, tick=tick)
        bar.set_postfix_str("query + first token")
        query = measure_query(loaded, cfg)
        bar.update()
        install = {}
        for codec in cfg.codecs:
            bar.set_postfix_str(f"install {codec}")
            install.update(measure_install(loaded, _with_codecs(cfg, codec)))
            bar.update()
        bar.set_postfix_str("power")
        power = measure_power(loaded, cfg.device, threads, lambda: measure_query(loaded, cfg, repeats=1))
        bar.update()
    clean = [m for m in measured if m.other_cpu <= cfg.max_other_cpu]
    if len(clean) < 0.75 * len(measured):  # too few undisturbed points: fit everything, and say so
        clean = measured
    train = [m.sample() for m in clean if m.point.split == "train"]
    held_m = [m for m in clean if m.point.split.startswith("heldout")]
    report = select_and_fit(train, [m.sample() for m in held_m], heldout_labels=[m.point.split for m in held_m])
    noise = pass_noise(measured)
    model = canonical_model(spec.name)
    compute = report.to_compute(model, lm_head_s=query["first_token_s"])
    predicted_query = compute.layer_s(spec, query["query_tokens"], query["context_tokens"])
    query["predicted_per_layer_s"] = predicted_query
    query["rel_error"] = abs(predicted_query - query["per_layer_s"]) / query["per_layer_s"]
    info = machine_info(cfg.device)
    default_codec = "fp16" if "fp16" in install else next(iter(install))
    kind = "cpu" if cfg.device == "cpu" else "cuda"
    profile = DeviceProfile(
        name=name or f"{kind}-{short_model(spec.name)}",
        kind="measured",
        device=info["device"],
        compute=compute,
        power=power,
        install_s_per_byte=install[default_codec]["s_per_byte"],
        install_fixed_s=install[default_codec]["fixed_s"],
        model=model,
        dtype=spec.dtype,
        threads=threads,
        versions=info["versions"],
        date=info["date"],
        valid_for=(
            f"{model} ({loaded.model_id}) at {spec.dtype} on this {kind} with {threads} torch threads; attention as "
            "sparkv.executor.model.prefill_layers runs it (SDPA with an explicit boolean causal mask); chunks "
            f"{min(cfg.chunk_sizes)}-{max(cfg.chunk_sizes)} tokens (measured at "
            f"{', '.join(map(str, cfg.chunk_sizes))}; other sizes interpolated), context up to {cfg.max_context}"
        ),
        sources={
            "compute": "measured by `sparkv profile` (LayerwisePrefill, median of repeats; fit: measurements.fit)",
            "install": "measured: codec decode of one cell's K and V + copy into the cache, fitted per codec",
            "power": power.source,
            "platform": info["platform"],
        },
        fit_error=_finite({
            "heldout_median": report.heldout_error.get("median", float("nan")),
            "heldout_p90": report.heldout_error.get("p90", float("nan")),
            "heldout_max": report.heldout_error.get("max", float("nan")),
            "heldout_n": float(len(held_m)),
            # every configured held-out set reports its size, 0 when all its points were measured while busy
            **{f"{key}_n": float(sum(m.point.split == group for m in held_m)) for group, key in HELDOUT_KEYS.items()},
            **{
                f"{HELDOUT_KEYS[group]}_{stat}": value
                for group, errs in report.heldout_groups.items()
                for stat, value in errs.items()
                if stat in ("median", "p90")
            },
            "train_median": report.train_error["median"],
            "query_layer": query["rel_error"],
            "noise_median": noise["median"],
            "noise_p90": noise["p90"],
        }),
        install_by_codec={c: {"fixed_s": v["fixed_s"], "s_per_byte": v["s_per_byte"]} for c, v in install.items()},
        measurements={
            "config": config_dict(cfg),
            "fit": report.to_dict(),
            "compute_samples": _sample_table(measured),
            "query": query,
            "install_samples": {c: v["samples"] for c, v in install.items()},
            "remeasured_points": sum(m.attempts > 1 for m in measured),
            "excluded_contended_points": len(measured) - len(clean),
            "profiling_s": round(time.perf_counter() - t0, 1),
            "waited_for_quiet_s": round(sum(m.waited_s for m in measured), 1),
            "machine_load": {"before": load_before, "after": load_state()},
        },
    )
    return profile, report


HELDOUT_KEYS = {"heldout": "heldout_offgrid", "heldout-grid": "heldout_grid"}  # fit_error key prefixes


def _finite(values: dict[str, float]) -> dict[str, float]:
    """Drop NaN entries (no held-out points, a single pass): profile files are strict JSON."""
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}


def pass_noise(measured: list[Measured]) -> dict[str, float]:
    """How far one pass's median of a point lies from the pooled median (relative): the error floor a fit
    can reach on this machine, since a single measurement is no more reproducible than this."""
    devs = [abs(pm - m.seconds) / m.seconds for m in measured if len(m.pass_medians) > 1 for pm in m.pass_medians]
    return error_summary(np.array(devs))


def _with_codecs(cfg: ProfileConfig, codec: str) -> ProfileConfig:
    from dataclasses import replace

    return replace(cfg, codecs=(codec,))


def _sample_table(measured: list[Measured]) -> dict[str, Any]:
    cols = ["n", "past", "layers", "seconds", "split", "other_cpu", "attempts", "times"]
    rows = [
        [m.point.n, m.point.past, m.point.layers, m.seconds, m.point.split, round(m.other_cpu, 3), m.attempts,
         [round(t, 6) for t in m.times]]
        for m in measured
    ]
    return {"columns": cols, "rows": rows}


def summary_lines(profile: DeviceProfile) -> list[str]:
    """Human-readable figures of a measured profile."""
    c = profile.compute
    m = profile.measurements
    fit = m.get("fit", {})
    err = profile.fit_error
    coefs = ", ".join(f"{k}={v:.4g}" for k, v in fit.get("coefficients", {}).items())
    lines = [
        f"device: {profile.device}; model {profile.model} {profile.dtype}; {profile.threads} threads",
        f"fit ({'+'.join(fit.get('terms', []))}): {coefs}",
        f"  {fit.get('reason', '')}",
        f"held-out error: median {err.get('heldout_median', math.nan):.2%}, p90 {err.get('heldout_p90', math.nan):.2%}"
        f" (n={int(err.get('heldout_n', 0))}); train median {err.get('train_median', 0):.2%}; measurement noise "
        f"(one pass vs all) median {err.get('noise_median', math.nan):.2%}, p90 {err.get('noise_p90', math.nan):.2%}",
    ]
    for key, what in (("heldout_grid", "profiled chunk sizes, unseen pasts"), ("heldout_offgrid", "unprofiled sizes")):
        if err.get(f"{key}_n") == 0:
            lines.append(f"  {what}: no undisturbed points (all measured while other processes were busy)")
        elif f"{key}_median" in err:
            lines.append(
                f"  {what}: median {err[f'{key}_median']:.2%}, p90 {err[f'{key}_p90']:.2%} (n={int(err[f'{key}_n'])})"
            )
    q = m.get("query", {})
    if q:
        lines.append(
            f"query: {q['query_tokens']} tokens over {q['context_tokens']}: {q['per_layer_s'] * 1e3:.2f} ms/layer "
            f"(fit {q['predicted_per_layer_s'] * 1e3:.2f}); first token {q['first_token_s'] * 1e3:.2f} ms"
        )
    from sparkv.core.model import BUILTIN_SPECS

    spec = BUILTIN_SPECS.get(profile.model or "")
    top = int(m.get("config", {}).get("max_context", 8192))
    for n in (128, 512, 1024) if spec else ():
        if n < top:
            lo, hi = c.layer_s(spec, n, 0), c.layer_s(spec, n, top - n)  # type: ignore[arg-type]
            lines.append(f"chunk of {n}: {lo * 1e3:.1f} ms/layer at past 0, {hi * 1e3:.1f} ms/layer at past {top - n}")
    for codec, v in profile.install_by_codec.items():
        lines.append(f"install {codec}: {v['s_per_byte'] * 1e9:.3f} ns/byte + {v['fixed_s'] * 1e6:.0f} us")
    pw = profile.power
    lines.append(f"power: active {pw.active_w:.1f} W, idle {pw.idle_w:.1f} W ({pw.source})")
    lines.append(
        f"profiling took {m.get('profiling_s', float('nan'))} s ({m.get('waited_for_quiet_s', 0)} s of it waiting for "
        f"other processes to go quiet); {m.get('remeasured_points', 0)} points re-measured, "
        f"{m.get('excluded_contended_points', 0)} left out of the fit (other processes were busy)"
    )
    return lines
