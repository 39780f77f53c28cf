"""The on-disk KV store: round trip, key stability, reuse, and clear errors for a bad store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.executor.model.kvstore import KVStore, build_kv_store, context_key, kv_file, token_ids_sha256
from sparkv.executor.model.models import tiny_model
from sparkv.executor.model.prefill import reference_kv

CONTEXT = torch.arange(3, 53)  # 50 tokens


def test_round_trip(tmp_path: Path) -> None:
    loaded = tiny_model("qwen2", num_layers=3)
    info = build_kv_store(loaded, CONTEXT, tmp_path)
    assert info.built and info.path == tmp_path / context_key(loaded.model_id, CONTEXT)
    names = {f"{kind}_{layer:03d}.npy" for kind in "kv" for layer in range(3)} | {"meta.json"}
    assert {p.name for p in info.path.iterdir()} == names
    meta = json.loads((info.path / "meta.json").read_text())
    assert meta["model_id"] == loaded.model_id and meta["context_tokens"] == 50 and meta["dtype"] == "float32"
    assert ModelSpec.from_dict(meta["spec"]) == loaded.spec
    assert meta["token_ids_sha256"] == token_ids_sha256(CONTEXT.tolist())
    store = KVStore(info.path)
    for layer, (k_ref, v_ref) in enumerate(reference_kv(loaded, CONTEXT)):
        k, v = store.cell(10, 30, layer)
        assert k.shape == (2, 20, 16) and v.shape == (2, 20, 16)  # [kv_heads, tokens, head_dim]
        np.testing.assert_array_equal(k, k_ref[:, 10:30].numpy())
        np.testing.assert_array_equal(v, v_ref[:, 10:30].numpy())
    assert store.cell_bytes(10, 30) == 2 * 2 * 20 * 16 * 4


def test_key_is_stable_and_specific() -> None:
    key = context_key("m", CONTEXT)
    assert key == context_key("m", CONTEXT.tolist()) == context_key("m", CONTEXT.numpy().astype(np.int32))
    assert len(key) == 32
    assert context_key("m2", CONTEXT) != key
    assert context_key("m", CONTEXT[:-1]) != key
    assert context_key("m", CONTEXT.flip(0)) != key


def test_rebuild_is_skipped(tmp_path: Path) -> None:
    loaded = tiny_model(num_layers=2)
    first = build_kv_store(loaded, CONTEXT, tmp_path)
    stamp = (first.path / "k_000.npy").stat().st_mtime_ns
    again = build_kv_store(loaded, CONTEXT, tmp_path)
    assert first.built and not again.built and again.path == first.path
    assert (again.path / "k_000.npy").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{first.key}.lock", first.key]  # no temporary leftovers


def test_half_and_bfloat16_dtypes(tmp_path: Path) -> None:
    half = build_kv_store(tiny_model(num_layers=1, dtype="float16"), CONTEXT, tmp_path)
    assert half.dtype == "float16" and KVStore(half.path).cell(0, 5, 0)[0].dtype == np.float16
    bf16 = build_kv_store(tiny_model(num_layers=1, dtype="bfloat16"), CONTEXT, tmp_path)
    meta = json.loads((bf16.path / "meta.json").read_text())
    assert (meta["dtype"], meta["model_dtype"]) == ("float32", "bfloat16")


def test_bad_store_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing or corrupt"):
        KVStore(tmp_path / "nothing")
    info = build_kv_store(tiny_model(num_layers=2), CONTEXT, tmp_path / "a")
    kv_file(info.path, "v", 1).unlink()
    with pytest.raises(UserError, match=r"v_001\.npy"):
        KVStore(info.path)
    np.save(kv_file(info.path, "v", 1), np.zeros((2, 49, 16), dtype=np.float32))
    with pytest.raises(UserError, match="corrupt"):
        KVStore(info.path)
    (info.path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"meta\.json"):
        KVStore(info.path)


def test_cell_range_checks(tmp_path: Path) -> None:
    store = KVStore(build_kv_store(tiny_model(num_layers=2), CONTEXT, tmp_path).path)
    with pytest.raises(ValueError, match="outside"):
        store.cell(40, 51, 0)
    with pytest.raises(ValueError, match="layer 2"):
        store.cell(0, 10, 2)
