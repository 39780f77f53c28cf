"""The fused KVSwap score predictor gives the scores of the per-head form it replaces: rotate every head's
query, average per GQA group, project onto U (to float rounding), for Llama and for Qwen2's biased q_proj."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparkv.executor.model.decode import CacheBuild, load_cache, save_cache
from sparkv.executor.model.models import tiny_model
from sparkv.executor.model.prefill_layers import LlamaMath
from sparkv.executor.model.score_predictor import ScorePredictor


def _per_head_weights(math: LlamaMath, u: torch.Tensor, layer: int, x: torch.Tensor, pos: int, kv: int) -> torch.Tensor:
    q = math.query(layer, x, pos)[:, 0]  # [H, hd]
    qbar = q.view(kv, q.shape[0] // kv, q.shape[1]).mean(dim=1)  # [KV, hd]
    return u.T @ qbar.reshape(-1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fused_weights_equal_the_per_head_form(family: str) -> None:
    loaded = tiny_model(family, num_layers=3, hidden_size=64, num_heads=8, num_kv_heads=2, seed=3)
    math = LlamaMath(loaded.model)
    gen = torch.Generator().manual_seed(1)
    projections = [torch.linalg.qr(torch.randn(2 * math.head_dim, 6, generator=gen))[0] for _ in range(3)]
    predictor = ScorePredictor(math, projections, kv_heads=2, heads=8)
    with torch.inference_mode():
        for pos in (0, 7, 1000, 1000, 3):  # a repeated position reuses the step's rotation, a new one rebuilds it
            x = torch.randn(1, 64, generator=gen)
            for layer in range(3):
                want = _per_head_weights(math, projections[layer], layer, x, pos, 2)
                got = predictor.weights(layer, x, pos)
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (family, pos, layer)


def test_a_cache_saved_in_another_format_is_not_reused(tmp_path: Path) -> None:
    z = torch.zeros(4, 10)
    cache = CacheBuild([torch.zeros(8, 4)], [z], [torch.zeros(2, 10, 4)], [torch.zeros(2, 0, 4)],
                       [torch.zeros(2, 0, 4)], torch.zeros(8))  # fmt: skip
    save_cache(tmp_path, cache, 10)
    assert load_cache(tmp_path, 2) is not None
    data = torch.load(tmp_path / "decode-cache.pt", weights_only=True)
    del data["format"]  # as an earlier build saved it, metadata [tokens, r]
    torch.save(data, tmp_path / "decode-cache.pt")
    assert load_cache(tmp_path, 2) is None
