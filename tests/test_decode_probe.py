"""Decode validation under a drifting machine: compute probes scale the simulated compute, disagreeing probes
re-measure a run, and the probes, factors and attempts reach the result files. Probe values are injected:
nothing here asserts on wall-clock time."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sparkv.analysis.decode_probe import Bracket, SpeedScale, probed_run
from sparkv.cli import main
from sparkv.core.decode import DecodeScenario, DecodeSummary
from sparkv.cost_models.smartssd import HostScoring
from sparkv.policies.decode import make_decode_policy
from sparkv.sim.decode import build_decode_world, simulate_decode
from sparkv.sim.decode_storage import run_storage_decode_sim

SCENARIO = DecodeScenario(context_tokens=2048, steps=6, select_tokens=128)
TINY = ["--hf-model", "tiny", "--context-tokens", "512", "--select-tokens", "32", "--budget", "0.4"]


def _steps(result_decode: dict | None) -> list[float]:
    return [s.step_s for s in DecodeSummary.from_dict(result_decode or {}).steps]


def test_half_speed_probe_doubles_the_simulated_compute() -> None:
    """A machine probed at 0.5x its calibration speed (factor 2): every compute cost doubles, so a policy that
    reads nothing predicts every step at twice the time."""
    world = build_decode_world(SCENARIO)
    scale = SpeedScale(Bracket(0.010, 0.010, 0.05), Bracket(0.020, 0.020, 0.05), attempts=1)
    assert scale.factor == pytest.approx(2.0)
    slow = build_decode_world(SCENARIO, compute=world.compute.scaled(scale.factor))
    for name in ("full-kv", "streaming"):
        base = _steps(simulate_decode(world, make_decode_policy(name)).decode)
        scaled = _steps(simulate_decode(slow, make_decode_policy(name)).decode)
        assert scaled == pytest.approx([2 * t for t in base], rel=1e-3)  # an append's disk write is not scaled
    assert "scaled x2.0000" in slow.compute.source


def test_scaled_host_kernel_and_refused_factors() -> None:
    host = HostScoring(hot_fixed_s=1e-3, cpu_fixed_s=2e-4, per_token_s=5e-7)
    double = host.scaled(2.0)
    assert (double.hot_s(100), double.cpu_s(100)) == pytest.approx((2 * host.hot_s(100), 2 * host.cpu_s(100)))
    world = build_decode_world(SCENARIO)
    fast = run_storage_decode_sim(world, make_decode_policy("hillinfer"), host=host)[0]
    slow = run_storage_decode_sim(world.__class__(**{**world.__dict__, "compute": world.compute.scaled(2.0)}),
                                  make_decode_policy("hillinfer"), host=double)[0]  # fmt: skip
    # the drive's modelled time and the reads are not this CPU's: the step grows, by less than 2x
    assert all(t < s < 2 * t + 1e-12 for t, s in zip(_steps(fast.decode), _steps(slow.decode), strict=True))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="factor"):
            world.compute.scaled(bad)
        with pytest.raises(ValueError, match="factor"):
            host.scaled(bad)


def _probe(values: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def test_disagreeing_probes_measure_again() -> None:
    runs: list[int] = []
    kept = probed_run(lambda: runs.append(len(runs)) or len(runs), _probe([1.0, 1.5, 1.0, 1.02]), 0.05, 3)
    assert len(runs) == 2 and kept.value == 2 and len(kept.attempts) == 2
    assert not kept.attempts[0].steady and kept.bracket.steady
    assert kept.bracket.seconds == pytest.approx((1.0 * 1.02) ** 0.5)


def test_attempts_are_bounded_and_the_last_is_kept() -> None:
    runs: list[int] = []
    kept = probed_run(lambda: runs.append(1) or len(runs), _probe([1.0, 2.0] * 3), 0.05, 3)
    assert len(runs) == 3 and kept.value == 3 and not kept.bracket.steady
    assert kept.to_dict()["attempts"] == 3 and kept.bracket.change == pytest.approx(1.0)
    with pytest.raises(ValueError, match="attempts"):
        probed_run(lambda: 0, _probe([1.0, 1.0]), 0.05, 0)


def test_validate_scales_remeasures_and_records_the_probes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected probes: calibration 10 / 10 ms, the first measured run 10 / 20 ms (disagree: measured again),
    the second 20 / 20 ms: factor 2, two attempts, all in decode-validation.json and the Results."""
    import sparkv.commands.decode_real as decode_real

    made: list[str] = []

    def fake_probe(setup: object, shape: object, bits: int) -> Callable[[], float]:
        made.append(shape.scoring)  # type: ignore[attr-defined]
        return _probe([0.010, 0.010, 0.010, 0.020, 0.020, 0.020])

    monkeypatch.setattr(decode_real, "decode_probe", fake_probe)
    out = tmp_path / "out"
    code = main(["decode", "--validate", *TINY, "--steps", "4", "--calib-steps", "3", "--policy", "full-reload",
                 "--policy", "kvswap", "--calibrate", "per-policy", "--kv-dir", str(tmp_path / "kv"),
                 "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and made == ["none", "predicted"]
    assert "simulated compute x2.000" in text and "calibration 10.00 / 10.00 ms" in text and "attempt 2" in text
    rows = {r["policy"]: r for r in json.loads((out / "decode-validation.json").read_text())}
    for name in ("full-reload", "kvswap"):
        row = rows[name]
        assert row["speed_factor"] == pytest.approx(2.0) and row["probe_attempts"] == 2 and row["probe_steady"]
        assert row["calib_probe_ms"] == pytest.approx(10.0) and row["run_probe_ms"] == pytest.approx(20.0)
        speed = row["speed"]
        assert [b["steady"] for b in speed["attempt_brackets"]] == [False, True]
        assert speed["shape"]["attended_groups"] > 0 and speed["tolerance"] == 0.05
        assert {"err_median_unscaled", "err_p90_unscaled", "real_spread", "sim_spread"} <= row.keys()
        real = json.loads((out / f"decode-real-{name}.json").read_text())
        sim = json.loads((out / f"decode-sim-{name}.json").read_text())
        assert real["extra"]["decode_speed"]["factor"] == pytest.approx(2.0)
        assert "scaled x2.0000" in sim["config"]["decode_compute"]["source"]
        assert row["bytes_match"] and row["hits_match"]  # scaling time changes no decision


def test_validate_without_probes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["decode", "--validate", *TINY, "--steps", "3", "--calib-steps", "2", "--policy", "kvswap",
                 "--no-probe-speed", "--kv-dir", str(tmp_path / "kv"), "--out", str(out)])  # fmt: skip
    assert code == 0 and "compute probe" not in capsys.readouterr().out
    row = json.loads((out / "decode-validation.json").read_text())[0]
    assert "speed_factor" not in row and "scaled" not in json.loads(
        (out / "decode-sim-kvswap.json").read_text())["config"]["decode_compute"]["source"]


def test_the_real_probe_times_a_policys_work_and_leaves_the_cache_alone(tmp_path: Path) -> None:
    import torch

    from sparkv.executor.model.decode_run import prepare_real_decode, run_real_decode
    from sparkv.executor.model.decode_speed import DecodeSpeedProbe, ProbeShape, shape_of_run
    from sparkv.executor.model.models import tiny_model

    sc = DecodeScenario(context_tokens=192, steps=2, select_tokens=24, budget_fraction=0.25, rank=8)
    loaded = tiny_model("llama", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2)
    gen = torch.Generator().manual_seed(0)
    setup = prepare_real_decode(loaded, torch.randint(0, 256, (192,), generator=gen),
                                torch.randint(0, 256, (96,), generator=gen), sc, tmp_path)  # fmt: skip
    try:
        _, _, engine, _ = run_real_decode(setup, make_decode_policy("full-reload"), log=True)
        shape = shape_of_run(engine, "none", layers=8, sweeps=3)
        assert shape.attended_groups == 192 // sc.group_tokens and shape.layers == 3  # every group; capped layers
        tails = [t.clone() for t in setup.cache.tail_k]
        for scoring in ("none", "predicted", "exact", "host-kernel"):
            probe = DecodeSpeedProbe(loaded, setup.files.layout, setup.cache, sc.context_tokens, setup.first_token,
                                     ProbeShape(8, scoring, scored_tokens=64, layers=2, sweeps=3))  # fmt: skip
            sample = probe()
            assert sample.seconds > 0 and len(sample.sweeps_s) == 3
            assert [t.shape for t in probe.decoder.tail_k] == [t.shape for t in tails]  # back after each sweep
        assert all(torch.equal(a, b) for a, b in zip(setup.cache.tail_k, tails, strict=True))
    finally:
        setup.files.close()
    with pytest.raises(ValueError, match="scoring"):
        ProbeShape(1, "fast")
