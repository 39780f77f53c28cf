"""Compute cost of cells prefilled with block-sparse attention: per (chunk, layer), from measured sparsity.

A `SparsityProfile` is fitted (`fit_sparsity`) to per-cell records of real runs (`sparkv quality
--attention ...` writes them: the fraction of causal key blocks the attention computed, per chunk and
layer). Per measured layer l: log f = a_l + b_l log v, v = the key blocks a query block of the chunk sees
on average. What one line per layer misses splits in two: a chunk effect (a document region that is easy
or hard to sparsify, shared by all layers of a chunk) and a cell remainder, each a standard deviation in
log space. The simulator draws both from a seeded generator (modelled, not replayed), so chunks at the
same position differ as they did in the measurements.

Seconds of a sparse cell: the dense layer's cost without its past, plus the computed fraction of what the
past adds, t(n, 0) + f (t(n, past) - t(n, 0)): a kernel that skips unselected key blocks (as SpargeAttention
does) does work in proportion to the blocks it keeps. The pooled scores (one dot product per query block
and key block) cost 1/block^2 of dense attention and are left out.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sparkv.core.attention import AttentionSpec
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.core.request import Request


class LayerCost(Protocol):
    """What the sparse grid needs of a compute model (any of `sparkv.cost_models.compute`)."""

    def layer_s(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> float: ...


SPARSITY_DIR = Path(__file__).resolve().parent.parent / "data" / "sparsity"


@dataclass(frozen=True)
class SparsityProfile:
    """Computed fraction of causal key blocks per layer and position, fitted to measured cells."""

    attention: str  # the AttentionSpec name it was measured with
    model: str  # the model it was measured on
    intercept: tuple[float, ...]  # a_l per measured layer
    slope: tuple[float, ...]  # b_l per measured layer
    chunk_sigma: float  # std-dev of the per-chunk effect, log space
    cell_sigma: float  # std-dev of the per-cell remainder, log space
    heldout_mae: float  # mean |f - predicted f| over held-out documents (position + layer only)
    heldout_mae_log: float  # the same in log f
    cells: int  # measured cells fitted
    documents: int
    source: str  # what was measured, with what

    @property
    def num_layers(self) -> int:
        return len(self.intercept)

    def predicted(self, layer_frac: float, visible_blocks: float) -> float:
        """Fraction at relative depth `layer_frac` in [0, 1] (nearest measured layer) and `visible_blocks`."""
        lm = min(self.num_layers - 1, max(0, round(layer_frac * (self.num_layers - 1))))
        return math.exp(self.intercept[lm] + self.slope[lm] * math.log(max(visible_blocks, 1.0)))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["intercept"], out["slope"] = list(self.intercept), list(self.slope)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityProfile:
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in data.items() if k in known}  # a file may carry more (e.g. a wall-time fit)
        d["intercept"], d["slope"] = tuple(d["intercept"]), tuple(d["slope"])
        return cls(**d)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def visible_blocks(start: int, tokens: int, block: int) -> float:
    """Mean number of key blocks a query block of the chunk [start, start + tokens) sees."""
    q0, q1 = start // block, (start + tokens - 1) // block
    return (q0 + q1) / 2 + 1


def _floor(spec: AttentionSpec, v: float) -> float:
    """The least fraction: forced blocks (sinks, local) over the visible ones; 1 below the dense threshold."""
    if v <= spec.dense_below:
        return 1.0
    return min(1.0, (spec.sink_blocks + spec.local_blocks) / v)


def fraction_grid(
    profile: SparsityProfile, spec: AttentionSpec, request: Request, num_layers: int, seed: int = 0
) -> np.ndarray:
    """[chunks, layers] computed fraction of each cell: the fit, a seeded chunk effect and cell remainder."""
    rng = np.random.default_rng(seed)
    chunk_eps = rng.normal(0.0, profile.chunk_sigma, request.num_chunks)
    cell_eps = rng.normal(0.0, profile.cell_sigma, (request.num_chunks, num_layers))
    grid = np.empty((request.num_chunks, num_layers))
    for c in range(request.num_chunks):
        v = visible_blocks(request.chunk_start(c), request.chunk_len(c), spec.block)
        for layer in range(num_layers):
            depth = layer / (num_layers - 1) if num_layers > 1 else 0.0
            f = profile.predicted(depth, v) * math.exp(chunk_eps[c] + cell_eps[c, layer])
            grid[c, layer] = min(1.0, max(_floor(spec, v), f))
    return grid


def sparse_compute_grid_s(
    spec: ModelSpec, request: Request, compute: LayerCost, fractions: np.ndarray
) -> np.ndarray:
    """[chunks, layers] seconds: t(n, 0) + f (t(n, past) - t(n, 0)) per cell."""
    grid = np.empty_like(fractions)
    for c in range(request.num_chunks):
        n, past = request.chunk_len(c), request.chunk_start(c)
        base = compute.layer_s(spec, n, 0)
        extra = max(compute.layer_s(spec, n, past) - base, 0.0)
        grid[c, :] = base + fractions[c, :] * extra
    return grid


def builtin_sparsity_profiles() -> dict[str, Path]:
    """attention name -> profile file, for the profiles shipped in sparkv/data/sparsity/."""
    out = {}
    for path in sorted(SPARSITY_DIR.glob("*.json")) if SPARSITY_DIR.is_dir() else []:
        out[str(json.loads(path.read_text())["attention"])] = path
    return out


def load_sparsity_profile(spec: AttentionSpec) -> SparsityProfile:
    """The shipped profile measured with exactly `spec`."""
    known = builtin_sparsity_profiles()
    if spec.name not in known:
        raise UserError(
            f"no measured sparsity profile for attention {spec.name!r}; measured: {', '.join(known) or 'none'} "
            "(measure one: `sparkv quality --attention SPEC --out DIR` writes DIR/sparsity_profile.json)"
        )
    return SparsityProfile.from_dict(json.loads(known[spec.name].read_text()))


# ---- fitting ----


def _fit_lines(v: np.ndarray, f: np.ndarray, layer: np.ndarray, layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer least squares of log f on log v; a layer with one distinct v gets slope 0."""
    a, b = np.zeros(layers), np.zeros(layers)
    for lm in range(layers):
        sel = layer == lm
        x, y = np.log(v[sel]), np.log(f[sel])
        if sel.sum() >= 2 and np.ptp(x) > 0:
            b[lm], a[lm] = np.polyfit(x, y, 1)
        elif sel.any():
            a[lm] = float(y.mean())
    return a, b


def fit_sparsity(rows: list[dict[str, Any]], attention: str, model: str, source: str) -> SparsityProfile:
    """Fit to records with keys document, chunk, layer, start, tokens, computed_fraction (block from `attention`).

    Held-out error: each document predicted by the lines fitted to the others (position and layer only)."""
    from sparkv.core.attention import parse_attention

    spec = parse_attention(attention)
    rows = [r for r in rows if visible_blocks(int(r["start"]), int(r["tokens"]), spec.block) > spec.dense_below]
    if not rows:
        raise UserError("no sparse cells to fit (every chunk below the dense threshold)")
    docs = np.array([str(r["document"]) for r in rows])
    chunk = np.array([int(r["chunk"]) for r in rows])
    layer = np.array([int(r["layer"]) for r in rows])
    v = np.array([visible_blocks(int(r["start"]), int(r["tokens"]), spec.block) for r in rows])
    f = np.clip(np.array([float(r["computed_fraction"]) for r in rows]), 1e-4, 1.0)
    layers = int(layer.max()) + 1
    a, b = _fit_lines(v, f, layer, layers)
    resid = np.log(f) - (a[layer] + b[layer] * np.log(v))
    keys = [f"{d}#{c}" for d, c in zip(docs, chunk, strict=True)]
    means = {k: float(np.mean(resid[[i for i, kk in enumerate(keys) if kk == k]])) for k in set(keys)}
    chunk_part = np.array([means[k] for k in keys])
    errs, errs_log = [], []
    for d in sorted(set(docs)):
        train, test = docs != d, docs == d
        if not train.any():
            continue
        at, bt = _fit_lines(v[train], f[train], layer[train], layers)
        pred = np.exp(at[layer[test]] + bt[layer[test]] * np.log(v[test]))
        errs.extend(np.abs(np.minimum(pred, 1.0) - f[test]))
        errs_log.extend(np.abs(np.log(np.minimum(pred, 1.0)) - np.log(f[test])))
    return SparsityProfile(
        attention=spec.name, model=model, intercept=tuple(float(x) for x in a), slope=tuple(float(x) for x in b),
        chunk_sigma=float(np.std(list(means.values()))), cell_sigma=float(np.std(resid - chunk_part)),
        heldout_mae=float(np.mean(errs)) if errs else math.nan,
        heldout_mae_log=float(np.mean(errs_log)) if errs_log else math.nan,
        cells=len(rows), documents=len(set(docs)), source=source,
    )  # fmt: skip
