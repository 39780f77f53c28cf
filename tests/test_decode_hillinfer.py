"""HillInfer's policy on a small geometry: the hot pool, the pinned window, the hit-rate table, promotion and
demotion of equal volume, the latency-model split; and the key plane's layout."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.core.decode import DecodeScenario, GroupAppended, ScoresReady, decode_geometry
from sparkv.core.keyplane import key_record_bytes, plane_span, runs, span_bytes
from sparkv.core.model import ModelSpec
from sparkv.cost_models.smartssd import get_smartssd
from sparkv.policies.decode import make_decode_policy
from sparkv.policies.decode.base import DecodeContext
from sparkv.policies.decode.hillinfer import HillInfer, split_cpu_share
from sparkv.policies.decode.storage_scoring import StorageScoring
from sparkv.sim.decode import build_decode_world, run_decode_sim

SPEC = ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 256)  # 128 B of KV per token per layer; keys 32 wide


def _started(budget: float = 0.375, **settings: float) -> HillInfer:
    # 64 groups of 4 tokens, 1 sink group; budget 3/8: 96 tokens per layer, 21 free groups, K/G = 4
    scenario = DecodeScenario(context_tokens=256, group_tokens=4, sink_tokens=4, select_tokens=16,
                              budget_fraction=budget)  # fmt: skip
    policy = HillInfer(**settings)  # type: ignore[arg-type]
    policy.begin(DecodeContext(decode_geometry(SPEC, scenario), "tiny"))
    for layer in range(SPEC.num_layers):
        policy.initial_resident(layer)
    return policy


def _plan(policy: HillInfer, step: int, layer: int, scores: np.ndarray) -> tuple:
    full = scores.shape[0]
    sp = policy.split(step, layer, full)
    return sp, policy.plan(ScoresReady(0.0, step, layer, full, predicted=scores.astype(np.float32)))


def test_hot_pool_fits_the_budget_with_room_for_the_fetched_groups() -> None:
    policy = _started()
    geo = policy.geometry
    assert policy.capacity == geo.free_groups - 4 - 1 == 16  # one group of slack for an append
    assert policy.pinned == 7  # 10 % of 256 tokens: 26 tokens, 7 groups (at most half the pool)
    assert policy.hot[0] == set(range(48, 64))
    assert _started(budget=0.25).pinned == 4  # capped at half the pool


def test_pinned_window_and_sinks_are_attended_and_the_top_k_read_when_cold() -> None:
    policy = _started()
    scores = np.zeros(64)
    scores[[5, 9, 20, 56]] = 10.0  # 56 is hot (the pool holds 48..63, 57..63 pinned), the others cold
    sp, plan = _plan(policy, 0, 0, scores)
    window = tuple(range(64 - policy.pinned, 64))
    assert set(window) <= set(plan.attend) and plan.attend[0] == 0
    assert {5, 9, 20, 56} <= set(plan.attend)
    assert plan.read == (5, 9, 20)  # only the cold selected groups cross the link
    assert not set(window) & set(sp.hot + sp.cpu + sp.storage)  # the window is not scored
    assert sp.hot == tuple(range(48, 57)) and len(sp.cpu) + len(sp.storage) == 64 - 1 - 16


def test_promotion_and_demotion_are_of_equal_volume_and_follow_the_hit_table() -> None:
    policy = _started()
    scores = np.zeros(64)
    scores[[5, 9, 20, 30]] = 10.0
    _plan(policy, 0, 0, scores)  # counts 1 for 5, 9, 20, 30; unpinned hot 48..56 have 0: all four promoted
    hot = policy.hot[0]
    assert {5, 9, 20, 30} <= hot and not {48, 49, 50, 51} & hot  # the least-hit (then oldest) demoted
    assert len(hot) == policy.capacity and policy.stats["promoted"] == policy.stats["demoted"] == 4
    scores2 = np.zeros(64)
    scores2[[5, 9, 20, 40]] = 10.0  # 5, 9, 20 hits now; 40 a miss with one hit beats a group with none
    _, plan = _plan(policy, 1, 0, scores2)
    assert plan.read == (40,) and 40 in policy.hot[0] and 52 not in policy.hot[0]
    assert int(policy.counts[0][5]) == 2 and int(policy.counts[0][40]) == 1
    assert policy.stats["topk_hits"] == 3 and policy.stats["promoted"] == policy.stats["demoted"] == 5
    strict = _started(margin=2)
    _plan(strict, 0, 0, scores)
    assert not {5, 9, 20, 30} & strict.hot[0] and strict.stats["promoted"] == 0  # 1 hit < 0 + margin 2


def test_an_appended_group_joins_and_the_pool_demotes_to_its_size() -> None:
    policy = _started()
    policy.update(GroupAppended(0.0, 3, 64))
    assert 64 in policy.hot[0] and len(policy.hot[0]) == policy.capacity + 1
    scores = np.zeros(65)
    _, plan = _plan(policy, 4, 0, scores)
    assert len(policy.hot[0]) == policy.capacity and 64 in plan.attend  # newest group pinned
    assert len(plan.keep) == 1 + policy.capacity


def test_the_split_equalises_both_sides_of_the_latency_model() -> None:
    a_c, a_s = 3e-7, 1e-7
    m = split_cpu_share(1000, a_c, a_s)
    assert m == 250 and m * a_c == pytest.approx((1000 - m) * a_s)
    for total in (0, 1, 17, 999):
        m = split_cpu_share(total, a_c, a_s)
        best = min(range(total + 1), key=lambda c: max(c * a_c, (total - c) * a_s))
        assert abs(m - best) <= 1
    policy = _started(cpu_tokens_per_s=1e6, host_bps=1e8, ssd_tokens_per_s=2e6,
                      ssd_internal_bps=1e8)  # fmt: skip
    sp = policy.split(0, 0, 64)
    cold = len(sp.cpu) + len(sp.storage)
    per_token = policy.record_bytes / 4
    a_cpu, a_ssd = 1 / 1e6 + per_token / 1e8, 1 / 2e6 + per_token / 1e8
    hot_s = len(sp.hot) * 4 / 1e6  # the host scores the hot pool too: it takes that much less of the cold
    assert len(sp.cpu) == split_cpu_share(cold, 4 * a_cpu, 4 * a_ssd, hot_s)
    assert split_cpu_share(cold, a_cpu, a_ssd) > len(sp.cpu)
    assert split_cpu_share(100, 1.0, 1.0, host_busy=1000.0) == 0
    assert len(sp.cpu) == 14 and sp.cpu == tuple(sorted(sp.cpu))
    assert max(sp.storage) < min(sp.cpu)  # the host takes the newest cold groups
    fixed = _started(cpu_share=0.5).split(0, 0, 64)
    assert abs(len(fixed.cpu) - len(fixed.storage)) <= 1


def test_a_budget_without_room_for_a_pool_is_refused() -> None:
    with pytest.raises(Exception, match="too few"):
        _started(budget=0.08)


def test_key_plane_spans_are_aligned_and_cover_the_records() -> None:
    rec = key_record_bytes(4, 192, 8)
    assert rec == 4 * (192 + 12) and key_record_bytes(4, 192, 4) == 4 * (96 + 12)
    for first, n in ((0, 1), (3, 5), (100, 17)):
        off, size = plane_span(first, n, rec)
        assert off % 512 == 0 and size % 512 == 0
        assert off <= first * rec and (first + n) * rec <= off + size < (first + n) * rec + 1024
    assert runs((1, 2, 3, 7, 9, 10)) == [(1, 3), (7, 1), (9, 2)]
    assert span_bytes((1, 2, 3), rec) == plane_span(1, 3, rec)[1]
    with pytest.raises(ValueError):
        key_record_bytes(4, 40, 8)


def test_simulated_hillinfer_is_a_storage_scoring_run_with_modelled_drive_time() -> None:
    scenario = DecodeScenario(context_tokens=2048, steps=6)
    world = build_decode_world(scenario)
    policy = make_decode_policy("hillinfer")
    assert isinstance(policy, StorageScoring)
    result, engine = run_decode_sim(world, policy)
    stats = (result.decode or {})["policy_stats"]
    assert "modelled" in result.config["smartssd"]["label"] and stats["storage_scoring"] == "modelled"
    assert any(s.lane == "smartssd" for s in engine.spans)
    assert stats["storage_groups"] > stats["cpu_groups"] > 0
    assert stats["host_link_bytes"] < stats["cold_keys_fp16_bytes"]
    assert engine.memory_hwm_bytes <= engine.geo.budget_bytes
    slower = run_decode_sim(world, make_decode_policy("hillinfer"))[0]
    assert (slower.decode or {})["totals"] == (result.decode or {})["totals"]  # deterministic
    profile = get_smartssd("samsung-smartssd")
    half = profile.scaled(fpga=0.5, internal=0.5, link=0.5)
    assert half.score_s(1000, 204, 576, 800) > profile.score_s(1000, 204, 576, 800)
