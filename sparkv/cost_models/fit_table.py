"""Fitting a `TableCompute`: one line in `past` per profiled chunk size, and judging it like the forms.

At each grid size n the commands of that size give t = layers * (base + per_past * past); the two
coefficients are a non-negative least-squares fit on relative error, as `fit.fit_form` does for the
closed forms. Sizes measured at fewer than two distinct pasts are left out (the table interpolates
across them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from sparkv.cost_models.compute import FittedCompute, TableCompute
from sparkv.cost_models.samples import Sample


@dataclass(frozen=True)
class TableFit:
    """Per-size lines; `predict` and `to_compute` mirror `fit.CoefFit`."""

    sizes: tuple[int, ...]
    base_s: tuple[float, ...]
    per_past_s: tuple[float, ...]

    def to_compute(self, model: str, fallback: FittedCompute, lm_head_s: float = 0.0) -> TableCompute:
        return TableCompute(model, self.sizes, self.base_s, self.per_past_s, fallback, lm_head_s=lm_head_s)

    def predict(self, samples: Sequence[Sample], fallback: FittedCompute) -> np.ndarray:
        table = self.to_compute("", fallback)
        return np.array([s.layers * table.seconds(s.new_tokens, s.past_tokens) for s in samples])


def fit_table(samples: Sequence[Sample]) -> TableFit | None:
    """Per chunk size, base + per_past from that size's samples; None if no size has two distinct pasts."""
    by_n: dict[int, list[Sample]] = {}
    for s in samples:
        by_n.setdefault(s.new_tokens, []).append(s)
    sizes, bases, slopes = [], [], []
    for n in sorted(by_n):
        group = by_n[n]
        if len({s.past_tokens for s in group}) < 2:
            continue
        t = np.array([s.seconds for s in group])
        x = np.array([[s.layers, s.layers * s.past_tokens] for s in group], dtype=np.float64) / t[:, None]
        scale = np.linalg.norm(x, axis=0)
        scale[scale == 0] = 1.0
        beta, _ = nnls(x / scale, np.ones(len(group)))
        beta = beta / scale
        sizes.append(n)
        bases.append(float(beta[0]))
        slopes.append(float(beta[1]))
    if not sizes:
        return None
    return TableFit(tuple(sizes), tuple(bases), tuple(slopes))
