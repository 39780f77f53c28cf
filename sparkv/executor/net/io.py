"""Socket I/O with deadlines: a streaming frame reader and a sender that waits for room, both bounded.

Deadlines are absolute `time.perf_counter()` instants (CLOCK_MONOTONIC on Linux, shared by processes).
Every wait is a `select` with a timeout; a reader can also be woken early through a socketpair so that
a cancel from another thread need not wait for the next byte.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import threading
import time

from sparkv.executor.net.protocol import (
    HEADER,
    MAX_FRAME_BYTES,
    DeadlineExceeded,
    PeerGone,
    check_frame,
    parse_header,
)

RECV_BYTES = 256 * 1024  # most bytes asked of one recv
SEND_POLL_S = 0.02  # how often a sender waiting for socket room rechecks its cancel flag
NOTSENT_LOWAT_BYTES = 64 * 1024  # unsent bytes the kernel may hold before the socket reads as unwritable


class Woken(Exception):
    """The reader's wake socket fired: the caller should recheck its state and read again."""


class FrameReader:
    """Reads whole frames from a socket; partial frames survive a deadline or a wake-up."""

    def __init__(
        self, sock: socket.socket, max_frame_bytes: int = MAX_FRAME_BYTES, wake: socket.socket | None = None
    ) -> None:
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self.wake = wake
        self._buf = bytearray()
        self.bytes_read = 0  # bytes taken off the socket so far
        self.last_recv_s = -math.inf  # perf_counter instant of the last byte taken off the socket

    def read(self, deadline_s: float) -> tuple[int, bytes]:
        """(type, body) of the next frame, its crc checked; DeadlineExceeded, PeerGone, CorruptFrame or Woken
        otherwise."""
        self._fill(HEADER.size, deadline_s)
        head = bytes(self._buf[: HEADER.size])
        ftype, length = parse_header(head, self.max_frame_bytes)
        end = HEADER.size + length
        self._fill(end, deadline_s)
        body = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        check_frame(head, body)
        return ftype, body

    def _fill(self, n: int, deadline_s: float) -> None:
        sources = [self.sock] if self.wake is None else [self.sock, self.wake]
        while len(self._buf) < n:
            remaining = deadline_s - time.perf_counter()
            if remaining <= 0:
                raise DeadlineExceeded(f"no complete frame before the deadline ({len(self._buf)} of {n} bytes)")
            ready, _, _ = select.select(sources, [], [], remaining)
            if self.sock in ready:
                try:
                    data = self.sock.recv(max(RECV_BYTES, n - len(self._buf)))
                except (ConnectionError, TimeoutError, OSError) as exc:
                    raise PeerGone(f"connection lost: {exc}") from exc
                if not data:
                    raise PeerGone("connection closed by the peer")
                self._buf += data
                self.bytes_read += len(data)
                self.last_recv_s = time.perf_counter()
            elif self.wake is not None and self.wake in ready:
                raise Woken()


def make_wake_pair() -> tuple[socket.socket, socket.socket]:
    """(read end, write end) of a wake-up channel for FrameReader."""
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    return r, w


def drain_wake(r: socket.socket) -> None:
    try:
        while r.recv(4096):
            pass
    except BlockingIOError:
        pass


def ring(w: socket.socket) -> None:
    """Wake the reader (never blocks; a full channel already means 'woken')."""
    with contextlib.suppress(BlockingIOError, OSError):
        w.send(b"!")


def send_all(sock: socket.socket, data: bytes, deadline_s: float, stop: threading.Event | None = None) -> None:
    """Send every byte of `data`, waiting for socket room in short steps until `deadline_s`.

    Raises PeerGone on a closed/reset connection and DeadlineExceeded when the peer reads too slowly.
    `stop` (a server shutting down) aborts with PeerGone. The data is one or more whole frames, so this
    never stops mid-frame because of a cancel: cancels are honoured between calls.
    """
    view = memoryview(data)
    while view:
        if not await_send_room(sock, deadline_s, stop):
            raise PeerGone("sender stopped")
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError):
            continue
        except (ConnectionError, OSError) as exc:
            raise PeerGone(f"connection lost while sending: {exc}") from exc
        view = view[sent:]


def await_send_room(sock: socket.socket, deadline_s: float, stop: threading.Event | None = None) -> bool:
    """Wait until the socket can take more bytes; False when `stop` is set first. Bounded by deadline_s."""
    while True:
        if stop is not None and stop.is_set():
            return False
        remaining = deadline_s - time.perf_counter()
        if remaining <= 0:
            raise DeadlineExceeded("the peer has not read for too long")
        try:
            _, ready, _ = select.select([], [sock], [], min(SEND_POLL_S, remaining))
        except (OSError, ValueError) as exc:
            raise PeerGone(f"socket unusable: {exc}") from exc
        if ready:
            return True


def limit_unsent(sock: socket.socket, lowat_bytes: int = NOTSENT_LOWAT_BYTES) -> None:
    """Keep at most about `lowat_bytes` queued-but-unsent in the kernel, so a cancel stops the flow soon."""
    opt = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # 25 on Linux
    with contextlib.suppress(OSError):  # not Linux: cancels still stop at the next piece, only later
        sock.setsockopt(socket.IPPROTO_TCP, opt, lowat_bytes)
