"""Heterogeneous local compute in the simulator: sparse-attention worlds, and `sparkv evaluate --paper`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparkv.analysis.paper import PaperConfig, paper_jobs, paper_summary, run_paper_job
from sparkv.cli import main
from sparkv.core.attention import parse_attention
from sparkv.core.config import Scenario
from sparkv.cost_models.sparse_cost import builtin_sparsity_profiles
from sparkv.sim import build_world

SPARSE = PaperConfig(traces=[]).attention


def test_a_measured_profile_ships_for_the_paper_attention() -> None:
    assert SPARSE in builtin_sparsity_profiles()
    assert parse_attention(SPARSE).name == SPARSE


def test_sparse_world_costs_less_and_differs_chunk_to_chunk() -> None:
    base = Scenario(device="analytic-cpu-2core", context_tokens=16384, chunk_tokens=1024, trace="const:8mbps,600s")
    dense = build_world(base).costs.compute_cell_s
    sparse = build_world(base.with_(attention=SPARSE)).costs.compute_cell_s
    assert sparse.shape == dense.shape and (sparse <= dense + 1e-12).all() and sparse[-1].sum() < dense[-1].sum()
    ratio = sparse[1:] / dense[1:]  # chunk 0 has no past
    assert np.ptp(ratio[:, 0]) > 0.0 and np.ptp(ratio[-1]) > 0.0  # differs by chunk and by layer
    again = build_world(base.with_(attention=SPARSE)).costs.compute_cell_s
    assert np.array_equal(sparse, again)  # seeded
    other = build_world(base.with_(attention=SPARSE, seed=3)).costs.compute_cell_s
    assert not np.array_equal(sparse, other)


def test_unknown_sparsity_profile_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--trace", "const:8mbps,60s", "--attention", "block-sparse:tau=0.5", "--device",
                 "analytic-cpu-2core", "--context-tokens", "2048", "--policy", "local"])  # fmt: skip
    assert code == 2 and "no measured sparsity profile" in capsys.readouterr().err


def test_paper_job_and_summary() -> None:
    cfg = PaperConfig(traces=["lte:seed=1,mean=8mbps"], devices=["jetson-agx-orin-maxn"], models=["llama-3.2-1b"],
                      context_tokens=[8192], ratios=[1.0])  # fmt: skip
    jobs = paper_jobs(cfg)
    assert len(jobs) == 1
    row = run_paper_job(jobs[0])
    assert row["local_ttft_s"] > row["local_sparse_ttft_s"] > 0  # sparse local compute is faster
    assert row["sparkv_vs_stream"] == pytest.approx(row["stream_ttft_s"] / row["sparkv_ttft_s"])
    assert json.loads(row["scenario"])["attention"] == SPARSE and json.loads(row["scenario"])["chunk_tokens"] == 1024
    summary = paper_summary([row])
    assert [s["device"] for s in summary] == ["jetson-agx-orin-maxn", "all"] and summary[0]["n"] == 1


def test_paper_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--paper", "--trace", "lte:seed=2,mean=10mbps", "--device", "rtx-4060-laptop",
                 "--model", "llama-3.2-1b", "--context-tokens", "4096", "--ratios", "1", "--jobs", "1",
                 "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "x CacheGen (paper 1.8-2.2x)" in text and "rtx-4060-laptop" in text
    report = json.loads((tmp_path / "paper.json").read_text())
    assert report["config"]["codec"] == "int4-t32-s1-rot" and report["summary"][0]["n"] == 1
