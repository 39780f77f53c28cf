"""Sparse-prefill cost model: the per-layer sparsity fit, the fraction grid, and the seconds it gives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparkv.core.attention import parse_attention
from sparkv.core.model import resolve_model_spec
from sparkv.core.request import Request
from sparkv.cost_models.compute import FittedCompute
from sparkv.cost_models.sparse_cost import (
    SparsityProfile,
    fit_sparsity,
    fraction_grid,
    sparse_compute_grid_s,
    visible_blocks,
)

SPEC = parse_attention("block-sparse:tau=0.9,block=64")


def synthetic_rows(seed: int = 0) -> list[dict[str, object]]:
    """f = 2 * v^-0.5 on layer 0, 0.5 * v^-0.2 on layer 1, each chunk of each document shifted a little."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for doc in range(3):
        for chunk in range(1, 8):
            shift = rng.normal(0, 0.1)
            start = chunk * 512
            v = visible_blocks(start, 512, 64)
            for layer, (a, b) in enumerate(((2.0, -0.5), (0.5, -0.2))):
                rows.append({"document": f"d{doc}", "chunk": chunk, "layer": layer, "start": start, "tokens": 512,
                             "computed_fraction": min(1.0, a * v**b * math.exp(shift))})  # fmt: skip
    return rows


def test_fit_recovers_the_lines_and_reports_held_out_error() -> None:
    prof = fit_sparsity(synthetic_rows(), SPEC.name, "m", "synthetic")
    assert prof.slope[0] == pytest.approx(-0.5, abs=0.05) and prof.slope[1] == pytest.approx(-0.2, abs=0.05)
    assert math.exp(prof.intercept[0]) == pytest.approx(2.0, rel=0.2)
    assert 0.05 < prof.chunk_sigma < 0.2 and prof.cell_sigma < 0.05  # the shift is per chunk, shared by layers
    assert 0 < prof.heldout_mae < 0.1 and prof.documents == 3
    assert SparsityProfile.from_dict(prof.to_dict() | {"extra": 1}) == prof


def test_fraction_grid_is_bounded_seeded_and_heterogeneous() -> None:
    prof = fit_sparsity(synthetic_rows(), SPEC.name, "m", "synthetic")
    req = Request(16384, 64, 1024)
    a, b = fraction_grid(prof, SPEC, req, 30, seed=1), fraction_grid(prof, SPEC, req, 30, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, fraction_grid(prof, SPEC, req, 30, seed=2))
    assert a.shape == (16, 30) and (a > 0).all() and (a <= 1).all()
    v0 = visible_blocks(0, 1024, 64)  # chunk 0: query blocks see 1..16 key blocks, 8.5 on average
    assert (a[0] >= 2 / v0).all()  # never below the sink and diagonal blocks
    assert a[-1, 0] < a[1, 0]  # layer 0 gets sparser with position


def test_sparse_seconds_scale_only_the_past() -> None:
    spec = resolve_model_spec("smollm2-135m")
    compute = FittedCompute("m", fixed_s=1e-3, per_token_s=1e-5, per_attn_s=1e-8)
    req = Request(8192, 64, 1024)
    dense = sparse_compute_grid_s(spec, req, compute, np.ones((8, 30)))
    half = sparse_compute_grid_s(spec, req, compute, np.full((8, 30), 0.5))
    zero = sparse_compute_grid_s(spec, req, compute, np.zeros((8, 30)))
    for c in range(8):
        assert dense[c, 0] == pytest.approx(compute.layer_s(spec, 1024, c * 1024))
        assert zero[c, 0] == pytest.approx(compute.layer_s(spec, 1024, 0))
        assert half[c, 0] == pytest.approx((dense[c, 0] + zero[c, 0]) / 2)
