"""The native AIO reader: the same bytes as the thread reader, short reads as clear errors, a choice refused
where the machine lacks it, and a real decode that reads through it decides and generates exactly the same."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.core.decode import DecodeScenario
from sparkv.core.errors import UserError
from sparkv.executor.model import kvfile
from sparkv.executor.model.aio import AioReader, aio_available
from sparkv.executor.model.decode_run import prepare_real_decode, run_real_decode
from sparkv.executor.model.kvfile import GroupReader, KVFiles, KVLayout, aligned_buffer, resolve_reader
from sparkv.executor.model.models import tiny_model
from sparkv.policies.decode import make_decode_policy

LAYOUT = KVLayout(num_layers=2, group_tokens=4, kv_heads=2, head_dim=24, capacity_groups=64)  # 1024 B slots
needs_aio = pytest.mark.skipif(not aio_available(), reason="Linux native AIO is not available here")


@pytest.fixture()
def folder() -> Path:
    # O_DIRECT needs a real file system (tmpfs refuses it): a folder inside the checkout's ignored out/
    base = Path(__file__).resolve().parent.parent / "out" / "test-aio" / str(os.getpid())
    base.mkdir(parents=True, exist_ok=True)
    return base


def _files(folder: Path) -> tuple[KVFiles, np.ndarray]:
    data = np.random.default_rng(3).normal(size=(60, 2, 4, 2, 24)).astype(np.float16)
    files = KVFiles.create(folder, LAYOUT)
    for layer in range(2):
        files.write_groups(layer, 0, data + layer)
    files.save_layout()
    return files, data


def _read(reader: GroupReader, layer: int, groups: list[list[int]], scattered: bool) -> np.ndarray:
    """Read runs of consecutive groups; destinations in a shuffled slot order when `scattered`."""
    total = sum(len(run) for run in groups)
    buf = aligned_buffer(total * LAYOUT.slot_bytes)
    order = list(np.random.default_rng(0).permutation(total)) if scattered else list(range(total))
    views = [memoryview(buf)[s * 1024 : (s + 1) * 1024] for s in order]
    requests, i = [], 0
    for run in groups:
        requests.append((run[0], views[i : i + len(run)]))
        i += len(run)
    start, end = reader.submit(layer, requests).wait()
    assert end >= start
    rows = np.frombuffer(buf, dtype=np.uint8, count=total * 1024).reshape(total, 1024)[:, :768]
    return np.stack([rows[s] for s in order]).copy().view(np.float16)


@needs_aio
@pytest.mark.parametrize("depth", [1, 3, 16])
def test_aio_reads_the_same_bytes_as_the_thread_reader(folder: Path, depth: int) -> None:
    files, data = _files(folder)
    runs = [[2, 3, 4], [10], [25, 26, 27, 28], [40], [41, 42], [59], [0, 1], [30, 31, 32, 33, 34, 35]]
    want = np.concatenate([data[r[0] : r[-1] + 1] for r in runs]).reshape(-1, 768 // 2) + 1
    for kind in ("threads", "aio"):
        reader = GroupReader(files, depth, kind)  # type: ignore[arg-type]
        try:
            for scattered in (False, True):
                got = _read(reader, 1, runs, scattered).reshape(-1, 768 // 2)
                assert np.array_equal(got, want), (kind, scattered)
        finally:
            reader.close()
    files.close()


@needs_aio
def test_a_short_aio_read_is_a_user_error(folder: Path) -> None:
    files, _ = _files(folder)
    os.truncate(LAYOUT.layer_path(folder, 0), 20 * LAYOUT.slot_bytes)
    reader = GroupReader(files, 4, "aio")
    buf = aligned_buffer(4 * LAYOUT.slot_bytes)
    views = [memoryview(buf)[i * 1024 : (i + 1) * 1024] for i in range(4)]
    with pytest.raises(UserError, match="short O_DIRECT read"):
        reader.submit(0, [(30, views[:2]), (5, views[2:])]).wait()
    reader.close()
    files.close()


@needs_aio
def test_a_closed_aio_reader_refuses_more_work() -> None:
    reader = AioReader(2)
    assert reader.submit(0, []).wait()[0] > 0  # an empty batch is done at once
    reader.close()
    with pytest.raises(RuntimeError, match="closed"):
        reader.submit(0, [(0, [memoryview(aligned_buffer(4096))])])


def test_reader_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_reader("auto") == "threads" and resolve_reader("threads") == "threads"
    with pytest.raises(UserError, match="unknown reader 'uring'"):
        resolve_reader("uring")
    monkeypatch.setattr(kvfile, "aio_available", lambda: False)
    with pytest.raises(UserError, match="not available on this machine"):
        resolve_reader("aio")


@needs_aio
def test_a_real_decode_through_aio_decides_and_generates_the_same(folder: Path) -> None:
    loaded = tiny_model("llama", num_layers=3, hidden_size=64, num_heads=4, num_kv_heads=2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, loaded.spec.vocab_size, (96,), generator=gen)
    calib = torch.randint(0, loaded.spec.vocab_size, (64,), generator=gen)
    sc = DecodeScenario(context_tokens=96, group_tokens=4, steps=6, budget_fraction=0.5, select_tokens=16,
                        sink_tokens=4, rank=4, queue_depth=3)  # fmt: skip
    setup = prepare_real_decode(loaded, ids, calib, sc, folder / "kv")
    try:
        runs = {}
        for kind in ("threads", "aio"):
            result, trace, _, tokens = run_real_decode(replace(setup, reader=kind), make_decode_policy("kvswap"))
            assert result.config["reader"] == kind
            runs[kind] = (tokens, result.decode["totals"]["bytes_read"], result.decode["totals"]["hit_rate"], trace)
        (t_tok, t_bytes, t_hit, t_trace), (a_tok, a_bytes, a_hit, a_trace) = runs["threads"], runs["aio"]
        assert a_tok == t_tok and a_bytes == t_bytes > 0 and a_hit == t_hit
        assert t_trace.predicted is not None and a_trace.predicted is not None
        assert np.array_equal(np.nan_to_num(a_trace.predicted), np.nan_to_num(t_trace.predicted))
    finally:
        setup.files.close()
