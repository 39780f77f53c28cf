"""Score traces: the synthetic model's shape, recorded traces on disk, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparkv.core.errors import UserError
from sparkv.traces.scores import get_score_trace, load_score_trace, synthetic_scores


def test_synthetic_trace_covers_the_groups_of_each_step() -> None:
    tr = synthetic_scores("synthetic:seed=3", context_tokens=30, group_tokens=4, num_layers=2, steps=6)
    assert tr.full_groups(0) == 7 and tr.full_groups(2) == 8
    assert tr.get("predicted", 0, 1).shape == (7,)
    assert tr.get("exact", 5, 0).shape == (8,)
    assert np.isnan(tr.predicted[0, 0, 7])  # type: ignore[index]
    for s in range(6):
        assert tr.get("exact", s, 0).sum() == pytest.approx(1.0, rel=1e-5)  # attention mass
    again = synthetic_scores("synthetic:seed=3", 30, 4, 2, 6)
    assert np.array_equal(tr.get("predicted", 3, 1), again.get("predicted", 3, 1))


def test_recorded_trace_round_trips_and_is_checked(tmp_path: Path) -> None:
    tr = synthetic_scores("synthetic:seed=1", 64, 4, 3, 5)
    path = tr.save(tmp_path / "s.npz")
    back = get_score_trace(str(path), 64, 4, 3, 5)
    assert np.array_equal(back.get("exact", 4, 2), tr.get("exact", 4, 2))
    with pytest.raises(UserError, match="needs"):
        get_score_trace(str(path), 64, 4, 3, 9)


def test_bad_score_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_score_trace(tmp_path / "none.npz")
    path = synthetic_scores("synthetic", 64, 4, 3, 5).save(tmp_path / "s.npz")
    (tmp_path / "t.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="unreadable or truncated"):
        load_score_trace(tmp_path / "t.npz")
    with pytest.raises(UserError, match="bad score spec"):
        synthetic_scores("synthetic:rho=2", 64, 4, 3, 5)
    with pytest.raises(UserError, match="bad score spec"):
        synthetic_scores("synthetic:nope=1", 64, 4, 3, 5)
