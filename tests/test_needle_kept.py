"""The needle diagnostic of per-head eviction: which prompt tokens are the answer's, the share each (layer, head)
keeps after the prefill's eviction, and the needle's quantile in the prefill's accumulated attention."""

from __future__ import annotations

import numpy as np

from sparkv.analysis.needle_kept import after_prefill, answer_tokens, kept_share, needle_rank
from sparkv.core.decode import DecodeScenario, decode_geometry
from sparkv.core.model import ModelSpec
from sparkv.policies.decode import make_decode_policy
from sparkv.policies.decode.kelle import HeadBudget, HeadPrefill

SPEC = ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 256)
GEO = decode_geometry(SPEC, DecodeScenario(context_tokens=96, group_tokens=1, steps=4, sink_tokens=4,
                                           select_tokens=0, budget_fraction=1.0))  # fmt: skip


def test_answer_tokens_are_those_overlapping_the_first_occurrence() -> None:
    pieces = ["The", " number", " is", " 12", "34", "567", ".", " Ask", ":", " 1234567"]
    assert answer_tokens(pieces, "1234567").tolist() == [3, 4, 5]
    assert answer_tokens(pieces, "7654321").size == 0


def _policy(name: str) -> HeadBudget:
    policy = make_decode_policy(name, budget_tokens=32)
    assert isinstance(policy, HeadBudget)
    return policy


def test_a_needle_without_prefill_attention_is_evicted_by_h2o_and_aerp_but_not_in_the_window() -> None:
    rng = np.random.default_rng(0)
    imp = [rng.random((2, 96)) + 1.0 for _ in range(2)]
    needle = np.arange(40, 44)
    for layer in imp:
        layer[:, needle] = 0.0  # nothing attended the needle during the prefill
    prefill = HeadPrefill(2, 16, 64, 2, imp)
    assert needle_rank(prefill, needle) == 0.0
    for name in ("h2o", "aerp"):
        assert kept_share(after_prefill(_policy(name), GEO, prefill), needle) == {"mean": 0.0, "all": 0.0}
    for layer in imp:
        layer[0, needle] = 10.0  # head 0 of every layer attended it: now a heavy hitter there
    prefill = HeadPrefill(2, 16, 64, 2, imp)
    share = kept_share(after_prefill(_policy("h2o"), GEO, prefill), needle)
    assert share == {"mean": 0.5, "all": 0.5} and needle_rank(prefill, needle) > 0.45  # top in half the heads
    late = np.arange(90, 94)  # inside the recent window: kept by every policy
    assert kept_share(after_prefill(_policy("streaming-heads"), GEO, prefill), late)["all"] == 1.0
