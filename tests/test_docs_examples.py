"""The worked examples under docs/examples run, on small settings, and produce what their pages show."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, *argv: str) -> dict[str, Any]:
    out: dict[str, Any] = example(name).main(list(argv))
    return out


def test_what_if_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run("what_if", "--quick", "--out", str(tmp_path))
    table = out["table"]
    assert len(table) == 2 * 2 * 2 * 5 and (table["status"] == "ok").all()  # traces x scales x codecs x policies
    assert (tmp_path / "what-if.csv").is_file() and all(p.stat().st_size > 0 for p in out["figures"])
    median = out["median_ttft"]
    assert (median["oracle"] <= median["stream"]).all()  # the oracle is never slower than streaming everything
    assert "median TTFT (s)" in capsys.readouterr().out


def test_tuning_on_training_traces_and_testing_on_held_out_ones(tmp_path: Path) -> None:
    out = run("tune_heldout", "--quick", "--out", str(tmp_path))
    summary = out["summary"].set_index("set")
    assert set(summary.index) == {"train", "test"}
    assert summary.loc["train", "default_over_tuned"] >= 1.0  # seeded with the defaults: never worse on training
    held = out["held_out"]
    assert held.shape == (1, 2) and out["config"].is_file() and out["figure"].stat().st_size > 0


def test_real_device_validation_on_a_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARKV_CACHE", str(tmp_path / "cache"))
    out = run("validate_real", "--tiny", "--out", str(tmp_path))
    table = out["table"]
    assert len(table) == 2 * 3 and (table["real_ttft_s"] > 0).all() and (table["sim_ttft_s"] > 0).all()
    assert int(table["replay_mismatches"].sum()) == 0
    answers = out["answers"]
    assert list(answers["policy"]) == ["local", "stream", "cake"]
    assert answers["answer"].nunique() == 1  # streamed KV = computed KV: the same answer whichever path


def test_bringing_your_own_trace_and_profile(tmp_path: Path) -> None:
    out = run("own_trace_and_profile", "--out", str(tmp_path))
    assert out["trace"].duration_s == pytest.approx(90.0) and out["trace"].info["column"] == "#1"
    assert set(out["from_arrays"]["trace_name"]) == {"fade"}
    assert out["profile"].is_file() and set(out["on_mine"]["device"]) == {str(out["profile"])}
    # half the compute rate of the phone profile, yet far faster than the 2-core CPU profile at computing
    local = {name: t.set_index("policy").loc["local", "ttft_s"] for name, t in out.items() if name in
             ("from_file", "on_mine")}  # fmt: skip
    assert local["on_mine"] < local["from_file"]
