"""The recall study on a tiny random Llama: the reference is self-consistent, and the variants differ."""

import torch

from sparkv.analysis.decode_recall import ScoreVariant, capture_decode, projections_for, variant_recall
from sparkv.executor.model.models import tiny_model


def _setup():
    loaded = tiny_model("llama", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2)
    ids = torch.randint(0, loaded.spec.vocab_size, (160,), generator=torch.Generator().manual_seed(0))
    calib = torch.randint(0, loaded.spec.vocab_size, (200,), generator=torch.Generator().manual_seed(1))
    return loaded, capture_decode(loaded, ids, 3), calib


def test_exact_mass_sums_to_heads_and_exact_scoring_recalls_everything():
    loaded, cap, calib = _setup()
    heads = loaded.spec.num_attention_heads
    for step in range(3):
        for layer in range(3):
            assert cap.exact[step][layer].shape[0] == 160 + step
            assert abs(float(cap.exact[step][layer].sum()) - heads) < 1e-3
    u = projections_for(loaded, [calib], 4)
    same = ScoreVariant("same", query="current", heads="exact-keys", group="sum")
    res = variant_recall(loaded, cap, u, same, 4, 40, 4)
    assert res["recall_mean"] == 1.0 and res["recall_min"] == 1.0 and abs(res["mass_ratio_mean"] - 1.0) < 1e-6


def test_low_rank_loses_recall_and_full_rank_current_query_recovers_mass():
    loaded, cap, calib = _setup()
    width = loaded.spec.num_kv_heads * loaded.spec.head_dim
    low = variant_recall(loaded, cap, projections_for(loaded, [calib], 1), ScoreVariant("kvswap"), 4, 40, 4)
    full = variant_recall(loaded, cap, projections_for(loaded, [calib], width),
                          ScoreVariant("f", query="current", heads="softmax-sum", group="sum"), 4, 40, 4)
    assert low["recall_mean"] < 1.0
    assert full["recall_mean"] > 0.99  # a full-rank U reconstructs the keys: the scores are the exact ones
    assert 0.0 <= low["recall_p10"] <= low["recall_mean"] <= 1.0
