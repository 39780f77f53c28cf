"""The one place that knows how transformers' API differs between the versions pyproject allows.

Each helper asks the installed transformers what it documents (a forward's signature, a cache's attributes,
the version) instead of hard-coding one release's spelling, so our own calls neither hit a deprecated path
on the newest release nor a missing keyword on the oldest:

- a forward's KV-cache keyword: `cache` from 5.x (the old `past_key_values` warns, then goes away),
  `past_key_values` before;
- the logits-trimming keyword: `logits_to_keep` (`num_logits_to_keep` before 4.50);
- a `DynamicCache`'s per-layer K/V: `cache.layers[l].keys` / `.values` (`cache.key_cache[l]` /
  `.value_cache[l]` before 4.54);
- the dtype keyword of `from_pretrained` / `from_config`: `dtype` (`torch_dtype` before 4.56);
- an attention module's softmax scale: its `scaling` attribute (GPT-2's only from 5.0, computed here before).
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import torch
from torch import Tensor

_CACHE_KEYWORDS = ("cache", "past_key_values")  # newest first
_LOGITS_KEYWORDS = ("logits_to_keep", "num_logits_to_keep")


@cache
def _forward_parameters(cls: Any) -> frozenset[str]:
    """Named parameters of `cls.forward` (through functools.wraps decorators such as deprecate_kwarg)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def _keyword(model: Any, names: tuple[str, ...]) -> str | None:
    params = _forward_parameters(model.__class__)
    return next((name for name in names if name in params), None)


def cache_keyword(model: Any) -> str:
    """The keyword `model`'s forward takes its KV cache by."""
    return _keyword(model, _CACHE_KEYWORDS) or _CACHE_KEYWORDS[-1]


def forward_with_cache(model: Any, cache_obj: Any, input_ids: Tensor, logits_to_keep: int | None = None) -> Any:
    """`model(input_ids, <cache keyword>=cache_obj, use_cache=True)`, keeping only the last `logits_to_keep`
    positions' logits where the model can (all positions otherwise: the caller reads the last ones)."""
    kwargs: dict[str, Any] = {cache_keyword(model): cache_obj, "use_cache": True}
    if logits_to_keep is not None:
        name = _keyword(model, _LOGITS_KEYWORDS)
        if name is not None:
            kwargs[name] = logits_to_keep
    return model(input_ids=input_ids, **kwargs)


def new_dynamic_cache() -> Any:
    """An empty `DynamicCache` with no config: plain full-length layers, never trimmed to a sliding window."""
    from transformers import DynamicCache

    return DynamicCache()


def cache_layer_kv(cache_obj: Any) -> list[tuple[Tensor, Tensor]]:
    """Per layer (K, V) [B, KV, T, hd] held by a `DynamicCache` (its own tensors, not copies)."""
    layers = getattr(cache_obj, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache_obj.key_cache, cache_obj.value_cache, strict=True))


def _version() -> tuple[int, int]:
    import transformers

    major, minor = transformers.__version__.split(".")[:2]
    return int(major), int(minor)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`{"dtype": dtype}` for `from_pretrained` / `from_config`, spelled `torch_dtype` before 4.56."""
    return {"dtype": dtype} if _version() >= (4, 56) else {"torch_dtype": dtype}


def attention_scaling(attn: Any) -> float:
    """The softmax scale of attention module `attn`: its own `scaling`, else GPT-2's rule (1/sqrt(head_dim) when
    `scale_attn_weights`, divided by layer index + 1 when `scale_attn_by_inverse_layer_idx`)."""
    scaling = getattr(attn, "scaling", None)
    if scaling is not None:
        return float(scaling)
    value = float(attn.head_dim) ** -0.5 if getattr(attn, "scale_attn_weights", True) else 1.0
    if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
        value /= float(attn.layer_idx + 1)
    return value
