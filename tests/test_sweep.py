"""Sweeps: spec parsing and expansion, trace folders and globs, rows, stalls, backends, the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from sparkv import cli
from sparkv.analysis.backends import LocalBackend, SerialBackend, make_backend
from sparkv.analysis.sweep import SweepSpec, expand, load_spec, run_sweep
from sparkv.analysis.tables import read_csv
from sparkv.core.errors import UserError

DEVICE = "analytic-cpu-2core"
BASE = {"device": DEVICE, "context_tokens": 1024, "chunk_tokens": 512}


def test_grid_is_cartesian_with_policy_innermost() -> None:
    spec = SweepSpec({"trace": ["const:20mbps"], "bandwidth_scale": [0.5, 1.0], "rtt_ms": [10, 50],
                      "policy": ["local", "stream"]}, base=BASE)  # fmt: skip
    points = expand(spec)
    assert len(points) == 8
    assert [p["policy"] for p in points[:2]] == ["local", "stream"]
    assert points[0]["scenario"]["link"]["rtt_s"] == pytest.approx(0.01)
    assert {p["scenario"]["link"]["bandwidth_scale"] for p in points} == {0.5, 1.0}
    assert all(p["scenario"]["device"] == DEVICE for p in points)


def test_list_mode_zips_and_broadcasts() -> None:
    spec = SweepSpec({"bandwidth_scale": [0.5, 1.0, 2.0], "context_tokens": [1024, 2048, 1024],
                      "policy": ["cake"]}, mode="list", base=BASE)  # fmt: skip
    points = expand(spec)
    assert [(p["scenario"]["link"]["bandwidth_scale"], p["scenario"]["context_tokens"]) for p in points] == [
        (0.5, 1024), (1.0, 2048), (2.0, 1024)]  # fmt: skip
    with pytest.raises(UserError, match="one length"):
        expand(SweepSpec({"bandwidth_scale": [1.0, 2.0], "seed": [1, 2, 3]}, mode="list", base=BASE))


def test_bad_names_fail_before_running() -> None:
    with pytest.raises(UserError, match="unknown sweep axis"):
        SweepSpec({"bandwith": [1]})
    with pytest.raises(UserError, match="unknown policy"):
        expand(SweepSpec({"policy": ["nope"]}, base=BASE))
    with pytest.raises(UserError, match="device profile"):
        expand(SweepSpec({"device": ["nope"], "policy": ["local"]}))
    with pytest.raises(UserError, match="bandwidth_scale"):
        expand(SweepSpec({"bandwidth_scale": [-1.0], "policy": ["local"]}, base=BASE))




def test_spec_files_json_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('mode = "grid"\n[base]\ndevice = "x"\n[axes]\npolicy = ["local"]\nbandwidth_scale = [1, 2]\n')
    spec = load_spec(toml)
    assert spec.base == {"device": "x"} and spec.axes["bandwidth_scale"] == [1, 2]
    js = tmp_path / "s.json"
    js.write_text(json.dumps(spec.to_dict()))
    assert load_spec(js) == spec
    js.write_text('{"axis": {}}')
    with pytest.raises(UserError, match="unknown sweep spec keys"):
        load_spec(js)


def test_rows_record_config_outcome_and_stalls() -> None:
    # 1 kB/s for 2 s then nothing at all for 10 min: streaming stalls, local compute does not.
    spec = SweepSpec({"trace": ["const:20mbps", "steps:2s@1KB/s,600s@0bps"], "policy": ["local", "stream"]},
                     base=BASE)  # fmt: skip
    rows = run_sweep(expand(spec))
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    ok = rows[0]
    assert ok["status"] == "ok" and ok["policy"] == "local" and ok["trace_name"] == "const:20mbps"
    assert ok["trace_mean_mbps"] == pytest.approx(20.0)
    assert ok["energy_j"] == pytest.approx(sum(v for k, v in ok.items() if k.startswith("energy_") and k != "energy_j"))
    assert ok["cells_computed"] > 0 and ok["mb_streamed"] == 0
    stalled = rows[3]
    assert stalled["policy"] == "stream" and stalled["status"] == "stalled"
    assert "did not reach the first token" in stalled["error"] and math.isnan(stalled["ttft_s"])
    assert rows[2]["status"] == "ok"  # local on the dead link still finishes


def test_process_pool_matches_serial() -> None:
    points = expand(SweepSpec({"trace": ["const:20mbps", "const:5mbps"], "bandwidth_scale": [0.5, 1.0],
                               "policy": ["cake", "stream"]}, base=BASE))  # fmt: skip
    serial = run_sweep(points, SerialBackend())
    backend = LocalBackend(2)
    try:
        pooled = run_sweep(points, backend)
    finally:
        backend.close()
    assert [r["ttft_s"] for r in pooled] == [r["ttft_s"] for r in serial]


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """`sparkv` with only the sweep command registered (the others import torch, seconds)."""
    monkeypatch.setattr(cli, "_COMMANDS", ("sweep",))
    return cli.main


@pytest.mark.slow  # starting a local Ray cluster takes ~10 s
def test_ray_backend_or_clear_error() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"sparkv\[ray\]"):
            make_backend("ray", 1)
        pytest.skip("ray is not installed (optional extra 'ray')")
    points = expand(SweepSpec({"trace": ["const:20mbps"], "policy": ["local", "cake"]}, base=BASE))
    backend = make_backend("ray", 1)
    try:
        rows = run_sweep(points, backend)
    finally:
        backend.close()
    assert [r["ttft_s"] for r in rows] == [r["ttft_s"] for r in run_sweep(points)]


def test_cli_writes_table_and_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int]
) -> None:
    out = tmp_path / "sw"
    code = main(["sweep", "--trace", "const:20mbps", "--trace", "steps:1s@5mbps,1s@30mbps", "--bandwidth-scale",
                 "0.5,1", "--context-tokens", "1024", "--device", DEVICE, "--policy", "local,cake", "--jobs", "1",
                 "--keep-results", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert {"trace_name", "bandwidth_scale", "rtt_s", "policy_config", "energy_radio_j"} <= set(rows[0])
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["runs"] == 8 and meta["spec"]["axes"]["policy"] == ["local", "cake"]
    assert "python" in meta["versions"] and meta["machine"]["cpus"]
    assert len(list((out / "runs").glob("*/result.json"))) == 8  # one folder per run, named by its job key
    assert {f.parent.name for f in (out / "runs").glob("*/result.json")} == {r["job_key"] for r in rows}
    assert "runs/s" in capsys.readouterr().out


def test_cli_user_error_is_one_line(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int]) -> None:
    assert main(["sweep", "--trace", "nowhere.txt", "--device", DEVICE]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparkv sweep: error:") and "\n" not in err
