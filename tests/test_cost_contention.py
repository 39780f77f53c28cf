"""Receive contention: compute timed alone and while the real KV server streams cells into the cache."""

from __future__ import annotations

import importlib.util

import pytest

from sparkv.cost_models.profiles import load_profile

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sparkv.executor.net.link") is None, reason="executor link not built"
)


def test_probe_times_both_modes_over_a_real_pacing_link() -> None:
    from sparkv.executor.model.models import tiny_model
    from sparkv.profiling.contention import apply_slowdown, measure_receive_slowdown

    loaded = tiny_model(num_layers=4, hidden_size=64)
    ticks: list[str] = []
    slow = measure_receive_slowdown(
        loaded, "pacing", rate_bps=4e6, chunk_tokens=32, past_chunks=2, layers=2, rounds=2, tick=ticks.append
    )
    assert slow.commands == 2 * (4 // 2) and len(ticks) == 2
    assert slow.alone_s > 0 and slow.receiving_s > 0
    assert slow.ratio == pytest.approx(slow.receiving_s / slow.alone_s)
    assert 0 < slow.received_bps <= 1.5 * slow.rate_bps  # cells did arrive, no faster than the link lets them
    profile = apply_slowdown(load_profile("cpu-smollm2"), slow)
    assert profile.link["compute_slowdown"] == slow.ratio
    assert profile.measurements["receive_contention"]["link"] == "pacing"


def test_bad_layer_count_is_refused() -> None:
    from sparkv.executor.model.models import tiny_model
    from sparkv.profiling.contention import measure_receive_slowdown

    with pytest.raises(ValueError):
        measure_receive_slowdown(tiny_model(num_layers=2, hidden_size=32), layers=3)


def test_default_shape_is_a_real_runs_whole_chunk_work() -> None:
    """By default commands and fetches span every layer of a chunk, as the loading policies issue them; a fetch
    of fewer layers than the model has steps through the layers and wraps."""
    from sparkv.executor.model.models import tiny_model
    from sparkv.profiling.contention import measure_receive_slowdown

    loaded = tiny_model(num_layers=4, hidden_size=64)
    whole = measure_receive_slowdown(loaded, "pacing", rate_bps=4e6, chunk_tokens=32, past_chunks=1, rounds=2)
    assert (whole.layers, whole.fetch_layers, whole.commands) == (4, 4, 2)
    part = measure_receive_slowdown(
        loaded, "pacing", rate_bps=4e6, chunk_tokens=32, past_chunks=1, layers=2, rounds=2, fetch_layers=3
    )
    assert (part.layers, part.fetch_layers, part.commands) == (2, 3, 4)
    assert part.received_bps > 0
    with pytest.raises(ValueError, match="fetch_layers"):
        measure_receive_slowdown(loaded, fetch_layers=5)
