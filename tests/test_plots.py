"""Standard figures: each is written from sweep rows, a CSV and a Result folder, through the CLI too."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from sparkv import cli
from sparkv.analysis.plots import (
    bandwidth_axis,
    best_policy_grid,
    plot_best_policy,
    plot_ttft_vs_bandwidth,
    quantile,
    standard_figures,
    ttft_values,
)
from sparkv.analysis.sweep import SweepSpec, expand, run_sweep
from sparkv.analysis.tables import write_csv

BASE = {"device": "analytic-cpu-2core", "chunk_tokens": 512}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    spec = SweepSpec({"trace": ["const:20mbps", "steps:2s@5mbps,2s@40mbps", "steps:1s@1KB/s,900s@0bps"],
                      "bandwidth_scale": [0.5, 2.0], "context_tokens": [1024, 2048],
                      "policy": ["local", "stream", "cake"]}, base=BASE)  # fmt: skip
    return run_sweep(expand(spec))


def test_stalls_count_as_never_finishing(rows: list[dict]) -> None:
    stream = [r for r in rows if r["policy"] == "stream"]
    values = ttft_values(stream)
    assert any(math.isinf(v) for v in values)  # the dead trace
    assert quantile([1.0, 2.0, math.inf], 0.5) == 2.0 and quantile([1.0, math.inf, math.inf], 0.5) == math.inf


def test_best_policy_grid_names_the_fastest(rows: list[dict]) -> None:
    xs, ys, cells = best_policy_grid(rows, "bandwidth_scale")
    assert xs == [0.5, 2.0] and ys == [1024, 2048]
    for line in cells:
        for best, median, ratio in line:
            assert best and median > 0 and (math.isnan(ratio) or ratio > 1)


def test_standard_figures_from_csv_and_cli(rows: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    csv_path = write_csv(rows, tmp_path / "results.csv")
    monkeypatch.setattr(cli, "_COMMANDS", ("plot",))
    main: Callable[[list[str]], int] = cli.main
    assert main(["plot", str(csv_path)]) == 0
    pngs = {p.name: p for p in (tmp_path / "figures").glob("*.png")}
    assert set(pngs) == {"ttft_vs_bandwidth.png", "ttft_cdf.png", "energy.png", "best_policy.png"}
    assert all(p.read_bytes()[:8] == PNG and p.stat().st_size > 5000 for p in pngs.values())
    assert main(["plot", str(csv_path), "--policy", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "no rows" in capsys.readouterr().err


def test_single_scale_uses_mean_rate_and_traces(tmp_path: Path) -> None:
    spec = SweepSpec({"trace": ["const:10mbps", "const:40mbps"], "context_tokens": [1024],
                      "policy": ["local", "stream"]}, base=BASE)  # fmt: skip
    rows = run_sweep(expand(spec))
    assert bandwidth_axis(rows) == ("trace_mean_mbps", "trace mean bandwidth (Mbit/s)")
    for fn in (plot_ttft_vs_bandwidth, plot_best_policy):
        assert fn(rows, tmp_path / f"{fn.__name__}.png").read_bytes()[:8] == PNG
    assert standard_figures([{"policy": "x", "status": "error"}], tmp_path) == []


def test_gantt_axis_cuts_only_a_run_far_longer_than_the_rest() -> None:
    from sparkv.analysis.gantt import _x_limit

    assert _x_limit([10.0, 12.0, 20.0]) == pytest.approx(20.4)  # every first token shown
    assert _x_limit([10.0, 12.0, 100.0]) == pytest.approx(30.0)  # the long run is cut at 2.5x the next
    assert _x_limit([5.0]) == pytest.approx(5.1)


def test_energy_is_averaged_over_the_settings_every_policy_finished() -> None:
    from sparkv.analysis.plots import _settings_all_finished

    def row(trace: str, policy: str, ttft: float, status: str = "ok") -> dict[str, object]:
        return {"trace": trace, "context_tokens": 2048, "policy": policy, "ttft_s": ttft, "status": status,
                "energy_j": 1.0}  # fmt: skip

    rows = [row("a", "local", 5.0), row("a", "stream", 9.0), row("b", "local", 5.0),
            row("b", "stream", math.inf, "stalled")]  # fmt: skip
    kept, dropped = _settings_all_finished(rows)
    assert dropped == 1 and {r["trace"] for r in kept} == {"a"} and len(kept) == 2


def test_a_difference_under_one_percent_is_a_tie_not_a_win() -> None:
    from sparkv.analysis.plots import best_policy_grid

    rows = [{"bandwidth_scale": 1.0, "context_tokens": 2048, "policy": p, "ttft_s": t, "status": "ok"}
            for p, t in (("cake", 10.0), ("sparkv", 10.05), ("stream", 20.0))]  # fmt: skip
    _, _, cells = best_policy_grid(rows, "bandwidth_scale")
    best, median, ratio = cells[0][0]
    assert best == "cake = sparkv" and median == 10.0 and ratio == pytest.approx(2.0)
