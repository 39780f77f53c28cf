"""Fitting `FittedCompute` to timed compute commands, and judging the fit on points it never saw.

A sample is one command: `layers` consecutive layers of one chunk of n new tokens after `past`
earlier ones, taking `seconds`. Its predicted time is launch + layers * per-layer time, and the
per-layer time is linear in the coefficients, so the fit is a (non-negative) least-squares problem.
Rows are divided by the measured time, so the fit minimises relative error, the error a planner
feels. Extra terms (see `FittedCompute`) are kept only when cross-validation says they help.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from sparkv.cost_models.compute import FittedCompute, TableCompute
from sparkv.cost_models.fit_table import TableFit, fit_table
from sparkv.cost_models.samples import Sample

BASE_TERMS = ("fixed", "per_token", "per_attn")
EXTRA_TERMS = ("per_past", "per_sq")
ALL_TERMS = BASE_TERMS + EXTRA_TERMS
# Candidate forms, simplest first; a form must beat all simpler ones by a margin to be chosen.
CANDIDATE_FORMS: tuple[tuple[str, ...], ...] = (
    BASE_TERMS,
    (*BASE_TERMS, "per_past"),
    (*BASE_TERMS, "per_sq"),
    ALL_TERMS,
)


def layer_features(n: float, past: float, terms: Sequence[str]) -> list[float]:
    """Per-layer regressors for `terms` at n new tokens after `past` (see `FittedCompute`)."""
    values = {
        "fixed": 1.0,
        "per_token": n,
        "per_attn": n * (past + (n + 1) / 2),
        "per_past": past,
        "per_sq": n * n,
    }
    return [values[t] for t in terms]


def design(samples: Sequence[Sample], terms: Sequence[str], launch: bool = True) -> np.ndarray:
    """[samples, launch? + terms] design matrix of command times."""
    rows = []
    for s in samples:
        feats = [s.layers * f for f in layer_features(s.new_tokens, s.past_tokens, terms)]
        rows.append(([1.0] if launch else []) + feats)
    return np.asarray(rows, dtype=np.float64)


@dataclass(frozen=True)
class CoefFit:
    """Coefficients of one fitted form."""

    terms: tuple[str, ...]
    coefs: dict[str, float]  # term -> seconds per unit of its regressor
    launch_s: float

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        x = design(samples, self.terms, launch=False)
        return self.launch_s + x @ np.array([self.coefs[t] for t in self.terms])

    def to_compute(self, model: str, lm_head_s: float = 0.0) -> FittedCompute:
        c = {t: self.coefs.get(t, 0.0) for t in ALL_TERMS}
        return FittedCompute(
            model=model,
            fixed_s=c["fixed"],
            per_token_s=c["per_token"],
            per_attn_s=c["per_attn"],
            per_past_s=c["per_past"],
            per_sq_s=c["per_sq"],
            launch_s=self.launch_s,
            lm_head_s=lm_head_s,
        )


def fit_form(samples: Sequence[Sample], terms: Sequence[str] = BASE_TERMS, launch: bool = True) -> CoefFit:
    """Non-negative least squares on relative error: minimise sum(((pred - t) / t)^2)."""
    if len(samples) < len(terms) + int(launch):
        raise ValueError(f"need at least {len(terms) + int(launch)} samples to fit {terms}, got {len(samples)}")
    x = design(samples, terms, launch)
    t = np.array([s.seconds for s in samples])
    xw = x / t[:, None]
    scale = np.linalg.norm(xw, axis=0)
    scale[scale == 0] = 1.0
    beta, _ = nnls(xw / scale, np.ones(len(samples)))
    beta = beta / scale
    launch_s = float(beta[0]) if launch else 0.0
    coefs = {name: float(b) for name, b in zip(terms, beta[int(launch) :], strict=True)}
    return CoefFit(tuple(terms), coefs, launch_s)


def relative_errors(pred: np.ndarray, samples: Sequence[Sample]) -> np.ndarray:
    """|pred - measured| / measured, per sample."""
    t = np.array([s.seconds for s in samples])
    return np.abs(np.asarray(pred) - t) / t


def error_summary(errors: np.ndarray) -> dict[str, float]:
    """Median, p90 and max of relative errors (fractions, not percent)."""
    if len(errors) == 0:
        return {"median": float("nan"), "p90": float("nan"), "max": float("nan"), "n": 0}
    return {
        "median": float(np.median(errors)),
        "p90": float(np.percentile(errors, 90)),
        "max": float(np.max(errors)),
        "n": len(errors),
    }


def _folds(n: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    idx = np.random.default_rng(seed).permutation(n)
    return [(np.setdiff1d(idx, idx[k::folds]), idx[k::folds]) for k in range(folds)]


def cv_error(samples: Sequence[Sample], terms: Sequence[str], folds: int = 5, seed: int = 0) -> float:
    """Median relative error of `terms` over k-fold cross-validation within `samples`."""
    errors: list[float] = []
    for train, test in _folds(len(samples), folds, seed):
        if len(test) == 0 or len(train) < len(terms) + 1:
            continue
        fit = fit_form([samples[i] for i in train], terms)
        held = [samples[i] for i in test]
        errors.extend(relative_errors(fit.predict(held), held).tolist())
    return float(np.median(errors)) if errors else float("inf")


def cv_error_table(samples: Sequence[Sample], fallback: Sequence[str], folds: int = 5, seed: int = 0) -> float:
    """`cv_error` of a per-size table (with the `fallback` form outside its sizes), on the same folds."""
    errors: list[float] = []
    for train, test in _folds(len(samples), folds, seed):
        part = [samples[i] for i in train]
        table = fit_table(part)
        if len(test) == 0 or table is None or len(part) < len(fallback) + 1:
            continue
        held = [samples[i] for i in test]
        pred = table.predict(held, fit_form(part, fallback).to_compute(""))
        errors.extend(relative_errors(pred, held).tolist())
    return float(np.median(errors)) if errors else float("inf")


@dataclass(frozen=True)
class FitReport:
    """The chosen model (a closed form, or a per-size table over it), and how every candidate did."""

    fit: CoefFit  # the chosen closed form (the table's fallback outside its sizes, when a table is chosen)
    cv_median: dict[str, float]  # candidate -> k-fold median relative error on the training points
    train_error: dict[str, float]
    heldout_error: dict[str, float] = field(default_factory=dict)  # every held-out point
    reason: str = ""
    table: TableFit | None = None  # chosen per-size table, if it beat the forms
    heldout_groups: dict[str, dict[str, float]] = field(default_factory=dict)  # held-out errors per group

    def to_compute(self, model: str, lm_head_s: float = 0.0) -> FittedCompute | TableCompute:
        form = self.fit.to_compute(model, lm_head_s)
        return form if self.table is None else self.table.to_compute(model, form, lm_head_s)

    def predict(self, samples: Sequence[Sample]) -> np.ndarray:
        form = self.fit.to_compute("")
        return self.fit.predict(samples) if self.table is None else self.table.predict(samples, form)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": "table" if self.table else "form",
            "terms": list(self.fit.terms),
            "coefficients": {**self.fit.coefs, "launch": self.fit.launch_s},
            # a form with too few points to score has no k-fold error: null (profile files are strict JSON)
            "cv_median_rel_error": {k: (v if math.isfinite(v) else None) for k, v in self.cv_median.items()},
            "train_error": self.train_error,
            "heldout_error": self.heldout_error,
            "heldout_groups": self.heldout_groups,
            "reason": self.reason,
        }


TABLE = "table"  # the table's key among the candidates


def select_and_fit(
    train: Sequence[Sample],
    heldout: Sequence[Sample] = (),
    forms: Sequence[tuple[str, ...]] = CANDIDATE_FORMS,
    margin: float = 0.9,
    heldout_labels: Sequence[str] = (),
) -> FitReport:
    """Choose a model by k-fold CV on `train`, fit it on all of `train`, and report `heldout` errors.

    Forms are tried simplest first; a richer one replaces the current choice only if its k-fold median
    relative error is below `margin` x the current one's (a >= 10% cut by default). A per-size table
    (`TableCompute`, the chosen form outside its sizes) is the last candidate, under the same rule.
    Held-out points never influence the choice or the coefficients; `heldout_labels` (one per held-out
    point) groups their errors as well.
    """
    cv = {"+".join(f): cv_error(train, f) for f in forms}
    chosen = forms[0]
    for form in forms[1:]:
        if cv["+".join(form)] < margin * cv["+".join(chosen)]:
            chosen = form
    fit = fit_form(train, chosen)
    best = cv["+".join(chosen)]
    cv[TABLE] = cv_error_table(train, chosen)
    table = fit_table(train) if cv[TABLE] < margin * best else None
    base = "+".join(forms[0])
    reason = (
        f"chose {'a per-size table over ' if table else ''}{'+'.join(chosen)}: k-fold median relative error "
        f"{cv[TABLE] if table else best:.2%} vs {cv[base]:.2%} for the base form"
    )
    report = FitReport(fit, cv, {}, reason=reason, table=table)
    train_error = error_summary(relative_errors(report.predict(train), train))
    held: dict[str, float] = {}
    groups: dict[str, dict[str, float]] = {}
    if heldout:
        errors = relative_errors(report.predict(heldout), heldout)
        held = error_summary(errors)
        labels = np.asarray(list(heldout_labels) or [""] * len(heldout))
        for label in sorted(set(labels.tolist()) - {""}):
            groups[label] = error_summary(errors[labels == label])
    return FitReport(fit, cv, train_error, held, reason, table, groups)
