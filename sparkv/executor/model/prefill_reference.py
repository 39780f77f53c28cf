"""The plain Hugging Face forward pass (one call, a DynamicCache): the ground truth layer-wise prefill and the
KV store are checked against, and what the KV store serves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparkv.executor.model.hf_compat import cache_layer_kv, forward_with_cache, new_dynamic_cache
from sparkv.executor.model.models import LoadedModel


def _cache_kv(cache: object) -> list[tuple[Tensor, Tensor]]:
    """Per layer (K, V) [KV, T, hd], cloned out of a DynamicCache."""
    return [(k[0].clone(), v[0].clone()) for k, v in cache_layer_kv(cache)]


def reference_kv(loaded: LoadedModel, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
    """K, V per layer [KV, T, hd] of one full forward over ids [T] (no LM head, so no [T, vocab] logits)."""
    cache = new_dynamic_cache()
    with torch.inference_mode():
        forward_with_cache(loaded.model.base_model, cache, ids.to(loaded.device)[None])
    return _cache_kv(cache)


def full_prefill_reference(
    loaded: LoadedModel, context_ids: Tensor, query_ids: Tensor, n_new: int
) -> tuple[list[tuple[Tensor, Tensor]], list[int]]:
    """KV per layer [KV, T + Q, hd] after prefilling context + query, and the first n_new greedy tokens."""
    model = loaded.model
    ids = torch.cat([context_ids, query_ids]).to(loaded.device, torch.long)[None]  # [1, T + Q]
    cache = new_dynamic_cache()
    tokens: list[int] = []
    with torch.inference_mode():
        out = forward_with_cache(model, cache, ids, logits_to_keep=1)
        kv = _cache_kv(cache)
        for _ in range(n_new):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            if len(tokens) == n_new:
                break
            step = torch.tensor([[token]], device=loaded.device)
            out = forward_with_cache(model, cache, step)
    return kv, tokens
