"""The real world: model loading, layer-wise prefill, the KV store and server, the link, the driver.

Submodules import torch; this package itself does not, so `sparkv.executor.kvstore`'s readers (the KV
server) and the CLI stay cheap to import. The main names are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoadedModel": "models",
    "load_model": "models",
    "tiny_model": "models",
    "tiny_model_dir": "models",
    "LayerwisePrefill": "prefill",
    "full_prefill_reference": "prefill",
    "KVStore": "kvstore",
    "KVStoreInfo": "kvstore",
    "build_kv_store": "kvstore",
    "context_key": "kvstore",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sparkv.executor.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sparkv.executor' has no attribute {name!r}")
