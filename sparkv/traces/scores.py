"""Score traces: per (step, layer), the importance of every full token group, as data.

The real executor records them (KVSwap's predicted scores from low-rank key metadata, and the exact
attention mass per group); the simulator replays them, exactly as it replays bandwidth traces, or draws
them from a synthetic model (`synthetic:seed=0,rho=0.95`). Arrays are [steps, layers, groups] float32,
NaN beyond the groups that exist at a step ((context + step) // G).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparkv.core.errors import UserError

SYNTHETIC_DEFAULTS: dict[str, float] = {
    "seed": 0,
    "rho": 0.95,  # step-to-step correlation of the changing part of a group's importance
    "base_sigma": 1.0,  # spread of a group's fixed importance (log scale)
    "step_sigma": 1.0,  # spread of the changing part (log scale)
    "pred_sigma": 0.5,  # error of the predicted score against the exact one (log scale)
    "recency": 2.0,  # extra log-importance of the newest group, decaying with distance
    "recency_groups": 16.0,  # decay length of the recency boost, in groups
}


@dataclass(frozen=True, eq=False)
class ScoreTrace:
    context_tokens: int
    group_tokens: int
    num_layers: int
    steps: int
    predicted: np.ndarray | None  # [steps, layers, max_groups] float32
    exact: np.ndarray | None  # [steps, layers, max_groups] float32
    source: str  # "synthetic:..." or where it was recorded

    def full_groups(self, step: int) -> int:
        return (self.context_tokens + step) // self.group_tokens

    def get(self, kind: str, step: int, layer: int) -> np.ndarray:
        """Scores of one kind ("predicted" or "exact") for the groups that exist at `step`."""
        arr = self.predicted if kind == "predicted" else self.exact if kind == "exact" else None
        if arr is None:
            raise UserError(f"score trace {self.source} holds no {kind!r} scores")
        return arr[step, layer, : self.full_groups(step)]

    def check_covers(self, context_tokens: int, group_tokens: int, num_layers: int, steps: int) -> None:
        mine = (self.context_tokens, self.group_tokens, self.num_layers)
        if mine != (context_tokens, group_tokens, num_layers) or self.steps < steps:
            raise UserError(
                f"score trace {self.source} is for context {mine[0]}, G {mine[1]}, {mine[2]} layers, "
                f"{self.steps} steps; the scenario needs {context_tokens}, {group_tokens}, {num_layers}, {steps}"
            )

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: getattr(self, k) for k in ("context_tokens", "group_tokens", "num_layers", "steps", "source")}
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
        for name in ("predicted", "exact"):
            arr = getattr(self, name)
            if arr is not None:
                arrays[name] = arr
        with path.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        return path


def load_score_trace(path: Path | str) -> ScoreTrace:
    """A recorded score trace (.npz); a missing or damaged file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"score trace {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            pred = data["predicted"].astype(np.float32) if "predicted" in data else None
            exact = data["exact"].astype(np.float32) if "exact" in data else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"score trace {path} is unreadable or truncated: {exc}") from exc
    return ScoreTrace(predicted=pred, exact=exact, **meta)


def parse_synthetic(spec: str) -> dict[str, float]:
    """`synthetic:key=value,...` -> the model's parameters (defaults filled in)."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    params = dict(SYNTHETIC_DEFAULTS)
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        if key not in params or not value:
            raise UserError(f"bad score spec {spec!r}: {part!r} (keys: {', '.join(SYNTHETIC_DEFAULTS)})")
        try:
            params[key] = float(value)
        except ValueError as exc:
            raise UserError(f"bad score spec {spec!r}: {value!r} is not a number") from exc
    if not -1.0 < params["rho"] < 1.0:
        raise UserError(f"bad score spec {spec!r}: rho must be in (-1, 1), got {params['rho']}")
    return params


def synthetic_scores(spec: str, context_tokens: int, group_tokens: int, num_layers: int, steps: int) -> ScoreTrace:
    """A modelled score trace: log-importance = fixed part + AR(1) part + recency boost; exact = softmax mass,
    predicted = the log-importance plus Gaussian error. Labelled synthetic in its source."""
    p = parse_synthetic(spec)
    rng = np.random.default_rng(int(p["seed"]))
    groups = (context_tokens + steps) // group_tokens
    base = rng.normal(0.0, p["base_sigma"], size=(1, num_layers, groups))
    dyn = np.empty((steps, num_layers, groups))
    dyn[0] = rng.normal(0.0, 1.0, size=(num_layers, groups))
    keep, fresh = p["rho"], float(np.sqrt(1.0 - p["rho"] ** 2))
    for s in range(1, steps):
        dyn[s] = keep * dyn[s - 1] + fresh * rng.normal(0.0, 1.0, size=(num_layers, groups))
    full = (context_tokens + np.arange(steps)) // group_tokens  # [steps]
    dist = full[:, None] - 1 - np.arange(groups)[None, :]  # [steps, groups]
    boost = p["recency"] * np.exp(-np.clip(dist, 0, None) / max(p["recency_groups"], 1e-9))
    logit = base + p["step_sigma"] * dyn + boost[:, None, :]
    absent = (dist < 0)[:, None, :]
    logit = np.where(absent, -np.inf, logit)
    mass = np.exp(logit - logit.max(axis=2, keepdims=True))
    exact = mass / mass.sum(axis=2, keepdims=True)
    predicted = logit + rng.normal(0.0, p["pred_sigma"], size=logit.shape)
    exact = np.where(absent, np.nan, exact).astype(np.float32)
    predicted = np.where(absent, np.nan, predicted).astype(np.float32)
    source = "synthetic:" + ",".join(f"{k}={p[k]:g}" for k in SYNTHETIC_DEFAULTS)
    return ScoreTrace(context_tokens, group_tokens, num_layers, steps, predicted, exact, source)


def get_score_trace(spec: str, context_tokens: int, group_tokens: int, num_layers: int, steps: int) -> ScoreTrace:
    """A synthetic spec or a recorded file, checked to cover the scenario."""
    if spec.startswith("synthetic"):
        return synthetic_scores(spec, context_tokens, group_tokens, num_layers, steps)
    trace = load_score_trace(spec)
    trace.check_covers(context_tokens, group_tokens, num_layers, steps)
    return trace


def regroup(tokens: ScoreTrace, group_tokens: int) -> ScoreTrace:
    """A per-token trace (G=1) at group size G: predicted = the max over a group's tokens (as KVSwap scores a
    group), exact = the sum of their attention mass."""
    if tokens.group_tokens != 1 or tokens.predicted is None or tokens.exact is None:
        raise UserError(f"score trace {tokens.source} is not a per-token trace with both kinds of score")
    steps, layers, max_tokens = tokens.predicted.shape
    groups = max_tokens // group_tokens
    pred = np.full((steps, layers, groups), np.nan, np.float32)
    exact = np.full((steps, layers, groups), np.nan, np.float32)
    for s in range(steps):
        full = (tokens.context_tokens + s) // group_tokens
        n = full * group_tokens
        pred[s, :, :full] = tokens.predicted[s, :, :n].reshape(layers, full, group_tokens).max(axis=2)
        exact[s, :, :full] = tokens.exact[s, :, :n].reshape(layers, full, group_tokens).sum(axis=2)
    return ScoreTrace(tokens.context_tokens, group_tokens, layers, steps, pred, exact,
                      f"{tokens.source}, regrouped to G={group_tokens}")  # fmt: skip
