"""`sparkv profile --quick` on a tiny random model writes a valid profile (seconds, not minutes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sparkv.cli import main
from sparkv.cost_models.compute import FittedCompute, TableCompute
from sparkv.cost_models.profiles import load_profile

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sparkv.executor.model.prefill") is None, reason="the executor's prefill is not built"
)


def test_quick_profile_writes_a_valid_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "quick.json"
    assert main(["profile", "--quick", "--quiet", "--out", str(out), "--name", "quick-test"]) == 0
    def no_nan(name: str) -> None:
        raise AssertionError(f"profile JSON holds {name}")

    json.loads(out.read_text(), parse_constant=no_nan)  # strict JSON: no NaN / Infinity
    profile = load_profile(str(out))
    assert profile.name == "quick-test" and profile.kind == "measured" and profile.model == "tiny-llama"
    assert isinstance(profile.compute, FittedCompute | TableCompute)  # which one the measurements chose
    assert profile.threads >= 1 and "torch" in profile.versions and profile.date
    assert set(profile.install_by_codec) == {"fp16", "int8"}
    assert all(v["s_per_byte"] >= 0 for v in profile.install_by_codec.values())
    assert {"heldout_median", "heldout_p90", "train_median"} <= set(profile.fit_error)
    err = profile.fit_error
    # both held-out sets are reported; a set whose points were all measured while the machine was busy says n=0
    assert {"heldout_grid_n", "heldout_offgrid_n"} <= set(err)
    assert err["heldout_grid_n"] + err["heldout_offgrid_n"] == err["heldout_n"]
    for key in ("heldout_grid", "heldout_offgrid"):
        assert (f"{key}_median" in err) == (err[f"{key}_n"] > 0)
    samples = profile.measurements["compute_samples"]
    assert len(samples["rows"]) >= 6 and samples["columns"][:4] == ["n", "past", "layers", "seconds"]
    assert profile.measurements["query"]["first_token_s"] > 0
    assert "held-out error" in capsys.readouterr().out


def test_update_needs_link() -> None:
    assert main(["profile", "--update", "x.json"]) == 2


@pytest.mark.parametrize("sizes", ["a,b", "0,64", "64,99999"])
def test_bad_chunk_sizes_are_one_line_errors(sizes: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--quick", "--chunk-sizes", sizes]) == 2
    assert "chunk" in capsys.readouterr().err
