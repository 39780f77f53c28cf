"""Storage profiles: bandwidth by request size and queue depth, batches, tiers, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.core.errors import UserError
from sparkv.cost_models.storage import StorageProfile, analytic_storage, builtin_storage_names, load_storage
from sparkv.cost_models.tiers import TIERS, storage_tier


def _table() -> StorageProfile:
    return StorageProfile("t", "measured", "test", (1024, 4096), (1, 4), ((10e6, 30e6), (40e6, 120e6)), 1e-4, 1e8)


def test_grid_points_are_exact_and_between_is_log_interpolated() -> None:
    p = _table()
    assert p.bandwidth_bps(1024, 1) == pytest.approx(10e6)
    assert p.bandwidth_bps(4096, 4) == pytest.approx(120e6)
    assert p.bandwidth_bps(2048, 1) == pytest.approx((10e6 * 40e6) ** 0.5)
    assert p.bandwidth_bps(8192, 16) == pytest.approx(120e6)  # flat beyond the grid
    assert p.bandwidth_bps(512, 1) == pytest.approx(5e6)  # below the grid: the same request rate


def test_batch_uses_the_depth_the_batch_can_fill() -> None:
    p = _table()
    assert p.batch_s([], 4) == 0.0
    assert p.batch_s([4096], 4) == pytest.approx(4096 / 40e6)  # one request runs at depth 1
    many = [4096] * 20
    assert p.batch_s(many, 4) == pytest.approx(20 * 4096 / 120e6)
    assert p.batch_s(many, 4) < p.batch_s(many, 1)


def test_analytic_form_saturates_at_peak() -> None:
    p = analytic_storage("a", "x", peak_bps=1e9, latency_s=1e-4, parallel=8, write_bps=1e8, sources={})
    assert p.bandwidth_bps(1 << 20, 16) == pytest.approx(1e9)
    assert p.bandwidth_bps(4096, 1) == pytest.approx(4096 / (1e-4 + 4096 / 1e9))


def test_builtins_load_and_state_sources() -> None:
    names = builtin_storage_names()
    assert {"jetson-orin-nvme", "jetson-orin-emmc", "phone-ufs31"} <= set(names)
    for name in names:
        p = load_storage(name)
        assert p.sources, name
    assert load_storage("jetson-orin-emmc").bandwidth_bps(1 << 20, 16) < load_storage("jetson-orin-nvme").bandwidth_bps(
        1 << 20, 16
    )


def test_profile_round_trips(tmp_path: Path) -> None:
    p = _table()
    assert load_storage(str(p.save(tmp_path / "p.json"))) == p


def test_bad_profiles_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_storage(str(tmp_path / "missing.json"))
    bad = tmp_path / "trunc.json"
    bad.write_text(json.dumps(_table().to_dict())[:40])
    with pytest.raises(UserError, match="malformed"):
        load_storage(str(bad))
    with pytest.raises(UserError, match="unknown storage profile"):
        load_storage("no-such-disk")


def test_tiers_carry_sources_and_energy() -> None:
    edram = TIERS["kelle-edram"]
    assert edram.energy_j(1_000_000, 0, 0.0) == pytest.approx(84.8e-6)
    assert all(t.sources for t in TIERS.values())
    assert storage_tier(_table()).read_bps == pytest.approx(120e6)
