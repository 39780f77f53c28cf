"""`sparkv decode --policy hillinfer`: simulated, validated against real runs on a tiny random model, and the
study of its targets; every output says the drive is modelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.cli import main
from sparkv.cost_models.storage import load_storage

TINY = ["--hf-model", "tiny", "--context-tokens", "512", "--select-tokens", "32", "--budget", "0.4"]


def test_simulated_hillinfer_beside_kvswap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decode", "--policy", "hillinfer", "--policy", "kvswap", "--context-tokens", "1024", "--steps", "4",
                 "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "top-K hit rate" in out and "modelled" in out
    data = json.loads((tmp_path / "decode-sim-hillinfer.json").read_text())
    assert "modelled" in data["config"]["smartssd"]["label"]
    assert data["config"]["policy"]["host_bps"] > 0 and data["decode"]["policy_stats"]["storage_groups"] > 0


def test_validate_pairs_real_and_simulated_hillinfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = ["--kv-dir", str(tmp_path / "kv"), "--out", str(tmp_path / "out")]
    code = main(["decode", "--validate", *TINY, "--steps", "6", "--calib-steps", "3", "--policy", "hillinfer",
                 "--policy", "full-reload", *folders])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "hillinfer host scoring: kernel" in out
    rows = {r["policy"]: r for r in json.loads((tmp_path / "out" / "decode-validation.json").read_text())}
    assert rows["hillinfer"]["bytes_match"] and rows["hillinfer"]["hits_match"]
    real = json.loads((tmp_path / "out" / "decode-real-hillinfer.json").read_text())
    sim = json.loads((tmp_path / "out" / "decode-sim-hillinfer.json").read_text())
    assert real["config"]["policy"] == sim["config"]["policy"]  # the replay used the real run's settings
    rs, ss = real["decode"]["policy_stats"], sim["decode"]["policy_stats"]
    for key in ("promoted", "demoted", "host_link_bytes", "cpu_groups", "storage_groups", "topk_hits"):
        assert rs[key] == ss[key], key


def test_validate_per_policy_on_a_probed_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """--probe-disk measures the disk first and both worlds use that profile (HillInfer's B_c included);
    --calibrate per-policy fits each policy from its own calibration run, run right before its measured one."""
    import sparkv.profiling.disk as disk

    small = disk.profile_disk
    monkeypatch.setattr(disk, "profile_disk", lambda path, file_bytes, cell_s: small(
        path, file_bytes=8 << 20, cell_s=0.005, sizes=(4096, 16384, 1 << 20), depths=(1, 16)))  # fmt: skip
    out = tmp_path / "out"
    code = main(["decode", "--validate", *TINY, "--steps", "4", "--calib-steps", "3", "--policy", "full-reload",
                 "--policy", "hillinfer", "--calibrate", "per-policy", "--probe-disk", "--kv-dir",
                 str(tmp_path / "kv"), "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "disk probed" in text
    assert text.index("full-reload's calibration run") < text.index("hillinfer host scoring: kernel")
    probed = load_storage(str(out / "disk-probed.json"))
    assert probed.kind == "measured" and "probed" in probed.name
    sim = json.loads((out / "decode-sim-hillinfer.json").read_text())
    real = json.loads((out / "decode-real-hillinfer.json").read_text())
    assert sim["config"]["storage"]["name"] == probed.name
    assert real["config"]["decode_scenario"]["storage"] == str(out / "disk-probed.json")
    assert real["config"]["policy"]["host_bps"] == pytest.approx(probed.bandwidth_bps(16 << 10, 16))
    compute = {r["policy"]: r["config"]["decode_compute"] for r in map(json.loads, (
        (out / f"decode-sim-{p}.json").read_text() for p in ("full-reload", "hillinfer")))}  # fmt: skip
    assert compute["full-reload"] != compute["hillinfer"]  # one fit per policy


def test_hill_study_prints_overlap_split_and_what_if(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decode", "--hill-study", *TINY, "--steps", "3", "--kv-dir", str(tmp_path / "kv"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "top-10 % overlap on real decode queries" in out and "split vs brute force" in out
    study = json.loads((tmp_path / "out" / "hillinfer-study.json").read_text())
    assert 0.0 <= study["overlap"]["overlap_mean"] <= 1.0
    assert {r["x"] for r in study["what_if"]} == {0.5, 1.0, 2.0}
    assert all(r["excess"] >= -1e-9 for r in study["split"])  # nothing beats the brute force
    assert "modelled" in study["smartssd"]["label"]
