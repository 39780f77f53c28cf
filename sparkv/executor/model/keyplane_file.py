"""The quantised key plane on disk beside the KV files: what the host reads (O_DIRECT, timed) for its share of
the cold scoring, and what the modelled drive scores in storage (read through the page cache, untimed: its
time is charged from the SmartSSD profile). Layout: `sparkv.core.keyplane`; quantisation: `keyscore`.

A copy of every record also stays in memory for the hot pool's groups (the host scores those from DRAM).
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sparkv.core.errors import UserError
from sparkv.core.keyplane import key_record_bytes, plane_span, runs
from sparkv.executor.model.keyscore import quantize_keys
from sparkv.executor.model.kvfile import ReadBatch, aligned_buffer, submit_reads


class KeyPlane:
    """Per-layer files of quantised keys, one packed record per group."""

    def __init__(self, folder: Path, num_layers: int, group_tokens: int, key_width: int, bits: int,
                 capacity_groups: int) -> None:  # fmt: skip
        self.folder, self.group_tokens, self.key_width, self.bits = folder, group_tokens, key_width, bits
        self.record_bytes = key_record_bytes(group_tokens, key_width, bits)
        self.capacity = capacity_groups
        self.memory = [np.zeros((capacity_groups, self.record_bytes), np.uint8) for _ in range(num_layers)]
        size = -(-capacity_groups * self.record_bytes // 4096) * 4096
        self.direct: list[int] = []
        self.buffered: list[int] = []
        for layer in range(num_layers):
            path = folder / f"keys-q{bits}-layer-{layer:03d}.kq"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                os.posix_fallocate(fd, 0, size)
                self.buffered.append(fd)
                self.direct.append(os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0)))
            except OSError as exc:
                self.close()
                raise UserError(f"cannot create the key plane file {path}: {exc.strerror}") from exc

    def close(self) -> None:
        for fd in self.direct + self.buffered:
            os.close(fd)
        self.direct, self.buffered = [], []

    def write(self, layer: int, first: int, keys: np.ndarray) -> None:
        """Quantise keys float [n, G, d] of groups [first, first + n) into memory and the file."""
        n = keys.shape[0]
        if first + n > self.capacity:
            raise UserError(f"key plane of layer {layer} holds {self.capacity} groups; writing up to {first + n}")
        rec = quantize_keys(keys, self.bits)
        self.memory[layer][first : first + n] = rec
        data = rec.tobytes()
        if os.pwrite(self.buffered[layer], data, first * self.record_bytes) != len(data):
            raise UserError(f"short write to the key plane of layer {layer}")

    def from_memory(self, layer: int, groups: tuple[int, ...]) -> np.ndarray:
        """Records [n, record] of hot groups, from DRAM."""
        return self.memory[layer][list(groups)]

    def submit_direct(self, pool: ThreadPoolExecutor, queue_depth: int, layer: int,
                      groups: tuple[int, ...]) -> PlaneRead:  # fmt: skip
        """Start O_DIRECT reads of the groups' records (one aligned span per run of adjacent groups)."""
        parts, requests = [], []
        for first, n in runs(groups):
            off, size = plane_span(first, n, self.record_bytes)
            buf = aligned_buffer(size)
            parts.append((buf, first * self.record_bytes - off, n))
            requests.append((off, [memoryview(buf)[:size]]))
        return PlaneRead(self.record_bytes, parts, submit_reads(pool, queue_depth, self.direct[layer], requests),
                         sum(len(r[1][0]) for r in requests))  # fmt: skip

    def read_buffered(self, layer: int, groups: tuple[int, ...]) -> np.ndarray:
        """The groups' records through the page cache (the modelled drive's own read; not timed)."""
        rec = self.record_bytes
        chunks = []
        for first, n in runs(groups):
            data = os.pread(self.buffered[layer], n * rec, first * rec)
            chunks.append(np.frombuffer(data, np.uint8).reshape(n, rec))
        return np.concatenate(chunks) if chunks else np.zeros((0, rec), np.uint8)


class PlaneRead:
    """O_DIRECT reads of key records in flight."""

    def __init__(self, record_bytes: int, parts: list[tuple[mmap.mmap, int, int]], batch: ReadBatch, nbytes: int):
        self.record_bytes, self.parts, self.batch, self.bytes = record_bytes, parts, batch, nbytes

    def wait(self) -> tuple[np.ndarray, float, float]:
        """(records [n, record], submitted, completed on the perf_counter clock)."""
        start, end = self.batch.wait()
        rec = self.record_bytes
        out = [np.frombuffer(buf, np.uint8, count=n * rec, offset=skip).reshape(n, rec) for buf, skip, n in self.parts]
        return np.concatenate(out), start, end
