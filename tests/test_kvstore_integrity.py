"""The KV store builder against faults: corrupt or truncated stores rebuilt and reported, concurrent
builders, and storage failures as one-line errors."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.core.errors import UserError
from sparkv.executor.model import kvstore
from sparkv.executor.model.kvstore import KVStore, build_kv_store, kv_file
from sparkv.executor.model.models import tiny_model

CONTEXT = torch.arange(3, 53)  # 50 tokens


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    return tiny_model(num_layers=2)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "meta"])
def test_a_damaged_store_is_rebuilt_and_reported(loaded, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    first = build_kv_store(loaded, CONTEXT, tmp_path)
    good = KVStore(first.path).k[1].copy()
    file = kv_file(first.path, "k", 1)
    data = bytearray(file.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x40
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        meta = first.path / "meta.json"
        text = meta.read_text()
        meta.write_text(text.replace('"context_tokens": 50', '"context_tokens": 51'))
    with pytest.raises(UserError, match="corrupt"):
        KVStore(first.path)
    again = build_kv_store(loaded, CONTEXT, tmp_path)
    assert again.built and "corrupt" in again.rebuilt_because
    assert np.array_equal(KVStore(again.path).k[1], good)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".corrupt-" in p.name]


def test_concurrent_builders_build_once(loaded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    results: list[object] = []

    def build() -> None:
        try:
            results.append(build_kv_store(loaded, CONTEXT, tmp_path))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(isinstance(r, kvstore.KVStoreInfo) for r in results), results
    assert sum(r.built for r in results) == 1  # type: ignore[attr-defined]
    KVStore(results[0].path)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("code", "match"), [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                             (errno.EACCES, "permission denied")])
def test_storage_failures_are_one_line_errors(loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                              code: int, match: str) -> None:
    def fail(path: Path, array: np.ndarray) -> dict[str, object]:
        raise OSError(code, "injected", str(path))

    monkeypatch.setattr(kvstore, "_write_array", fail)
    with pytest.raises(UserError, match=match) as info:
        build_kv_store(loaded, CONTEXT, tmp_path)
    assert "\n" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # nothing half-written
