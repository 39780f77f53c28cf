"""The plain Hugging Face forward pass (one call, DynamicCache): the ground truth layer-wise prefill and the
KV store are checked against, and what the KV store serves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparkv.executor.model.models import LoadedModel


def _dynamic_cache() -> object:
    from transformers import DynamicCache

    return DynamicCache()  # no config: plain full-length layers, never trimmed to a sliding window


def _cache_kv(cache: object) -> list[tuple[Tensor, Tensor]]:
    """Per layer (K, V) [KV, T, hd], cloned out of a DynamicCache."""
    layers = cache.layers  # type: ignore[attr-defined]
    return [(layer.keys[0].clone(), layer.values[0].clone()) for layer in layers]


def reference_kv(loaded: LoadedModel, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
    """K, V per layer [KV, T, hd] of one full forward over ids [T] (no LM head, so no [T, vocab] logits)."""
    cache = _dynamic_cache()
    with torch.inference_mode():
        loaded.model.base_model(input_ids=ids.to(loaded.device)[None], past_key_values=cache, use_cache=True)
    return _cache_kv(cache)


def full_prefill_reference(
    loaded: LoadedModel, context_ids: Tensor, query_ids: Tensor, n_new: int
) -> tuple[list[tuple[Tensor, Tensor]], list[int]]:
    """KV per layer [KV, T + Q, hd] after prefilling context + query, and the first n_new greedy tokens."""
    model = loaded.model
    ids = torch.cat([context_ids, query_ids]).to(loaded.device, torch.long)[None]  # [1, T + Q]
    cache = _dynamic_cache()
    tokens: list[int] = []
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        kv = _cache_kv(cache)
        for _ in range(n_new):
            token = int(out.logits[0, -1].argmax())
            tokens.append(token)
            if len(tokens) == n_new:
                break
            step = torch.tensor([[token]], device=loaded.device)
            out = model(input_ids=step, past_key_values=cache, use_cache=True)
    return kv, tokens
