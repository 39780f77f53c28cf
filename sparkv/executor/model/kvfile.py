"""The KV cache on disk: one preallocated file per layer, one slot per token group, read with O_DIRECT.

Slot g of layer l's file holds group g's K then V ([2, G, KV heads, head dim], fp16), padded to a multiple of
512 B, so a group is one contiguous read. Reads bypass the page cache (O_DIRECT: page-aligned buffers,
512 B-aligned offsets and sizes) and go straight into the destination slots, either through a pool of
`queue_depth` threads, each issuing its share of a batch with `os.preadv` (`threads`), or through Linux native
AIO, a batch in one `io_submit` (`aio`, see `aio.py`); the time measured is the real time of the reads.
A decode step appends the filled tail group to every layer's file (one write per layer).
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from sparkv.core.decode import DIRECT_ALIGN
from sparkv.core.errors import UserError
from sparkv.executor.model.aio import AioReader, aio_available

LAYOUT_FILE = "layout.json"


@dataclass(frozen=True)
class KVLayout:
    """Shape of the files: what one slot holds."""

    num_layers: int
    group_tokens: int
    kv_heads: int
    head_dim: int
    capacity_groups: int  # slots preallocated per layer
    groups: int = 0  # slots written
    dtype: str = "float16"
    tag: str = ""  # what the cache holds (model id and context digest), for reuse checks

    @property
    def group_bytes(self) -> int:
        return 2 * self.group_tokens * self.kv_heads * self.head_dim * 2

    @property
    def slot_bytes(self) -> int:
        return -(-self.group_bytes // DIRECT_ALIGN) * DIRECT_ALIGN

    def layer_path(self, folder: Path, layer: int) -> Path:
        return folder / f"layer-{layer:03d}.kv"


def aligned_buffer(nbytes: int) -> mmap.mmap:
    """Anonymous memory, page aligned (what O_DIRECT needs), at least one page."""
    return mmap.mmap(-1, max(mmap.PAGESIZE, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE))


def open_direct(path: Path, flags: int, label: str = "KV file", what: str = "") -> int:
    """`os.open` with O_DIRECT (where the OS has it); every failure is one line naming the `label`ed file."""
    try:
        return os.open(path, flags | getattr(os, "O_DIRECT", 0), 0o644)
    except FileNotFoundError as exc:
        raise UserError(f"{label} {path} is missing" + (f" ({what})" if what else "")) from exc
    except PermissionError as exc:
        raise UserError(f"{label} {path} is not {'writable' if flags & os.O_WRONLY else 'readable'}") from exc
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise UserError(f"the file system of {path} does not support O_DIRECT; keep {label}s on a disk") from exc
        raise UserError(f"cannot open {label} {path}: {exc.strerror}") from exc


class KVFiles:
    """The per-layer files of one KV cache, opened for O_DIRECT reads and writes."""

    def __init__(self, folder: Path, layout: KVLayout, fds: list[int]) -> None:
        self.folder, self.layout, self.fds = folder, layout, fds
        self.groups = layout.groups
        self._lock = threading.Lock()

    @classmethod
    def create(cls, folder: Path | str, layout: KVLayout) -> KVFiles:
        """New preallocated files (capacity slots per layer); an unwritable folder is a UserError."""
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"KV folder {folder} is not writable: {exc.strerror}") from exc
        size = layout.capacity_groups * layout.slot_bytes
        fds = []
        for layer in range(layout.num_layers):
            fd = open_direct(layout.layer_path(folder, layer), os.O_RDWR | os.O_CREAT | os.O_TRUNC, what="create")
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                os.close(fd)
                raise UserError(f"cannot preallocate {size} bytes for {layout.layer_path(folder, layer)}: "
                                f"{exc.strerror}") from exc  # fmt: skip
            fds.append(fd)
        files = cls(folder, layout, fds)
        files.save_layout()
        return files

    @classmethod
    def open(cls, folder: Path | str) -> KVFiles:
        """Existing files; a missing layout or layer file, or one shorter than its slots, is a UserError."""
        folder = Path(folder)
        meta = folder / LAYOUT_FILE
        if not meta.is_file():
            raise UserError(f"KV folder {folder} has no {LAYOUT_FILE} (not a KV cache, or never written)")
        try:
            layout = KVLayout(**json.loads(meta.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"KV layout {meta} is malformed: {exc}") from exc
        fds: list[int] = []
        for layer in range(layout.num_layers):
            path = layout.layer_path(folder, layer)
            fd = open_direct(path, os.O_RDWR, what="open")
            need = layout.groups * layout.slot_bytes
            have = os.fstat(fd).st_size
            if have < need:
                os.close(fd)
                for other in fds:
                    os.close(other)
                raise UserError(f"KV file {path} is truncated: {have} bytes, {need} needed for {layout.groups} groups")
            fds.append(fd)
        return cls(folder, layout, fds)

    def save_layout(self) -> None:
        layout = KVLayout(**{**asdict(self.layout), "groups": self.groups})
        self.layout = layout
        (self.folder / LAYOUT_FILE).write_text(json.dumps(asdict(layout), indent=1))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def write_groups(self, layer: int, first: int, data: np.ndarray) -> None:
        """Write groups [first, first + n) of `layer`: data float16 [n, 2, G, KV, hd]."""
        lay = self.layout
        n = data.shape[0]
        if first + n > lay.capacity_groups:
            raise UserError(f"KV file of layer {layer} holds {lay.capacity_groups} groups; writing up to {first + n}")
        buf = aligned_buffer(n * lay.slot_bytes)
        view = np.frombuffer(buf, dtype=np.uint8, count=n * lay.slot_bytes).reshape(n, lay.slot_bytes)
        view[:, : lay.group_bytes] = np.ascontiguousarray(data, dtype=np.float16).reshape(n, -1).view(np.uint8)
        written = os.pwrite(self.fds[layer], memoryview(buf)[: n * lay.slot_bytes], first * lay.slot_bytes)
        if written != n * lay.slot_bytes:
            raise UserError(f"short write to the KV file of layer {layer}: {written} of {n * lay.slot_bytes} bytes")
        with self._lock:
            self.groups = max(self.groups, first + n)


ReaderKind = Literal["threads", "aio"]
READER_KINDS: tuple[str, ...] = ("auto", "threads", "aio")


class PendingRead(Protocol):
    def wait(self) -> tuple[float, float]:
        """Block until every read is done: (submitted, last completed), perf_counter seconds."""
        ...


def resolve_reader(kind: str) -> ReaderKind:
    """`auto` is `threads` (the faster for bulk reads here); `aio` is refused where the machine lacks it."""
    if kind not in READER_KINDS:
        raise UserError(f"unknown reader {kind!r}; choose from {', '.join(READER_KINDS)}")
    if kind == "aio":
        if not aio_available():
            raise UserError("--reader aio: Linux native AIO is not available on this machine; use --reader threads")
        return "aio"
    return "threads"


class GroupReader:
    """Batches of O_DIRECT group reads, at most `queue_depth` in flight, into caller-provided aligned slots:
    through `queue_depth` threads (`threads`) or one native AIO context (`aio`)."""

    def __init__(self, files: KVFiles, queue_depth: int, kind: ReaderKind = "threads") -> None:
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        self.files, self.queue_depth, self.kind = files, queue_depth, kind
        self.aio = AioReader(queue_depth) if kind == "aio" else None
        self.pool = None if self.aio else ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="kvread")

    def close(self) -> None:
        if self.aio is not None:
            self.aio.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def submit(self, layer: int, requests: list[tuple[int, list[memoryview]]]) -> PendingRead:
        """Start reading: each request is (first group, one destination view per group, slot-sized).

        Returns at once; `wait()` gives (start, end) on the perf_counter clock."""
        slot = self.files.layout.slot_bytes
        fd = self.files.fds[layer]
        byte_requests = [(first * slot, views) for first, views in requests]
        if self.aio is not None:
            return self.aio.submit(fd, byte_requests)
        assert self.pool is not None
        return submit_reads(self.pool, self.queue_depth, fd, byte_requests)


def submit_reads(
    pool: ThreadPoolExecutor, queue_depth: int, fd: int, requests: list[tuple[int, list[memoryview]]]
) -> ReadBatch:
    """Requests (byte offset, destination views) dealt round-robin to `queue_depth` threads, each issuing its
    share in order with `os.preadv`; the same path for decode reads and for `sparkv profile --disk`."""
    workers = min(queue_depth, len(requests))
    shares = [requests[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    return ReadBatch(t0, [pool.submit(_read_share, fd, share) for share in shares])


def _read_share(fd: int, share: list[tuple[int, list[memoryview]]]) -> float:
    """One thread's requests, in order; the time the last one completed."""
    for offset, views in share:
        want = sum(len(v) for v in views)
        got = os.preadv(fd, views, offset)
        if got != want:
            raise UserError(f"short O_DIRECT read at byte {offset}: {got} of {want} bytes (file truncated?)")
    return time.perf_counter()


@dataclass
class ReadBatch:
    start_s: float
    futures: list[Future[float]]

    def wait(self) -> tuple[float, float]:
        """Block until every read is done: (submitted, last completed), perf_counter seconds."""
        ends = [f.result() for f in self.futures]
        return self.start_s, max(ends) if ends else self.start_s
