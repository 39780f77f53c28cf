"""Linux native AIO (io_submit / io_getevents) for O_DIRECT reads, through ctypes: no package, no thread per read.

The thread-pool reader pays a GIL hand-over for every request it issues and completes, and on a small CPU
those hand-overs slow the compute thread that decodes beside it. Here a batch of requests is submitted in one
system call (at most `queue_depth` in flight, the rest as earlier ones complete) and one completion thread,
blocked in `io_getevents` without the GIL, stamps each completion on the perf_counter clock. Only Linux on
x86_64 and aarch64 (the syscall numbers below); `aio_available()` says whether this machine has it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from sparkv.core.errors import UserError

# (io_setup, io_destroy, io_submit, io_getevents) per machine
_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4), "arm64": (0, 1, 2, 4)}
_IOCB_CMD_PREADV = 7
_POLL_NS = 200_000_000  # the completion thread looks for a close this often


class _IOCB(ctypes.Structure):
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),  # little-endian order of aio_key / aio_rw_flags
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IOEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64),
                ("res2", ctypes.c_int64)]  # fmt: skip


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc: ctypes.CDLL | None = None


def _syscall() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = _libc.syscall
    fn.restype = ctypes.c_long
    return fn


def aio_available() -> bool:
    """Whether native AIO can be set up on this machine (Linux, a known architecture, io_setup succeeds)."""
    try:
        AioContext(1).close()  # refuses an unknown system or architecture itself
    except OSError:
        return False
    return True


class AioContext:
    """One kernel AIO context with room for `depth` requests in flight."""

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        machine = platform.machine()
        if platform.system() != "Linux" or machine not in _SYSCALLS:
            raise OSError(errno.ENOSYS, f"native AIO is not available on {platform.system()} {machine}")
        self._setup, self._destroy, self._submit, self._getevents = _SYSCALLS[machine]
        self._call = _syscall()
        self.ctx = ctypes.c_ulong(0)
        if self._call(ctypes.c_long(self._setup), ctypes.c_long(depth), ctypes.byref(self.ctx)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup({depth}): {os.strerror(err)}")

    def submit(self, iocbs: list[_IOCB]) -> int:
        """Submit as many of `iocbs` as the kernel takes now; how many it took."""
        arr = (ctypes.POINTER(_IOCB) * len(iocbs))(*[ctypes.pointer(c) for c in iocbs])
        return _count(self._call(ctypes.c_long(self._submit), self.ctx, ctypes.c_long(len(iocbs)), arr),
                      "io_submit", errno.EAGAIN)  # fmt: skip

    def events(self, out: ctypes.Array[_IOEvent], timeout_ns: int, at_least: int = 1) -> int:
        """Wait (without the GIL) for `at_least` completions or the timeout; how many landed in `out`."""
        ts = _Timespec(timeout_ns // 1_000_000_000, timeout_ns % 1_000_000_000)
        n = self._call(ctypes.c_long(self._getevents), self.ctx, ctypes.c_long(max(1, at_least)),
                       ctypes.c_long(len(out)), out, ctypes.byref(ts))  # fmt: skip
        return _count(n, "io_getevents", errno.EINTR)

    def close(self) -> None:
        if self.ctx.value:
            self._call(ctypes.c_long(self._destroy), self.ctx)
            self.ctx = ctypes.c_ulong(0)


def _count(n: int, call: str, retry_errno: int) -> int:
    """A syscall's count; 0 when it failed with `retry_errno` (try again later), OSError otherwise."""
    if n >= 0:
        return int(n)
    err = ctypes.get_errno()
    if err == retry_errno:
        return 0
    raise OSError(err, f"{call}: {os.strerror(err)}")


@dataclass(eq=False)
class _Request:
    batch: AioBatch
    iocb: _IOCB
    want: int
    offset: int
    keep: tuple[object, ...]  # the iovec array and the buffers' ctypes views, alive until completion


@dataclass(eq=False)
class AioBatch:
    """One submit's requests; `wait()` blocks until all completed: (submitted, last completed) perf_counter s."""

    start_s: float
    pending: int
    end_s: float = 0.0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> tuple[float, float]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.start_s, self.end_s if self.end_s else self.start_s


class AioReader:
    """O_DIRECT reads into caller-provided aligned buffers, at most `queue_depth` in flight, on one AIO context."""

    def __init__(self, queue_depth: int) -> None:
        self.queue_depth = queue_depth
        self.aio = AioContext(queue_depth)
        self._lock = threading.Lock()
        self._waiting: deque[_Request] = deque()
        self._flight: dict[int, _Request] = {}
        self._next_id = 1
        self._closing = False
        self._thread = threading.Thread(target=self._complete, name="kvread-aio", daemon=True)
        self._thread.start()

    def submit(self, fd: int, requests: list[tuple[int, list[memoryview]]]) -> AioBatch:
        """Start reading each (byte offset, destination views) request into its views; returns at once."""
        batch = AioBatch(time.perf_counter(), len(requests))
        if not requests:
            batch.done.set()
            return batch
        reqs = [self._request(batch, fd, offset, views) for offset, views in requests]
        with self._lock:
            if self._closing:
                raise RuntimeError("the AIO reader is closed")
            self._waiting.extend(reqs)
            self._fill()
        return batch

    def _request(self, batch: AioBatch, fd: int, offset: int, views: list[memoryview]) -> _Request:
        bufs = [ctypes.c_char.from_buffer(v) for v in views]  # writable views: the kernel writes into them
        spans: list[list[int]] = []  # [address, length], adjacent destinations merged into one segment
        for b, v in zip(bufs, views, strict=True):
            addr = ctypes.addressof(b)
            if spans and spans[-1][0] + spans[-1][1] == addr:
                spans[-1][1] += len(v)
            else:
                spans.append([addr, len(v)])
        iov = (_IOVec * len(spans))(*[_IOVec(a, n) for a, n in spans])
        iocb = _IOCB(aio_lio_opcode=_IOCB_CMD_PREADV, aio_fildes=fd, aio_buf=ctypes.addressof(iov),
                     aio_nbytes=len(spans), aio_offset=offset)  # fmt: skip
        return _Request(batch, iocb, sum(len(v) for v in views), offset, (iov, *bufs))

    def _fill(self) -> None:
        """Submit waiting requests while there is room (lock held)."""
        room = self.queue_depth - len(self._flight)
        while room > 0 and self._waiting:
            take = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            for r in take:
                r.iocb.aio_data = self._next_id
                self._flight[self._next_id] = r
                self._next_id += 1
            try:
                n = self.aio.submit([r.iocb for r in take])
            except OSError as exc:
                for r in take:
                    del self._flight[int(r.iocb.aio_data)]
                    self._fail(r.batch, exc)
                return
            for r in reversed(take[n:]):  # not taken now: back to the front, in order
                del self._flight[int(r.iocb.aio_data)]
                self._waiting.appendleft(r)
            if n == 0:
                return
            room -= n

    def _wake_after(self) -> int:
        """Completions to wait for before waking (lock held). Every wake takes the GIL from the compute thread,
        so not one per read: as many as the closest batch still needs (no batch ends later than its last
        read, whose time is stamped), and with requests waiting at most half the depth, so at least half
        the depth stays in flight."""
        flight = len(self._flight)
        closest = min((r.batch.pending for r in self._flight.values()), default=1)
        if self._waiting:
            return max(1, min(closest, flight - self.queue_depth // 2))
        return max(1, min(closest, flight))

    def _fail(self, batch: AioBatch, exc: BaseException) -> None:
        if batch.error is None:
            batch.error = exc
        batch.done.set()

    def _complete(self) -> None:
        out = (_IOEvent * self.queue_depth)()
        while True:
            with self._lock:
                if self._closing and not self._flight and not self._waiting:
                    return
                at_least = self._wake_after()
            try:
                n = self.aio.events(out, _POLL_NS, at_least)
            except OSError as exc:
                with self._lock:
                    for r in list(self._flight.values()) + list(self._waiting):
                        self._fail(r.batch, exc)
                    self._flight.clear()
                    self._waiting.clear()
                return
            if n == 0:
                continue
            now = time.perf_counter()
            with self._lock:
                for ev in out[:n]:
                    r = self._flight.pop(int(ev.data))
                    if ev.res != r.want:
                        why = os.strerror(-ev.res) if ev.res < 0 else f"{ev.res} of {r.want} bytes (file truncated?)"
                        self._fail(r.batch, UserError(f"short O_DIRECT read at byte {r.offset}: {why}"))
                        continue
                    r.batch.end_s = max(r.batch.end_s, now)
                    r.batch.pending -= 1
                    if r.batch.pending == 0:
                        r.batch.done.set()
                self._fill()

    def close(self) -> None:
        """Finish what is in flight, then release the context."""
        with self._lock:
            self._closing = True
        self._thread.join()
        self.aio.close()
