"""`sparkv run` and `sparkv validate` end to end on a tiny random model directory with a byte tokenizer:
a real KV server process, the pacing link, the real driver, the simulator's prediction and the replay check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sparkv.cli import main
from sparkv.executor.model.models import tiny_model_dir

COMMON = ["--device", "analytic-cpu-2core", "--context-tokens", "192", "--chunk-tokens", "64",
          "--link", "pacing", "--document", "builtin"]  # fmt: skip


@pytest.fixture()
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPARKV_CACHE", str(tmp_path / "cache"))  # KV store files go here, not to ~/.cache
    return tiny_model_dir(tmp_path / "tiny", num_layers=3, tokenizer=True)


def test_run_prints_every_policy_and_writes_results(model_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["run", "--model", str(model_dir), *COMMON, "--trace", "const:20mbps,600s",
                 "--policy", "local", "--policy", "stream", "--policy", "sparkv", "--max-new-tokens", "3",
                 "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "link: pacing" in text
    assert "reference: " in text and "answer [local] (score" in text and "answer matches" in text  # full answers
    for name in ("local", "stream", "sparkv"):
        result = json.loads((out / f"real-{name}.json").read_text())
        assert result["world"] == "real" and result["ttft_s"] > 0
        assert result["cells_computed"] + result["cells_streamed"] == 3 * 3  # 3 chunks x 3 layers
        assert len(result["extra"]["tokens"]) == 3
        assert result["config"]["scenario"]["context_tokens"] == 192
        assert result["extra"]["energy_sensor"]  # the sensor used, or "none readable"
        if result["extra"]["energy_sensor"] == "none readable":
            assert result["extra"]["energy_measured_j"] is None
    local = json.loads((out / "real-local.json").read_text())
    stream = json.loads((out / "real-stream.json").read_text())
    assert local["bytes_streamed"] == 0 and stream["cells_computed"] == 0
    assert local["extra"]["tokens"] == stream["extra"]["tokens"]  # streamed KV = computed KV


def test_validate_pairs_real_and_simulated_runs(model_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "val"
    code = main(["validate", "--model", str(model_dir), *COMMON, "--trace", "const:20mbps,600s",
                 "--trace", "steps:1s@40mbps,1s@5mbps", "--policy", "local", "--policy", "cake",
                 "--repeats", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert "median |err| %" in capsys.readouterr().out
    meta = json.loads((out / "validation.json").read_text())
    assert meta["config"]["repeats"] == 2 and meta["stats"]["all"]["runs"] == 4
    assert meta["stats"]["all"]["replay_mismatches"] == 0
    rows = (out / "validation.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    real = json.loads(next((out / "runs").glob("*-real-cake.json")).read_text())
    assert len(real["extra"]["repeat_ttft_s"]) == 2
    assert (out / "ttft_scatter.png").stat().st_size > 0
    # the device's speed was probed before each run; the prediction at that speed is kept beside the one at
    # the profile's speed, and local-only (compute alone) scales with it exactly
    speed = real["extra"]["device_speed"]
    assert speed["factor"] > 0 and meta["stats_at_profiled_speed"]["all"]["runs"] == 4
    assert speed["factor"] == pytest.approx((speed["before"]["factor"] * speed["after"]["factor"]) ** 0.5)
    assert 1 <= speed["attempts"] <= 3 and (speed["steady"] or speed["attempts"] == 3)
    # the real run timed its policy and its compute hand-overs; the charged prediction is kept beside
    decision = real["extra"]["decision"]
    assert decision["dispatches"] > 0 and decision["total_ms"] > 0 and decision["handovers"] > 0
    assert 0 < decision["handover_median_ms"] <= decision["handover_max_ms"]
    assert decision["reports"] > 0 and 0 < decision["report_median_ms"] <= decision["report_max_ms"]
    assert meta["stats_decisions_charged"]["all"]["runs"] == 4
    assert meta["decision_ms"]["cake"]["real_decision_ms"] > 0
    sim = json.loads(next((out / "runs").glob("*-sim-cake.json")).read_text())
    assert sim["config"]["scenario"]["availability"].startswith("const:")
    table = list(csv.DictReader((out / "validation.csv").open()))
    for row in (r for r in table if r["policy"] == "local"):
        probed, at_profile = float(row["sim_ttft_s"]), float(row["sim_profile_ttft_s"])
        assert probed == pytest.approx(float(row["device_speed"]) * at_profile, rel=1e-5)


def test_validate_without_probe_predicts_at_the_profiles_speed(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "val"
    assert main(["validate", "--model", str(model_dir), *COMMON, "--trace", "const:20mbps,600s",
                 "--policy", "local", "--no-probe", "--out", str(out)]) == 0  # fmt: skip
    meta = json.loads((out / "validation.json").read_text())
    assert meta["config"]["probe"] is False and meta["stats_at_profiled_speed"] == {}
    real = json.loads(next((out / "runs").glob("*-real-local.json")).read_text())
    assert "device_speed" not in real["extra"]


@pytest.mark.parametrize("flag", [["--repeats", "0"], ["--attempts", "0"], ["--speed-tolerance", "0"]])
def test_validate_rejects_bad_counts(model_dir: Path, capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    assert main(["validate", "--model", str(model_dir), *COMMON, "--trace", "const:20mbps", *flag]) == 2
    assert flag[0] in capsys.readouterr().err
