"""The device speed probe: its factor against the profile, and what a run's two probes say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.core.costs import CostTable
from sparkv.executor.model.models import load_model, tiny_model_dir
from sparkv.executor.model.prefill import LayerwisePrefill
from sparkv.executor.model.speed import DeviceSpeed, RunSpeed, availability_spec, probe_speed
from sparkv.traces import get_trace


def _speed(factor: float) -> DeviceSpeed:
    return DeviceSpeed(factor, factor * 0.1, 0.1, 2, 64, 3)


def test_run_speed_is_the_geometric_mean_and_flags_a_change() -> None:
    run = RunSpeed(_speed(0.8), _speed(1.0))
    assert run.factor == pytest.approx(0.8**0.5)
    assert not run.steady(0.08) and run.steady(0.30)
    assert RunSpeed(_speed(1.0), _speed(1.05)).steady(0.08)


def test_availability_spec_is_the_inverse_speed_as_a_trace() -> None:
    trace = get_trace(availability_spec(1.25))
    assert trace.rate_at(0.0) == pytest.approx(0.8) and trace.duration_s == 3600.0
    with pytest.raises(ValueError, match="factor"):
        availability_spec(0.0)


def test_probe_compares_measured_compute_with_the_cost_table(tmp_path: Path) -> None:
    loaded = load_model(str(tiny_model_dir(tmp_path / "tiny", num_layers=3)))
    ctx, query = torch.arange(128) % 50, torch.arange(4)
    spec = loaded.spec
    # a cost table that predicts 1 ms per cell of chunk 0 and 2 ms per cell of chunk 1
    costs = CostTable(
        compute_cell_s=np.repeat([[1e-3], [2e-3]], spec.num_layers, axis=1), compute_launch_s=0.0,
        cell_bytes=np.zeros((2, spec.num_layers), dtype=np.int64), transfer_fixed_s=0.0, install_s_per_byte=0.0,
        query_layer_s=np.zeros(spec.num_layers), first_token_s=0.0, bandwidth_prior_bps=1.0,
    )
    prefill = LayerwisePrefill(loaded, ctx, query, 64, max_new_tokens=1)
    speed = probe_speed(prefill, costs, sweeps=2)
    assert speed.chunk == 1  # the middle of 2 chunks, over zeros for chunk 0
    assert all(prefill.present[layer][0] for layer in range(spec.num_layers))
    assert speed.predicted_s == pytest.approx(2e-3 * spec.num_layers)  # chunk 1's cells
    assert speed.factor == pytest.approx(speed.measured_s / speed.predicted_s)
    assert speed.measured_s > 0 and speed.layers == spec.num_layers and speed.chunk_tokens == 64
    assert probe_speed(prefill, costs, sweeps=1).predicted_s == speed.predicted_s  # the prefill can be reused
    assert probe_speed(prefill, costs, sweeps=1, chunk=0).chunk == 0
    with pytest.raises(ValueError, match="sweeps"):
        probe_speed(prefill, costs, sweeps=0)
    with pytest.raises(ValueError, match="chunk"):
        probe_speed(prefill, costs, chunk=2)
