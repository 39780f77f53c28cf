"""HillInfer on a tiny random Llama: the real world scores quantised keys from the key plane and reads only the
selected groups' fp16 KV; the simulator replaying its scores with the same settings makes the same splits,
plans, promotions and bytes; the INT8/INT4 kernel and its agreement with fp16 scores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.analysis.decode_hillinfer import fit_host_scoring, topk_overlap
from sparkv.core.decode import DecodeScenario, DecodeSummary
from sparkv.executor.model.decode_run import RealDecodeSetup, prepare_real_decode, run_real_decode, spec_for_disk
from sparkv.executor.model.keyscore import dequantize_keys, quantize_keys, quantize_query, score_records
from sparkv.executor.model.models import tiny_model
from sparkv.policies.decode import make_decode_policy
from sparkv.sim.decode import build_decode_world, simulate_decode

SCENARIO = DecodeScenario(context_tokens=256, steps=9, select_tokens=24, budget_fraction=0.4, rank=8)


@pytest.fixture(scope="module")
def setup() -> RealDecodeSetup:
    loaded = tiny_model("llama", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (SCENARIO.context_tokens,), generator=gen)
    calib = torch.randint(0, 256, (96,), generator=gen)
    folder = Path(__file__).resolve().parent.parent / "out" / "test-decode-hillinfer" / str(os.getpid())
    return prepare_real_decode(loaded, ids, calib, SCENARIO, folder)


def _settings(result: object) -> dict:
    return {k: v for k, v in result.config["policy"].items() if k != "name"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("bits", [8, 4])
def test_sim_replaying_a_real_hillinfer_run_makes_the_same_decisions(setup: RealDecodeSetup, bits: int) -> None:
    real, trace, engine, tokens = run_real_decode(setup, make_decode_policy("hillinfer", bits=bits))
    world = build_decode_world(SCENARIO, scores=trace, spec=spec_for_disk(setup.loaded))
    sim = simulate_decode(world, make_decode_policy("hillinfer", **_settings(real)))
    rs, ss = DecodeSummary.from_dict(real.decode or {}), DecodeSummary.from_dict(sim.decode or {})
    assert [s.bytes_read for s in rs.steps] == [s.bytes_read for s in ss.steps]
    assert [s.hits for s in rs.steps] == [s.hits for s in ss.steps]
    assert rs.memory_hwm_bytes == ss.memory_hwm_bytes <= setup.geometry.budget_bytes
    sim_stats = {k: v for k, v in ss.policy_stats.items() if k != "world_scoring"}
    assert rs.policy_stats == sim_stats  # splits, promotions, key and result bytes: identical
    st = rs.policy_stats
    assert st["promoted"] > 0 and st["storage_groups"] > 0 and st["cold_kv_bytes_read"] == rs.totals()["bytes_read"]
    assert "modelled" in real.extra["clock"] and "modelled" in real.config["smartssd"]["label"]
    assert any(s.lane == "smartssd" and s.kind == "score-modelled" for s in engine.spans)
    assert len(tokens) == SCENARIO.steps + 1


def test_only_the_selected_cold_groups_are_read_at_fp16(setup: RealDecodeSetup) -> None:
    _, _, engine, _ = run_real_decode(setup, make_decode_policy("hillinfer"), log=True)
    plans = [p for kind, p in engine.log if kind == "plan"]
    for plan in plans:
        assert set(plan.read) <= set(plan.attend)
        assert len(plan.read) <= 24 // 4  # at most the K/G selected groups
    reads = sum(len(p.read) for p in plans)
    assert reads * setup.geometry.slot_bytes == sum(s.bytes_read for s in engine.steps)


def test_host_scoring_fit_reads_the_real_phases(setup: RealDecodeSetup) -> None:
    real, _, _, _ = run_real_decode(setup, make_decode_policy("hillinfer"))
    host = fit_host_scoring(real.extra["scoring_samples"], per_token_s=1e-7)
    assert host.per_token_s == 1e-7 and host.hot_fixed_s > 0 and "measured on the day" in host.source


def _phases(hot_tokens: list[int], cpu_tokens: list[int]) -> list[dict[str, float]]:
    """Scoring phases costing 1 ms + 100 ns/token (hot) and 0.2 ms + 100 ns/token (host's cold share)."""
    return [{"step": 1 + i, "hot_tokens": h, "hot_s": 1e-3 + 1e-7 * h, "cpu_tokens": c, "cpu_s": 2e-4 + 1e-7 * c}
            for i, (h, c) in enumerate(zip(hot_tokens, cpu_tokens, strict=True))]  # fmt: skip


def test_host_scoring_fit_separates_fixed_and_per_token_costs() -> None:
    varied = fit_host_scoring(_phases([100, 400, 900, 1600], [50, 300, 700, 20]))
    assert varied.per_token_s == pytest.approx(1e-7, rel=1e-6)
    assert varied.hot_fixed_s == pytest.approx(1e-3, rel=1e-6) and varied.cpu_fixed_s == pytest.approx(2e-4, rel=1e-5)
    fixed = _phases([300] * 6, [0] * 6)  # the same pool every phase: per-token and fixed cannot be told apart
    with pytest.raises(ValueError, match="not identifiable"):
        fit_host_scoring(fixed)
    given = fit_host_scoring(fixed, per_token_s=1e-7)
    assert given.hot_fixed_s == pytest.approx(1e-3, rel=1e-6) and given.cpu_fixed_s == 0.0


def test_int8_scores_rank_like_fp16_and_int4_round_trips() -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(512, 64)).astype(np.float16).astype(np.float32)
    queries = rng.normal(size=(8, 4, 32)).astype(np.float32)
    assert topk_overlap(keys, queries, kv_heads=2, bits=8)["overlap_mean"] >= 0.9
    assert topk_overlap(keys, queries, kv_heads=2, bits=4)["overlap_mean"] >= 0.6
    for bits, tol in ((8, 1 / 127), (4, 1 / 7)):
        groups = keys.reshape(128, 4, 64)
        back = dequantize_keys(quantize_keys(groups, bits), 4, 64, bits).reshape(128, 4, 64)
        block_max = np.abs(groups.reshape(128, 4, 2, 32)).max(axis=3, keepdims=True)
        err = np.abs(back.reshape(128, 4, 2, 32) - groups.reshape(128, 4, 2, 32))
        assert (err <= block_max * tol * 0.51 + 1e-3).all()


def test_the_kernel_scores_any_split_of_the_groups_alike() -> None:
    rng = np.random.default_rng(1)
    records = quantize_keys(rng.normal(size=(40, 4, 64)).astype(np.float32), 8)
    q = quantize_query(rng.normal(size=(4, 32)).astype(np.float32))
    whole = score_records(records, q, 4, 2, 8, 0.17)
    head, tail = score_records(records[:13], q, 4, 2, 8, 0.17), score_records(records[13:], q, 4, 2, 8, 0.17)
    parts = np.concatenate([head, tail])
    assert np.array_equal(whole, parts)
