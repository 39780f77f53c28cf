"""The real world: `model/` (loading, layer-wise prefill, KV files) and `net/` (KV server, client, link);
the driver and session that run a request on them.

`model/` imports torch; `net/` and this package itself do not, so the KV server and the CLI stay cheap to
import. The main names are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoadedModel": "model.models",
    "load_model": "model.models",
    "tiny_model": "model.models",
    "tiny_model_dir": "model.models",
    "LayerwisePrefill": "model.prefill",
    "full_prefill_reference": "model.prefill",
    "KVStore": "model.kvstore",
    "KVStoreInfo": "model.kvstore",
    "build_kv_store": "model.kvstore",
    "context_key": "model.kvstore",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sparkv.executor.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sparkv.executor' has no attribute {name!r}")
