"""`sparkv decode --policy aerp|h2o`: simulated and real (tiny model) per-head decode with the modelled energy
ledger, --validate's two-world comparison, and bad budgets as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.cli import main


def test_simulated_aerp_and_h2o_print_runs_and_the_energy_ledger(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decode", "--policy", "aerp", "--policy", "h2o", "--context-tokens", "600", "--steps", "3",
                 "--head-budget", "128", "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "never saves memory" in out  # SmolLM2: x (576) is wider than K+V of its 3 KV heads (384)
    assert "eDRAM+2DRP" in out and "modelled" in out and "synthetic" in out
    data = json.loads((tmp_path / "decode-kelle.json").read_text())
    assert {r["policy"] for r in data["rows"]} == {"aerp", "h2o"}
    kelle = next(e for e in data["energy"]["rows"] if e["policy"] == "aerp" and e["config"] == "eDRAM+2DRP")
    assert len(data["energy"]["paper_workloads"]) == 4 and data["energy"]["geomean_ratio"] > 1.0
    assert kelle["modelled"] and kelle["vs"] > 1.0  # less energy per token than the full cache on SRAM
    saved = json.loads((tmp_path / "decode-sim-aerp-n128.json").read_text())
    assert saved["config"]["policy"]["budget_tokens"] == 128


def test_validate_on_a_tiny_model_matches_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decode", "--validate", "--hf-model", "tiny", "--policy", "aerp", "--policy", "h2o",
                 "--context-tokens", "96", "--steps", "6", "--calib-steps", "4", "--head-budget", "32",
                 "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "bytes equal" in out
    rows = json.loads((tmp_path / "decode-kelle.json").read_text())["validation"]
    assert [r["policy"] for r in rows] == ["aerp", "h2o"] and all(r["bytes_match"] for r in rows)


def test_a_budget_too_small_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--policy", "aerp", "--steps", "2", "--head-budget", "8"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_real_per_head_runs_keep_their_prefill_in_the_kv_dir(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["decode", "--real", "--hf-model", "tiny", "--policy", "h2o", "--context-tokens", "64", "--steps", "3",
            "--head-budget", "24", "--kv-dir", str(tmp_path / "kv")]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "kv" / "kelle-prefill.pt").is_file()
    assert f"saved to {tmp_path / 'kv'}" in capsys.readouterr().out
    assert main(argv) == 0
    assert f"prefill read from {tmp_path / 'kv'}" in capsys.readouterr().out
