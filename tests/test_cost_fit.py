"""Fitting compute costs: known coefficients come back from synthetic timings; held-out error is reported."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.core.model import BUILTIN_SPECS
from sparkv.cost_models.fit import (
    BASE_TERMS,
    Sample,
    error_summary,
    fit_form,
    relative_errors,
    select_and_fit,
)

SPEC = BUILTIN_SPECS["smollm2-135m"]
TRUE = {"fixed": 4e-3, "per_token": 7e-5, "per_attn": 3e-8}
LAUNCH = 2e-3


def synth(points: list[tuple[int, int, int]], coefs: dict[str, float], noise: float, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for n, past, k in points:
        layer = (
            coefs["fixed"]
            + coefs["per_token"] * n
            + coefs["per_attn"] * n * (past + (n + 1) / 2)
            + coefs.get("per_past", 0.0) * past
            + coefs.get("per_sq", 0.0) * n * n
        )
        t = (LAUNCH + k * layer) * (1 + noise * rng.standard_normal())
        out.append(Sample(n, past, k, t))
    return out


def grid(seed: int = 0, count: int = 0) -> list[tuple[int, int, int]]:
    if count:
        rng = np.random.default_rng(seed)
        return [(int(n), int(rng.integers(0, 8000)), int(rng.choice([1, 2, 4])))
                for n in rng.integers(32, 1025, count)]
    return [(n, p, k) for n in (32, 64, 128, 256, 512, 1024) for p in (0, 1024, 4096, 7000) for k in (1, 4)]


def test_fit_recovers_known_coefficients_exactly_without_noise() -> None:
    fit = fit_form(synth(grid(), TRUE, 0.0), BASE_TERMS)
    for term, value in TRUE.items():
        assert fit.coefs[term] == pytest.approx(value, rel=1e-6)
    assert fit.launch_s == pytest.approx(LAUNCH, rel=1e-5)


def test_fit_with_noise_reports_small_heldout_error() -> None:
    report = select_and_fit(synth(grid(), TRUE, 0.01), synth(grid(1, 20), TRUE, 0.01, seed=1))
    assert report.fit.terms == BASE_TERMS  # no extra term when the data do not need one
    for term, value in TRUE.items():
        assert report.fit.coefs[term] == pytest.approx(value, rel=0.1)
    assert report.heldout_error["n"] == 20
    assert report.heldout_error["median"] < 0.02
    assert report.heldout_error["p90"] < 0.04
    assert set(report.to_dict()) >= {"terms", "coefficients", "cv_median_rel_error", "heldout_error", "reason"}


def test_selection_adds_a_term_the_data_demand() -> None:
    coefs = {**TRUE, "per_past": 2e-6}  # a cost per past token, independent of n (reading the cache)
    report = select_and_fit(synth(grid(), coefs, 0.005), synth(grid(2, 20), coefs, 0.005, seed=2))
    assert "per_past" in report.fit.terms
    assert report.fit.coefs["per_past"] == pytest.approx(2e-6, rel=0.15)
    assert report.heldout_error["median"] < 0.01
    compute = report.fit.to_compute("smollm2-135m", lm_head_s=0.01)
    assert compute.per_past_s == pytest.approx(report.fit.coefs["per_past"])
    assert compute.layer_s(SPEC, 512, 4096) == pytest.approx(
        report.fit.predict([Sample(512, 4096, 1, 1.0)])[0] - report.fit.launch_s
    )


def test_errors_and_bad_input() -> None:
    samples = synth(grid()[:4], TRUE, 0.0)
    assert relative_errors(np.array([s.seconds * 1.1 for s in samples]), samples) == pytest.approx([0.1] * 4)
    assert error_summary(np.array([]))["n"] == 0
    with pytest.raises(ValueError):
        fit_form(samples[:2], BASE_TERMS)
    with pytest.raises(ValueError):
        Sample(0, 0, 1, 1.0)
