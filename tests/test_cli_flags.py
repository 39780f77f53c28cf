"""Flags agree across commands: old names still work with a one-line note; --config reads TOML and JSON;
--ray-address implies ray (sweep and tune); --dry-run counts the traces a folder or glob expands to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.analysis.backends import choose_backend, make_backend
from sparkv.cli import build_parser, main
from sparkv.core.errors import UserError


@pytest.mark.parametrize(
    ("argv", "dest", "value", "new"),
    [
        (["validate", "--traces", "lte:seed=1"], "traces", ["lte:seed=1"], "--trace"),
        (["run", "--device-torch", "cuda"], "torch_device", "cuda", "--torch-device"),
        (["profile", "--device", "cuda"], "torch_device", "cuda", "--torch-device"),
        (["bench", "sim", "--max-seconds", "3"], "max_seconds", 3.0, "--max-wall-s"),
    ],
)
def test_old_flag_names_work_and_say_so(argv: list[str], dest: str, value: object, new: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "deprecated" in err and new in err


def test_new_flag_names_are_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["validate", "--trace", "a", "--trace", "b"]).traces == ["a", "b"]
    assert build_parser().parse_args(["profile", "--torch-device", "cuda"]).torch_device == "cuda"
    assert capsys.readouterr().err == ""


def test_radio_help_lists_5g() -> None:
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["simulate"]._actions  # type: ignore[union-attr]
                  if "--radio" in a.option_strings)  # fmt: skip
    assert "5g" in str(action.help)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_reads_toml_and_json(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"scenario{suffix}"
    fields = {"context_tokens": 1024, "chunk_tokens": 256, "trace": "const:20mbps,600s", "rtt_ms": 40}
    if suffix == ".toml":
        path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items()) + "\n")
    else:
        path.write_text(json.dumps({"scenario": fields}))
    assert main(["simulate", "--config", str(path), "--policy", "local", "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "sim-local.json").read_text())["config"]["scenario"]
    assert saved["context_tokens"] == 1024 and saved["link"]["rtt_s"] == pytest.approx(0.04)


def test_ray_address_implies_ray_and_refuses_local(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--ray-address", "auto", "--dry-run", "--policy", "local"]) == 0
    assert "backend ray at auto" in capsys.readouterr().out
    assert main(["sweep", "--address", "auto", "--dry-run", "--policy", "local"]) == 0  # the same flag
    assert "backend ray at auto" in capsys.readouterr().out
    assert main(["sweep", "--ray-address", "auto", "--backend", "local", "--dry-run"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    # tune: refused before any work, never run locally instead
    assert main(["tune", "--trace", "const:20mbps", "--ray-address", "auto", "--backend", "local"]) == 2
    assert "--backend ray" in capsys.readouterr().err
    with pytest.raises(UserError, match="ray backend"):
        make_backend("local", 2, address="auto")
    assert choose_backend(None, "auto") == "ray" and choose_backend(None, None) == "local"


def test_dry_run_counts_the_traces_a_folder_or_glob_expands_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        (tmp_path / f"t{i}.csv").write_text("time_s,mbps\n0,5\n1,6\n")
    assert main(["sweep", "--trace", str(tmp_path), "--policy", "local,stream", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 runs" in out and "trace x3" in out and "policy x2" in out
    (tmp_path / "README.md").write_text("about these traces\n")
    (tmp_path / "t0.up").write_text("0\n")  # a mahimahi uplink half is read beside its downlink twin only
    (tmp_path / "t0.down").write_text("0\n")
    (tmp_path / "up-only.up").write_text("0\n")
    assert main(["sweep", "--trace", str(tmp_path / "*"), "--policy", "local", "--dry-run"]) == 0
    assert "5 runs" in capsys.readouterr().out  # t0..t2.csv, t0.down, up-only.up: not README.md, not t0.up


def test_a_measured_profile_says_once_per_machine_which_machine_it_describes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPARKV_CACHE", str(tmp_path))
    small = ["simulate", "--trace", "const:20mbps,600s", "--context-tokens", "512", "--chunk-tokens", "256",
             "--policy", "local"]  # fmt: skip
    assert main([*small, "--device", "cpu-smollm2"]) == 0
    first = capsys.readouterr().out
    assert "device profile cpu-smollm2 was measured on" in first and "sparkv profile" in first
    assert main([*small, "--device", "cpu-smollm2"]) == 0
    assert "was measured on" not in capsys.readouterr().out  # once per machine
    assert main([*small, "--device", "analytic-cpu-2core"]) == 0
    assert "was measured on" not in capsys.readouterr().out  # an analytic profile describes no machine


def test_real_run_flags_reach_the_api() -> None:
    args = build_parser().parse_args(["run", "--keep-partial", "--background-load", "1", "--no-probe"])
    assert args.keep_partial is True and args.background_load == 1 and args.probe is False
    plain = build_parser().parse_args(["run"])
    assert plain.keep_partial is False and plain.background_load == 0 and plain.probe is True
