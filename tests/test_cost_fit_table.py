"""Per-size compute tables: exact at the grid, interpolated between, scaled outside; chosen only when
the measurements need them."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.core.model import BUILTIN_SPECS
from sparkv.cost_models.compute import FittedCompute, TableCompute, compute_model_from_dict
from sparkv.cost_models.fit import TABLE, Sample, select_and_fit
from sparkv.cost_models.fit_table import fit_table

SPEC = BUILTIN_SPECS["smollm2-135m"]
FORM = FittedCompute("m", fixed_s=2e-3, per_token_s=6e-5, per_attn_s=3e-8)
SIZES = (32, 64, 128, 256, 512, 1024)
# kernel efficiency that changes from size to size, as measured on CPUs (no closed form follows it)
EFFICIENCY = {32: 1.00, 64: 0.86, 128: 1.12, 256: 0.97, 512: 1.08, 1024: 0.90}


def table() -> TableCompute:
    return TableCompute("m", (64, 128), (0.010, 0.020), (1e-6, 3e-6), FORM)


def test_table_is_exact_at_grid_sizes_and_linear_between() -> None:
    t = table()
    assert t.layer_s(SPEC, 64, 1000) == pytest.approx(0.010 + 1e-6 * 1000)
    assert t.layer_s(SPEC, 128, 0) == pytest.approx(0.020)
    mid = t.layer_s(SPEC, 96, 500)
    assert mid == pytest.approx(0.5 * (0.010 + 1e-6 * 500) + 0.5 * (0.020 + 3e-6 * 500))


def test_table_outside_the_grid_follows_the_form_and_is_continuous() -> None:
    t = table()
    for edge, past in ((64, 0), (128, 4096)):
        assert t.layer_s(SPEC, edge, past) == pytest.approx(t._at(t.sizes.index(edge), past))
    # beyond the edge: the form's shape, scaled to meet the table at the edge
    ratio = t.layer_s(SPEC, 128, 4096) / FORM.layer_s(SPEC, 128, 4096)
    assert t.layer_s(SPEC, 2048, 4096) == pytest.approx(FORM.layer_s(SPEC, 2048, 4096) * ratio)
    assert t.layer_s(SPEC, 63, 100) == pytest.approx(t.layer_s(SPEC, 64, 100), rel=0.03)


def test_table_round_trips_through_a_profile_dict() -> None:
    back = compute_model_from_dict(table().to_dict())
    assert back == table()
    with pytest.raises(ValueError):
        TableCompute("m", (128, 64), (0.01, 0.02), (0.0, 0.0), FORM)
    with pytest.raises(ValueError):
        TableCompute("m", (64,), (0.01, 0.02), (0.0,), FORM)


def synth(points: list[tuple[int, int, int]], noise: float, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for n, past, k in points:
        t = k * FORM.layer_s(SPEC, n, past) * EFFICIENCY[n] * (1 + noise * rng.standard_normal())
        out.append(Sample(n, past, k, t))
    return out


def test_fit_table_recovers_each_size_line() -> None:
    samples = synth([(n, p, k) for n in SIZES for p in (0, 2048, 4096, 6144) for k in (1, 2)], 0.0, 0)
    fit = fit_table(samples)
    assert fit is not None and fit.sizes == SIZES
    for i, n in enumerate(SIZES):
        assert fit.base_s[i] == pytest.approx(FORM.layer_s(SPEC, n, 0) * EFFICIENCY[n], rel=1e-6)
    assert fit_table([Sample(64, 0, 1, 0.01)]) is None  # one past: no line


def test_selection_takes_the_table_when_sizes_differ_and_groups_heldout_errors() -> None:
    rng = np.random.default_rng(3)
    train = synth([(n, p, k) for n in SIZES for p in (0, 1536, 3072, 4608, 6144) for k in (1, 2)], 0.01, 1)
    grid_pts = [(int(rng.choice(SIZES)), int(rng.integers(0, 7)) * 1000 + 7, 1) for _ in range(20)]
    held = synth(grid_pts, 0.01, 2)
    report = select_and_fit(train, held, heldout_labels=["heldout-grid"] * len(held))
    assert report.table is not None
    assert report.cv_median[TABLE] < 0.9 * report.cv_median["fixed+per_token+per_attn"]
    assert report.heldout_groups["heldout-grid"]["median"] < 0.02
    compute = report.to_compute("m", lm_head_s=0.01)
    assert isinstance(compute, TableCompute) and compute.lm_head_s == 0.01
    assert report.to_dict()["model"] == "table"


def test_selection_keeps_the_form_when_the_form_fits() -> None:
    flat = dict.fromkeys(SIZES, 1.0)
    rng = np.random.default_rng(4)
    train = [
        Sample(n, p, k, k * FORM.layer_s(SPEC, n, p) * flat[n] * (1 + 0.01 * rng.standard_normal()))
        for n in SIZES for p in (0, 1536, 3072, 4608, 6144) for k in (1, 2)
    ]
    report = select_and_fit(train)
    assert report.table is None
    assert isinstance(report.to_compute("m"), FittedCompute)
