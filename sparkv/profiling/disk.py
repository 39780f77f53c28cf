"""`sparkv profile --disk PATH`: O_DIRECT read bandwidth of this machine's disk by request size and queue depth.

A probe file is written under PATH with O_DIRECT (that write gives the sequential write bandwidth), then
for every request size (512 B to 1 MiB) and queue depth (1 to 16) batches of random aligned reads run
through the decode reader's own path (`kvfile.submit_reads`): batches of q and of 4q requests, so that
time = fixed + n x size / bandwidth separates the per-batch cost from the bandwidth. Each cell is bounded
in time; the result is a measured `StorageProfile`.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

from sparkv.core.errors import UserError
from sparkv.cost_models.storage import DEFAULT_DEPTHS, DEFAULT_SIZES, StorageProfile
from sparkv.executor.model.kvfile import aligned_buffer, submit_reads

PROBE_NAME = "sparkv-disk-probe.bin"
WRITE_CHUNK = 1 << 20


def _probe_file(path: Path, size_bytes: int) -> tuple[Path, float]:
    """Write the probe file with O_DIRECT; (its path, sequential write bytes/s)."""
    target = path / PROBE_NAME if path.is_dir() or not path.suffix else path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o644)
    except OSError as exc:
        raise UserError(f"cannot write a probe file at {target}: {exc.strerror}") from exc
    buf = aligned_buffer(WRITE_CHUNK)
    buf[:] = np.random.default_rng(0).integers(0, 256, WRITE_CHUNK, dtype=np.uint8).tobytes()
    t0 = time.perf_counter()
    try:
        for off in range(0, size_bytes, WRITE_CHUNK):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
    except OSError as exc:
        raise UserError(f"writing the probe file {target} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return target, size_bytes / (time.perf_counter() - t0)


def _batch_s(pool: ThreadPoolExecutor, fd: int, depth: int, size: int, n: int, file_bytes: int,
             rng: np.random.Generator, buf: object) -> float:  # fmt: skip
    slots = file_bytes // size
    offsets = rng.integers(0, slots, n) * size
    view = memoryview(buf)  # type: ignore[arg-type]
    requests = [(int(o), [view[i * size : (i + 1) * size]]) for i, o in enumerate(offsets)]
    start, end = submit_reads(pool, depth, fd, requests).wait()
    return end - start


def profile_disk(
    path: Path | str,
    file_bytes: int = 256 << 20,
    cell_s: float = 0.15,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    depths: tuple[int, ...] = DEFAULT_DEPTHS,
    keep_file: bool = False,
) -> StorageProfile:
    """Measure the disk holding `path`; bounded by about `cell_s` per (size, depth) cell."""
    target, write_bps = _probe_file(Path(path), file_bytes)
    rng = np.random.default_rng(1)
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    rows: list[list[float]] = []
    fixed: list[float] = []
    raw: dict[str, list[float]] = {}
    pool = ThreadPoolExecutor(max_workers=max(depths), thread_name_prefix="diskprobe")
    try:
        buf = aligned_buffer(4 * max(depths) * max(sizes))
        latency = statistics.median(_batch_s(pool, fd, 1, sizes[0], 1, file_bytes, rng, buf) for _ in range(20))
        for size in sizes:
            row = []
            for q in depths:
                small: list[float] = []
                large: list[float] = []
                deadline = time.perf_counter() + cell_s
                while len(small) < 3 or (time.perf_counter() < deadline and len(small) < 30):
                    small.append(_batch_s(pool, fd, q, size, q, file_bytes, rng, buf))
                    large.append(_batch_s(pool, fd, q, size, 4 * q, file_bytes, rng, buf))
                t1, t4 = statistics.median(small), statistics.median(large)
                per = max((t4 - t1) / (3 * q), 1e-9)
                row.append(size / per)
                fixed.append(t1 - q * per)
                raw[f"{size}x{q}"] = [t1, t4, float(len(small))]
            rows.append(row)
    finally:
        pool.shutdown()
        os.close(fd)
        if not keep_file:
            target.unlink(missing_ok=True)
    for i in range(len(rows)):  # a deeper queue never reads slower than a shallower one (noise aside)
        for j in range(1, len(rows[i])):
            rows[i][j] = max(rows[i][j], rows[i][j - 1])
    return StorageProfile(
        name=f"disk-{os.uname().nodename}", kind="measured",
        device=f"disk holding {Path(path).resolve()} ({os.uname().sysname} {os.uname().release}), O_DIRECT",
        sizes_bytes=tuple(sizes), queue_depths=tuple(depths), read_bps=tuple(tuple(r) for r in rows),
        latency_s=latency, write_bps=write_bps, batch_fixed_s=max(0.0, statistics.median(fixed)),
        sources={"all": "measured by sparkv profile --disk: random O_DIRECT reads through the decode reader's "
                        f"thread pool, {file_bytes >> 20} MiB probe file, batches of q and 4q requests per cell"},
        date=date.today().isoformat(), measurements={"batch_s_q_4q_count": raw},
    )  # fmt: skip


def disk_command(path: Path, out: Path | None) -> int:
    """Measure, print the table (MB/s by size and depth), save the profile."""
    t0 = time.perf_counter()
    profile = profile_disk(path)
    target = out or Path(f"{profile.name}.json")
    profile.save(target)
    print(f"disk profile of {profile.device}: {time.perf_counter() - t0:.1f} s; "
          f"latency {profile.latency_s * 1e6:.0f} us (512 B, depth 1), per batch {profile.batch_fixed_s * 1e6:.0f} us, "
          f"write {profile.write_bps / 1e6:.0f} MB/s")
    print("size \\ depth " + " ".join(f"{q:>8d}" for q in profile.queue_depths) + "   (read MB/s)")
    for size, row in zip(profile.sizes_bytes, profile.read_bps, strict=True):
        print(f"{size:>12d} B " + " ".join(f"{v / 1e6:8.1f}" for v in row))
    print(f"wrote {target}")
    return 0
