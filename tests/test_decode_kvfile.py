"""KV files on disk: group slots round-trip through O_DIRECT, and bad files give clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sparkv.core.errors import UserError
from sparkv.executor.model.kvfile import GroupReader, KVFiles, KVLayout, aligned_buffer

LAYOUT = KVLayout(num_layers=2, group_tokens=4, kv_heads=2, head_dim=24, capacity_groups=40)  # 768 B -> 1024 B slots


@pytest.fixture()
def folder() -> Path:
    # O_DIRECT needs a real file system (tmpfs refuses it): a folder inside the checkout's ignored out/
    base = Path(__file__).resolve().parent.parent / "out" / "test-kvfile" / str(os.getpid())
    base.mkdir(parents=True, exist_ok=True)
    return base


def _groups(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2, 4, 2, 24)).astype(np.float16)


def test_slots_round_trip_through_direct_reads(folder: Path) -> None:
    assert LAYOUT.group_bytes == 768 and LAYOUT.slot_bytes == 1024
    files = KVFiles.create(folder, LAYOUT)
    data = _groups(30, 0)
    files.write_groups(1, 0, data)
    files.write_groups(1, 30, _groups(1, 1))  # an appended group
    files.save_layout()
    reader = GroupReader(files, queue_depth=3)
    buf = aligned_buffer(8 * LAYOUT.slot_bytes)
    views = [memoryview(buf)[i * 1024 : (i + 1) * 1024] for i in range(8)]
    requests = [(2, views[0:3]), (10, views[3:4]), (25, views[4:7]), (30, views[7:8])]
    start, end = reader.submit(1, requests).wait()
    assert end >= start
    got = np.frombuffer(buf, dtype=np.uint8, count=8 * 1024).reshape(8, 1024)[:, :768].copy().view(np.float16)
    want = np.concatenate([data[2:5], data[10:11], data[25:28], _groups(1, 1)]).reshape(8, -1)
    assert np.array_equal(got, want)
    reader.close()
    files.close()
    again = KVFiles.open(folder)
    assert again.groups == 31
    again.close()


def test_missing_truncated_and_unwritable_files_are_user_errors(folder: Path) -> None:
    with pytest.raises(UserError, match=r"no layout\.json"):
        KVFiles.open(folder / "nothing")
    files = KVFiles.create(folder, LAYOUT)
    files.write_groups(0, 0, _groups(20, 2))
    files.write_groups(1, 0, _groups(20, 2))
    files.save_layout()
    files.close()
    os.truncate(LAYOUT.layer_path(folder, 1), 5 * 1024)
    with pytest.raises(UserError, match="truncated"):
        KVFiles.open(folder)
    LAYOUT.layer_path(folder, 1).unlink()
    with pytest.raises(UserError, match="missing"):
        KVFiles.open(folder)
    blocker = folder / "a-file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        KVFiles.create(blocker / "sub", LAYOUT)
