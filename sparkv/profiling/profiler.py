"""Measure the real model on this machine and write a device profile (what `sparkv profile` runs).

Three kinds of measurement, all through the executor's `LayerwisePrefill` (the code the real runs use):

- compute: one chunk of n tokens after `past` earlier ones, `layers` consecutive layers per command,
  stepped through the model's layers so every command after the first (a warm-up) is a repeat; the
  median is kept. Earlier chunks' cells are installed (zeros: timing does not depend on values).
  Points where other processes took CPU time are measured again (`ContentionGuard`).
- install: decode one cell's K and V with each codec and copy them into the cache.
- query: the query's prefill per layer over the full context, and the first token.

It drives the executor (it measures it); the import is inside the functions so that importing
`sparkv.profiling` never loads torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sparkv.cost_models.fit import Sample
from sparkv.cost_models.timing import ContentionGuard, wait_for_quiet


@dataclass(frozen=True)
class ProfileConfig:
    """What to measure; the defaults profile SmolLM2 on a small CPU in a few minutes."""

    model: str = "smollm2"  # load_model name or directory
    device: str = "cpu"  # "cpu" or "cuda[:n]"
    dtype: str = "float32"
    threads: int = 0  # torch intra-op threads (0: keep torch's default)
    max_context: int = 8192  # the longest context (past + chunk) measured
    query_tokens: int = 64
    chunk_sizes: tuple[int, ...] = (32, 64, 128, 256, 384, 512, 768, 1024)
    past_levels: int = 6  # pasts per chunk size, spread over [0, max_context - n]
    layer_counts: tuple[int, ...] = (1, 2)  # layers per command, cycled over the points
    heldout_points: int = 20  # random points at sizes off the grid (a ragged last chunk), never fitted
    heldout_grid_points: int = 20  # random points at grid sizes, pasts off the grid (configured chunks)
    repeats: int = 8  # timed commands per point and pass (after one warm-up)
    passes: int = 3  # passes over all points, at different times; their times are pooled
    codecs: tuple[str, ...] = ("fp16", "bf16", "fp32", "int8", "int4", "int4-t32-s1-rot", "fp16+zstd", "int8+zstd")
    install_tokens: tuple[int, ...] = (128, 512, 2048)  # cell lengths timed for the install cost
    install_repeats: int = 7
    max_other_cpu: float = 0.3  # re-measure a point if other processes used more than this share of a core
    quiet_wait_s: float = 1.0  # before each chunk size, wait up to this long for other processes to go quiet
    retries: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.passes < 1 or self.past_levels < 1 or not self.chunk_sizes:
            raise ValueError(f"bad profile config: {self}")
        if min(self.chunk_sizes) < 1:
            raise ValueError(f"chunk sizes must be positive, got {self.chunk_sizes}")
        if max(self.chunk_sizes) > self.max_context:
            raise ValueError(f"chunk size {max(self.chunk_sizes)} exceeds max_context {self.max_context}")


@dataclass(frozen=True)
class Point:
    """One compute measurement to take."""

    n: int  # chunk tokens
    past: int  # tokens before the chunk (a multiple of n)
    layers: int  # layers per command
    split: str  # "train", "heldout" (a size off the grid) or "heldout-grid" (a grid size, an unseen past)


def plan_points(cfg: ProfileConfig, num_layers: int) -> list[Point]:
    """Training grid (chunk sizes x past levels) and two random held-out sets the fit never sees:
    grid sizes at pasts off the grid (the chunks a run is configured with), and sizes off the grid,
    random multiples of half the smallest grid size (a context's ragged last chunk)."""
    usable = [k for k in cfg.layer_counts if k * (cfg.repeats + 1) <= num_layers] or [1]
    points: list[Point] = []
    i = 0
    for n in cfg.chunk_sizes:
        top = cfg.max_context - n
        pasts = sorted({round(x / n) * n for x in np.linspace(0, top, cfg.past_levels)})
        for past in pasts:
            points.append(Point(n, min(past, top // n * n), usable[i % len(usable)], "train"))
            i += 1
    rng = np.random.default_rng(cfg.seed + 1)
    taken = {(p.n, p.past) for p in points}

    def add(target: int, sizes: Callable[[], int], split: str) -> None:
        tries = 0
        while len(points) < target and tries < 100 * target:
            tries += 1
            n = sizes()
            past = int(rng.integers(0, (cfg.max_context - n) // n + 1)) * n
            if (n, past) not in taken:
                taken.add((n, past))
                points.append(Point(n, past, int(rng.choice(usable)), split))

    step = max(1, min(cfg.chunk_sizes) // 2)
    lo, hi = min(cfg.chunk_sizes) // step, max(cfg.chunk_sizes) // step
    add(len(points) + cfg.heldout_points, lambda: int(rng.integers(lo, hi + 1)) * step, "heldout")
    add(len(points) + cfg.heldout_grid_points, lambda: int(rng.choice(cfg.chunk_sizes)), "heldout-grid")
    return points


def _sync(device: str) -> Callable[[], None] | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.synchronize


def _prefill_with_past(loaded: Any, n: int, chunks: int, query_tokens: int, seed: int) -> Any:
    """A LayerwisePrefill of `chunks` chunks of n tokens, every cell installed (zeros)."""
    import torch

    from sparkv.executor.model.prefill import LayerwisePrefill

    gen = torch.Generator().manual_seed(seed)
    vocab = loaded.spec.vocab_size
    ctx = torch.randint(0, vocab, (n * chunks,), generator=gen)
    query = torch.randint(0, vocab, (max(1, query_tokens),), generator=gen)
    p = LayerwisePrefill(loaded, ctx, query, n, max_new_tokens=1)
    spec = loaded.spec
    for c in range(p.num_chunks):
        length = p.request.chunk_len(c)
        z = torch.zeros((spec.num_kv_heads, length, spec.head_dim), dtype=loaded.dtype, device=loaded.device)
        for layer in range(p.num_layers):
            p.install(c, layer, z, z)
    return p


def _time_group(
    p: Any, pts: list[Point], repeats: int, sync: Callable[[], None] | None
) -> list[tuple[list[float], float]]:
    """Per point of one chunk size: seconds of up to `repeats` commands after a warm-up, and the share of
    a core other processes used meanwhile. Commands go round-robin (one per point per round), so a slow
    moment of the machine is spread over all points instead of biasing one."""
    nxt = [0] * len(pts)
    times: list[list[float]] = [[] for _ in pts]
    other = [0.0] * len(pts)
    wall = [0.0] * len(pts)
    for r in range(repeats + 1):
        for j, pt in enumerate(pts):
            lo = nxt[j]
            if lo + pt.layers > p.num_layers:
                continue
            with ContentionGuard() as guard:
                if sync:
                    sync()
                t0 = time.perf_counter()
                p.compute(pt.past // pt.n, lo, lo + pt.layers)
                if sync:
                    sync()
                dt = time.perf_counter() - t0
            nxt[j] += pt.layers
            if r > 0 or lo + 2 * pt.layers > p.num_layers:  # the first round warms up, if layers allow
                times[j].append(dt)
                other[j] += guard.other_cpu_s
                wall[j] += guard.wall_s
    return [(t, o / w if w > 0 else 0.0) for t, o, w in zip(times, other, wall, strict=True)]


@dataclass
class Measured:
    """Raw results of one compute point."""

    point: Point
    seconds: float  # median of the timed commands
    times: list[float] = field(default_factory=list)
    other_cpu: float = 0.0  # share of a core other processes used during the point
    attempts: int = 1
    waited_s: float = 0.0  # time spent waiting for other processes to go quiet before it
    pass_medians: list[float] = field(default_factory=list)  # median of each pass: the machine's reproducibility

    def sample(self) -> Sample:
        return Sample(self.point.n, self.point.past, self.point.layers, self.seconds)


def _measure_once(
    loaded: Any,
    cfg: ProfileConfig,
    points: list[Point],
    todo: list[int],
    seed: int,
    tick: Callable[[str], None] = lambda _: None,
) -> dict[int, tuple[list[float], float, float]]:
    """One pass over `todo`, chunk sizes in random order (so drift of the machine hits grid and held-out
    points alike): index -> (times, other processes' share of a core, seconds waited for quiet).
    `tick` is called once per point measured."""
    sync = _sync(loaded.device)
    by_n: dict[int, list[int]] = {}
    for i in todo:
        by_n.setdefault(points[i].n, []).append(i)
    order = list(by_n)
    np.random.default_rng(seed).shuffle(order)
    out: dict[int, tuple[list[float], float, float]] = {}
    for n in order:
        idx = by_n[n]
        p = _prefill_with_past(loaded, n, max(points[i].past for i in idx) // n + 1, cfg.query_tokens, seed)
        w0 = time.perf_counter()
        if cfg.quiet_wait_s > 0:
            wait_for_quiet(cfg.max_other_cpu, cfg.quiet_wait_s)
        waited = (time.perf_counter() - w0) / len(idx)
        for i, (times, other) in zip(idx, _time_group(p, [points[i] for i in idx], cfg.repeats, sync), strict=True):
            out[i] = (times, other, waited)
            tick(f"pass {seed - cfg.seed + 1}: n={n} past={points[i].past} k={points[i].layers}")
        del p
    return out


def measure_compute(
    loaded: Any, cfg: ProfileConfig, points: list[Point], tick: Callable[[str], None] = lambda _: None
) -> list[Measured]:
    """Time every point in `cfg.passes` passes (times pooled, median kept); a point whose commands other
    processes disturbed (> `max_other_cpu`) is measured again, up to `retries` times, replacing its times.
    `tick` is called once per point and pass (not for re-measurements)."""
    pooled: dict[int, list[tuple[list[float], float, float]]] = {i: [] for i in range(len(points))}
    for k in range(cfg.passes):
        for i, got in _measure_once(loaded, cfg, points, list(range(len(points))), cfg.seed + k, tick).items():
            pooled[i].append(got)
    attempts = dict.fromkeys(pooled, 1)
    for r in range(cfg.retries):
        todo = [i for i, got in pooled.items() if np.mean([g[1] for g in got]) > cfg.max_other_cpu]
        if not todo:
            break
        for i, got in _measure_once(loaded, cfg, points, todo, cfg.seed + 100 + r).items():
            worst = max(range(len(pooled[i])), key=lambda j: pooled[i][j][1])
            pooled[i][worst] = got  # replace the most disturbed pass
            attempts[i] += 1
    results = []
    for i, pt in enumerate(points):
        times = [t for got in pooled[i] for t in got[0]]
        other = float(np.mean([g[1] for g in pooled[i]]))
        medians = [float(np.median(g[0])) for g in pooled[i] if g[0]]
        waited = sum(g[2] for g in pooled[i])
        results.append(Measured(pt, float(np.median(times)), times, other, attempts[i], waited, medians))
    return results


def measure_install(loaded: Any, cfg: ProfileConfig) -> dict[str, dict[str, Any]]:
    """Per codec: seconds to decode one cell's K and V and install them, vs wire bytes; fitted line."""
    import torch

    from sparkv.cost_models.codecs import get_codec, synthetic_kv

    spec = loaded.spec
    dtype = np.float32 if loaded.dtype == torch.float32 else np.float16
    out: dict[str, dict[str, Any]] = {}
    sync = _sync(loaded.device)
    for name in cfg.codecs:
        codec = get_codec(name)
        rows: list[tuple[int, float]] = []
        for n in cfg.install_tokens:
            p = _prefill_with_past(loaded, n, 1, 1, cfg.seed)
            shape = (spec.num_kv_heads, n, spec.head_dim)
            k, v = synthetic_kv(shape, dtype, seed=n)
            pk, pv = codec.encode(k, kind="k"), codec.encode(v, kind="v")

            def install(
                p: Any = p, pk: bytes = pk, pv: bytes = pv, shape: tuple[int, ...] = shape, codec: Any = codec
            ) -> None:
                # as the executor's link worker does: decoded arrays straight into the cache
                p.install(0, 0, codec.decode(pk, shape, dtype), codec.decode(pv, shape, dtype))

            install()  # warm-up
            times = []
            for _ in range(cfg.install_repeats):
                if sync:
                    sync()
                t0 = time.perf_counter()
                install()
                if sync:
                    sync()
                times.append(time.perf_counter() - t0)
            rows.append((len(pk) + len(pv), float(np.median(times))))
        out[name] = fit_install(rows)
    return out


def fit_install(rows: list[tuple[int, float]]) -> dict[str, Any]:
    """t = fixed + s_per_byte * bytes by relative least squares (both clipped at >= 0)."""
    b = np.array([r[0] for r in rows], dtype=np.float64)
    t = np.array([r[1] for r in rows], dtype=np.float64)
    if len(rows) >= 2:
        a = np.stack([np.ones_like(b), b], axis=1) / t[:, None]
        (fixed, per_byte), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
        if fixed < 0:
            fixed, per_byte = 0.0, float(np.sum(t * b / t**2) / np.sum(b * b / t**2))
    else:
        fixed, per_byte = 0.0, float(t[0] / b[0])
    return {"fixed_s": max(0.0, float(fixed)), "s_per_byte": max(0.0, float(per_byte)), "samples": rows}


def measure_query(loaded: Any, cfg: ProfileConfig, chunk_tokens: int = 512, repeats: int = 2) -> dict[str, Any]:
    """Query prefill per layer over `max_context` tokens, and the first token (median over repeats)."""
    sync = _sync(loaded.device)
    per_layer: list[float] = []
    first: list[float] = []
    chunk = min(chunk_tokens, cfg.max_context)
    for r in range(repeats + 1):
        p = _prefill_with_past(loaded, chunk, cfg.max_context // chunk, cfg.query_tokens, cfg.seed + r)
        layer_times = []
        for layer in range(p.num_layers):
            if sync:
                sync()
            t0 = time.perf_counter()
            p.query_layer(layer)
            if sync:
                sync()
            layer_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p.first_token()
        if sync:
            sync()
        if r > 0:  # the first round warms up
            per_layer.extend(layer_times)
            first.append(time.perf_counter() - t0)
    context = cfg.max_context // chunk * chunk
    return {
        "context_tokens": context,
        "query_tokens": cfg.query_tokens,
        "per_layer_s": float(np.median(per_layer)),
        "per_layer_p90_s": float(np.percentile(per_layer, 90)),
        "first_token_s": float(np.median(first)),
    }


def config_dict(cfg: ProfileConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
