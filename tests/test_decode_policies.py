"""Decode policies on a small geometry: what each attends, reads and keeps, and KVSwap's reuse rule."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.core.decode import DecodeScenario, GroupAppended, ScoresReady, decode_geometry
from sparkv.core.model import ModelSpec
from sparkv.policies.decode import DECODE_POLICIES, DecodePolicy, make_decode_policy, top_groups
from sparkv.policies.decode.base import DecodeContext

SPEC = ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 256)  # 128 B of KV per token per layer (fp16)


def _ctx(**changes: int) -> DecodeContext:
    scenario = DecodeScenario(context_tokens=64, group_tokens=4, sink_tokens=4, select_tokens=12, budget_bytes=0,
                              budget_fraction=1.0, **changes)  # fmt: skip
    return DecodeContext(decode_geometry(SPEC, scenario), "tiny")


def _scores(step: int, layer: int, values: list[float], exact: bool = False) -> ScoresReady:
    arr = np.asarray(values, dtype=np.float32)
    return ScoresReady(0.0, step, layer, len(values), exact=arr if exact else None, predicted=None if exact else arr)


def _started(name: str) -> DecodePolicy:
    policy = make_decode_policy(name)
    policy.begin(_ctx())
    for layer in range(SPEC.num_layers):
        policy.initial_resident(layer)
    return policy


def test_every_policy_follows_the_protocol() -> None:
    for name in DECODE_POLICIES:
        policy = make_decode_policy(name)
        assert isinstance(policy, DecodePolicy)
        assert policy.score_kind in ("none", "predicted", "exact") and policy.lookahead_layers in (0, 1)
        assert isinstance(policy.config(), dict)


def test_top_groups_matches_a_plain_sort() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.normal(size=50).astype(np.float32)
        want = sorted(sorted(range(2, 50), key=lambda g: -scores[g])[:7])
        assert top_groups(scores, 2, 7) == tuple(want)
    assert top_groups(np.zeros(5, np.float32), 1, 10) == (1, 2, 3, 4)
    assert top_groups(np.zeros(5, np.float32), 1, 0) == ()


def test_kvswap_hits_stay_and_misses_overwrite_unselected_slots() -> None:
    policy = _started("kvswap")
    scores = [0.0] * 16
    for g in (3, 5, 7):
        scores[g] = 10.0
    first = policy.plan(_scores(0, 0, scores))
    assert first.attend == (0, 3, 5, 7) and first.keep == first.attend  # sink + top 3 (M/G = 12/4)
    assert first.read == (0, 3, 5, 7)  # nothing resident at the start
    scores[3], scores[9] = 0.0, 10.0
    second = policy.plan(_scores(1, 0, scores))
    assert second.attend == (0, 5, 7, 9)
    assert second.read == (9,)  # 5 and 7 are hits; 9 takes the slot 3 held
    assert policy.run_stats()["reuse_rate_by_layer"][0] == pytest.approx(2 / 6)


def test_full_reload_reads_everything_and_keeps_nothing() -> None:
    policy = _started("full-reload")
    for step in range(2):
        plan = policy.plan(_scores(step, 1, [0.0] * 16))
        assert plan.read == tuple(range(16)) and plan.keep == ()


def test_full_kv_starts_with_everything_resident_and_never_reads() -> None:
    policy = _started("full-kv")
    plan = policy.plan(_scores(0, 0, [0.0] * 16))
    assert plan.read == () and plan.attend == tuple(range(16))
    policy.update(GroupAppended(0.0, 0, 16))
    assert policy.plan(_scores(1, 0, [0.0] * 17)).read == ()


def test_streaming_keeps_sinks_and_the_recent_window() -> None:
    policy = _started("streaming")
    plan = policy.plan(_scores(0, 0, [0.0] * 16))
    assert plan.attend == (0, 13, 14, 15) and plan.read == ()
    policy.update(GroupAppended(0.0, 3, 16))
    plan = policy.plan(_scores(4, 0, [0.0] * 17))
    assert plan.attend == (0, 14, 15, 16) and plan.read == ()


def test_oracle_uses_exact_scores_without_lookahead() -> None:
    policy = _started("oracle-topm")
    assert policy.score_kind == "exact" and policy.lookahead_layers == 0
    values = [0.0] * 16
    values[11] = 1.0
    assert 11 in policy.plan(_scores(0, 0, values, exact=True)).attend
    with pytest.raises(ValueError, match="exact"):
        policy.plan(_scores(1, 0, values))
