"""Decode studies: regrouping a per-token trace, top-M recall, the group-size sweep and the what-if table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparkv.analysis.decode_quality import topm_recall
from sparkv.cli import main
from sparkv.core.errors import UserError
from sparkv.traces.scores import ScoreTrace, regroup, synthetic_scores


def test_regroup_takes_the_max_of_predicted_and_the_sum_of_exact() -> None:
    tokens = synthetic_scores("synthetic:seed=2", context_tokens=30, group_tokens=1, num_layers=2, steps=5)
    grouped = regroup(tokens, 4)
    assert grouped.group_tokens == 4 and grouped.full_groups(2) == 8
    p1, e1 = tokens.get("predicted", 2, 1), tokens.get("exact", 2, 1)
    assert grouped.get("predicted", 2, 1)[3] == pytest.approx(p1[12:16].max())
    assert grouped.get("exact", 2, 1)[3] == pytest.approx(e1[12:16].sum())
    with pytest.raises(UserError, match="per-token"):
        regroup(grouped, 2)


def test_recall_is_one_when_prediction_is_exact_and_lower_with_noise() -> None:
    noisy = synthetic_scores("synthetic:seed=0,pred_sigma=3", 256, 4, 2, 3)
    assert noisy.exact is not None
    perfect = ScoreTrace(256, 4, 2, 3, noisy.exact.copy(), noisy.exact, "test")
    assert topm_recall(perfect, 8, 1)["recall_mean"] == pytest.approx(1.0)
    low = topm_recall(noisy, 8, 1)
    assert 0.0 < low["recall_mean"] < 1.0 and low["mass_ratio_mean"] <= 1.0 + 1e-6
    assert len(low["recall_by_layer"]) == 2


def test_sweep_g_names_a_best_group_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = synthetic_scores("synthetic:seed=1", 1024, 1, 30, 4).save(tmp_path / "tokens.npz")
    code = main(["decode", "--context-tokens", "1024", "--steps", "4", "--scores", str(path), "--sweep-g", "1,4,8",
                 "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "best G on this disk:" in out
    assert (tmp_path / "decode-sweep-g.json").is_file()
    assert not np.isnan(float(out.split("best G on this disk: ")[1].split()[0]))


def test_what_if_prints_tokens_per_second_for_both_disks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--what-if", "--context-tokens", "4096", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "NVMe" in out and "eMMC" in out and "kvswap tok/s" in out
