"""The device side of the KV link: fetch blocks of cells from the KV server, decoded as they arrive.

One `KVClient` holds one TCP connection (opened on first use, reopened after a fault) and runs one
fetch at a time. `fetch` yields each cell once its last byte has arrived and its crc32 checks out;
`cancel` (from any thread) sends CANCEL and wakes the reader, which then stops yielding, drains the
stream to the server's END for at most `cancel_drain_s`, and otherwise drops the connection (the next
fetch reconnects). Every wait is bounded: by the fetch's deadline, by `idle_timeout_s` without a byte,
and by `connect_timeout_s` when connecting.

Nothing from the wire is trusted: every frame's crc32 is checked (sparkv.executor.net.protocol); each
CELL must carry the next label of the requested block, in order, with the shape `expect` gives (or at
most `chunk_tokens` tokens and the first cell's heads and head size), and a payload_len and decoded size
within `max_cell_bytes`, before anything is allocated for it; its cell_crc covers labels and payload.
With a secret (argument, or sparkv.executor.net.auth's environment) the connection starts with a
mutual HMAC challenge-response; a server that requires one and gets none is AuthFailed.

When the link fails (ServerGone, DeadlineExceeded), the error's message ends with a diagnosis in
brackets: by default `describe_server` of this process's handle for the endpoint (is the server alive,
the state of the link's shaper, the last lines of the server's log), or whatever `diagnose` returns.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import numpy as np

from sparkv.core.request import CellBlock
from sparkv.executor.net import protocol as P
from sparkv.executor.net.auth import secret_from_env
from sparkv.executor.net.codecs import get_codec
from sparkv.executor.net.io import FrameReader, Woken, drain_wake, make_wake_pair, ring, send_all
from sparkv.executor.net.launch import describe_server, secret_of
from sparkv.executor.net.protocol import (
    AuthFailed,
    CorruptFrame,
    DeadlineExceeded,
    PeerGone,
    ServerError,
    ServerGone,
)

__all__ = ["AuthFailed", "CellPayload", "CorruptFrame", "DeadlineExceeded", "KVClient", "ServerError",
           "ServerGone"]

MAX_CELL_BYTES = 256 << 20  # largest cell (payload, or K and V decoded) a client accepts by default
ShapeFn = Callable[[int, int], tuple[int, int, int]]  # (chunk, layer) -> [kv_heads, tokens, head_dim]


@dataclass(frozen=True)
class CellPayload:
    """One decoded cell."""

    chunk: int
    layer: int
    k: np.ndarray  # [num_kv_heads, tokens, head_dim]
    v: np.ndarray  # same shape and dtype as k
    wire_bytes: int  # bytes of this cell's CELL and PIECE frames, headers included
    recv_s: float  # perf_counter instant its last byte arrived
    head_s: float = 0.0  # perf_counter instant its CELL header arrived (its first byte, to within a frame)


class KVClient:
    """Fetches cells over one connection; `cancel` may be called from another thread."""

    def __init__(self, host: str, port: int, connect_timeout_s: float = 5.0, idle_timeout_s: float = 30.0,
                 cancel_drain_s: float = 0.25, diagnose: Callable[[], str] | None = None,
                 secret: bytes | None = None, max_cell_bytes: int = MAX_CELL_BYTES) -> None:
        self.host, self.port = host, port
        # the shared secret: given, else the launcher's for this endpoint, else the environment's
        self.secret = secret if secret is not None else (secret_of(host, port) or secret_from_env())
        self.max_cell_bytes = max_cell_bytes
        # what a link failure's message adds: by default the server handle's diagnosis, if it is ours
        self.diagnose = diagnose if diagnose is not None else (lambda: describe_server(host, port))
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s  # DeadlineExceeded after this long without a byte
        self.cancel_drain_s = cancel_drain_s  # after a cancel, wait this long for END before reconnecting
        self._sock: socket.socket | None = None
        self._reader: FrameReader | None = None
        self._wake_r, self._wake_w = make_wake_pair()
        self._lock = threading.Lock()  # guards the fields below and sends on the socket
        self._active: int | None = None  # request id of the running fetch
        self._first_head_s: float | None = None  # the running fetch's first cell header arrived then
        self._cell_wire = 0  # wire bytes of the cell being received
        self._cancel_at: float | None = None  # when the running fetch was cancelled
        self._precancelled: set[int] = set()  # cancelled before their fetch started
        self._nonce = itertools.count(1)
        self.drops = 0  # connections closed after a fault, a cancel or a stale check

    # ---- connection ----

    def _connection(self) -> tuple[socket.socket, FrameReader]:
        sock, reader = self._sock, self._reader
        if sock is not None and reader is not None:
            ready, _, _ = select.select([sock], [], [], 0)
            if not ready:  # idle and healthy: nothing may arrive between fetches
                return sock, reader
            self._drop()  # closed by the server, or leftovers from an abandoned fetch
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise ServerGone(f"cannot connect to {self.host}:{self.port}: {exc}{self._why()}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.connect_timeout_s)  # bounds sends; reads are select-gated
        reader = FrameReader(sock)
        try:
            self._handshake(sock, reader)
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        reader.wake = self._wake_r
        self._sock, self._reader = sock, reader
        return sock, reader

    def _handshake(self, sock: socket.socket, reader: FrameReader) -> None:
        """Read HELLO; answer AUTH and check WELCOME when a secret is in use. Bounded by connect_timeout_s."""
        deadline = time.perf_counter() + self.connect_timeout_s
        where = f"{self.host}:{self.port}"
        try:
            hello = P.decode(*reader.read(deadline))
            if isinstance(hello, P.Error):
                raise ServerGone(f"{where} refused the connection: {hello.message}{self._why()}")
            if not isinstance(hello, P.Hello):
                raise CorruptFrame(f"{where}: expected HELLO, got {type(hello).__name__}")
            if self.secret is None:
                if hello.auth:
                    raise AuthFailed(f"{where} requires a shared secret and none is set "
                                     "(SPARKV_KV_SECRET_FILE or SPARKV_KV_SECRET)")
                return
            if not hello.auth:
                raise AuthFailed(f"{where} does not know the shared secret (it asked for no AUTH)")
            nonce = secrets.token_bytes(P.NONCE_BYTES)
            send_all(sock, P.encode(P.Auth(P.mac(self.secret, b"client", hello.nonce), nonce)), deadline)
            reply = P.decode(*reader.read(deadline))
            if isinstance(reply, P.Error):
                raise AuthFailed(f"{where} refused the shared secret: {reply.message}")
            if not isinstance(reply, P.Welcome) or not secrets.compare_digest(
                    reply.mac, P.mac(self.secret, b"server", nonce)):
                raise AuthFailed(f"{where} did not prove it knows the shared secret")
        except DeadlineExceeded as exc:
            raise ServerGone(f"{where}: no HELLO within {self.connect_timeout_s} s ({exc}){self._why()}") from exc
        except PeerGone as exc:
            raise ServerGone(f"{where} closed during the handshake: {exc}{self._why()}") from exc

    def progress(self) -> tuple[float | None, int]:
        """(perf_counter instant the running fetch's first cell header arrived or None, wire bytes of the cell
        being received now): what has arrived between whole cells, for a driver's bandwidth samples."""
        return self._first_head_s, self._cell_wire

    def last_byte_s(self) -> float:
        """perf_counter instant this client last received a byte (-inf before any): stall detection."""
        reader = self._reader
        return reader.last_recv_s if reader is not None else -math.inf

    def _drop(self) -> None:
        """Close the connection; the next fetch opens a new one."""
        if self._sock is not None:
            self.drops += 1
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._reader = None, None

    def _why(self) -> str:
        """' [diagnosis]' for a link failure's message, or '' when there is nothing to say."""
        try:
            text = self.diagnose()
        except Exception as exc:  # never let the diagnosis replace the error
            text = f"diagnosis failed: {exc!r}"
        return f" [{text}]" if text else ""

    def _send(self, sock: socket.socket, data: bytes) -> None:
        with self._lock:
            send_all(sock, data, time.perf_counter() + self.connect_timeout_s)

    def close(self) -> None:
        with self._lock:
            self._drop()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> KVClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests ----

    def ping(self, timeout_s: float = 5.0) -> float:
        """Round-trip time in seconds of a PING (not during a fetch)."""
        with self._lock:
            if self._active is not None:
                raise RuntimeError("ping during a fetch")
        sock, reader = self._connection()
        nonce, t0 = next(self._nonce), time.perf_counter()
        try:
            self._send(sock, P.encode(P.Ping(nonce)))
            while True:
                ftype, body = reader.read(t0 + timeout_s)
                if ftype == P.PONG and P.decode(ftype, body) == P.Pong(nonce):
                    return time.perf_counter() - t0
        except Woken:
            drain_wake(self._wake_r)
            raise DeadlineExceeded("ping interrupted") from None
        except DeadlineExceeded as exc:
            raise DeadlineExceeded(f"ping: {exc}{self._why()}") from None
        except PeerGone as exc:
            self._drop()
            raise ServerGone(f"{exc}{self._why()}") from exc

    def cancel(self, request_id: int) -> None:
        """Stop fetch `request_id` (running or not yet started); returns at once."""
        with self._lock:
            if self._active != request_id:
                self._precancelled.add(request_id)
                return
            if self._cancel_at is not None:
                return
            self._cancel_at = time.perf_counter()
            sock = self._sock
        ring(self._wake_w)
        if sock is not None:
            try:
                with self._lock:
                    send_all(sock, P.encode(P.Cancel(request_id)), time.perf_counter() + 1.0)
            except P.NetError:
                pass  # the reader will find the connection gone, or drop it after the drain

    def fetch(self, request_id: int, context_key: str, chunk_tokens: int, codec: str, block: CellBlock,
              deadline_s: float | None = None, expect: ShapeFn | None = None) -> Generator[CellPayload, None, None]:
        """Cells of `block` in order (chunk-major) as they arrive.

        deadline_s: perf_counter instant by which the whole block must have arrived (None: only the idle
        timeout applies); the server is told too, and gives up on its side. expect: the shape each cell
        must have (None: at most chunk_tokens tokens, the same heads and head size throughout). Raises
        ServerGone, CorruptFrame, ServerError, AuthFailed or DeadlineExceeded; after a `cancel` the
        iterator simply ends.
        """
        with self._lock:
            if self._active is not None:
                raise RuntimeError(f"KVClient runs one fetch at a time; request {self._active} is running")
            self._active, self._cancel_at = request_id, None
            self._first_head_s, self._cell_wire = None, 0
            cancelled = request_id in self._precancelled
            self._precancelled.discard(request_id)
        clean = False
        try:
            if cancelled:
                clean = True
                return
            drain_wake(self._wake_r)
            sock, reader = self._connection()
            deadline = math.inf if deadline_s is None else deadline_s
            budget_ms = 0 if deadline_s is None else max(1, min(2**32 - 1, math.ceil(
                (deadline_s - time.perf_counter()) * 1000)))
            try:
                self._send(sock, P.encode(P.Fetch(request_id, context_key, chunk_tokens, codec, block, budget_ms)))
            except PeerGone as exc:
                raise ServerGone(f"sending FETCH: {exc}{self._why()}") from exc
            check = _CellCheck(request_id, block, chunk_tokens, expect, self.max_cell_bytes)
            try:
                yield from self._receive(reader, request_id, deadline, check)
            except ServerError as exc:
                clean = exc.request_id == request_id  # refused one request: the connection is still good
                raise
            clean = True
        finally:
            with self._lock:
                self._active, self._cancel_at = None, None
                if not clean:
                    self._drop()

    def _receive(self, reader: FrameReader, rid: int, deadline_s: float, check: _CellCheck) -> Iterator[CellPayload]:
        head: P.CellHeader | None = None
        parts: list[bytes] = []
        got = wire = 0
        last_s = head_s = time.perf_counter()
        while True:
            cancel_at = self._cancel_at
            limit = min(deadline_s, last_s + self.idle_timeout_s)
            if cancel_at is not None:
                limit = min(limit, cancel_at + self.cancel_drain_s)
            try:
                ftype, body = reader.read(limit)
            except Woken:
                drain_wake(self._wake_r)
                continue
            except DeadlineExceeded:
                if cancel_at is not None:
                    with self._lock:
                        self._drop()  # END did not come in time: start afresh next fetch
                    return
                why = "deadline" if time.perf_counter() >= deadline_s else f"{self.idle_timeout_s} s without a byte"
                raise DeadlineExceeded(f"request {rid}: {why}{self._why()}") from None
            except PeerGone as exc:
                if cancel_at is not None:
                    return
                raise ServerGone(f"request {rid}: {exc}{self._why()}") from exc
            last_s = time.perf_counter()
            if ftype == P.PIECE:
                if head is None:
                    raise CorruptFrame(f"request {rid}: PIECE outside a cell")
                parts.append(body)
                got += len(body)
                wire += P.HEADER.size + len(body)
                self._cell_wire = wire
                if got > head.payload_len:
                    raise CorruptFrame(f"request {rid}: cell ({head.chunk}, {head.layer}) payload overruns")
            else:
                msg = P.decode(ftype, body)
                if isinstance(msg, P.CellHeader):
                    if head is not None or msg.request_id != rid:
                        raise CorruptFrame(f"request {rid}: unexpected CELL for request {msg.request_id}")
                    check.header(msg)
                    head, parts, got, wire = msg, [], 0, P.HEADER.size + len(body)
                    head_s = last_s
                    self._cell_wire = wire
                    if self._first_head_s is None:
                        self._first_head_s = head_s
                elif isinstance(msg, P.Abort):
                    head = None
                elif isinstance(msg, P.End) and msg.request_id == rid:
                    check.end(msg, cancelled=self._cancel_at is not None)
                    return
                elif isinstance(msg, P.Error) and msg.request_id in (rid, 0):
                    if msg.request_id == 0:
                        with self._lock:
                            self._drop()
                    raise ServerError(msg.request_id, msg.code, msg.message)
                elif not isinstance(msg, P.Pong):
                    raise CorruptFrame(f"request {rid}: unexpected {P.FRAME_NAMES[ftype]} {msg}")
            if head is not None and got == head.payload_len:
                cell = _decode_cell(head, b"".join(parts), wire, last_s, head_s)
                check.delivered()
                head = None
                self._cell_wire = 0  # counted whole in the cell from here on
                if self._cancel_at is None:
                    yield cell


class _CellCheck:
    """What the cells of one fetch may be: the block's labels in order, bounded and consistent shapes."""

    def __init__(self, rid: int, block: CellBlock, chunk_tokens: int, expect: ShapeFn | None,
                 max_cell_bytes: int) -> None:
        self.rid, self.chunk_tokens, self.expect, self.max_cell_bytes = rid, chunk_tokens, expect, max_cell_bytes
        self.labels = block.cells()
        self.next = 0  # index of the label the next CELL must carry
        self.dims: tuple[int, int] | None = None  # (kv_heads, head_dim) of the first cell

    def header(self, head: P.CellHeader) -> None:
        where = f"request {self.rid}: cell ({head.chunk}, {head.layer})"
        if self.next >= len(self.labels) or (head.chunk, head.layer) != self.labels[self.next]:
            want = self.labels[self.next] if self.next < len(self.labels) else "none (all sent)"
            raise CorruptFrame(f"{where} arrived where cell {want} was due")
        shape = head.shape
        if self.expect is not None:
            want_shape = tuple(self.expect(head.chunk, head.layer))
            if shape != want_shape:
                raise CorruptFrame(f"{where} has shape {list(shape)}, expected {list(want_shape)}")
        else:
            if not 0 < shape[1] <= self.chunk_tokens or shape[0] <= 0 or shape[2] <= 0:
                raise CorruptFrame(f"{where} has shape {list(shape)} (chunks of {self.chunk_tokens} tokens)")
            if self.dims is not None and (shape[0], shape[2]) != self.dims:
                raise CorruptFrame(f"{where} has shape {list(shape)}, earlier cells {list(self.dims)}")
            self.dims = (shape[0], shape[2])
        decoded = 2 * shape[0] * shape[1] * shape[2] * head.dtype.itemsize
        if head.payload_len > self.max_cell_bytes or decoded > self.max_cell_bytes:
            raise CorruptFrame(f"{where}: payload {head.payload_len} bytes, decoded {decoded} bytes, "
                               f"above the limit {self.max_cell_bytes}")

    def delivered(self) -> None:
        self.next += 1

    def end(self, end: P.End, cancelled: bool) -> None:
        """CorruptFrame unless END agrees with what arrived: complete means every cell, cancelled means
        this client asked for it."""
        complete = self.next == len(self.labels)
        if end.cells != self.next or (end.status == P.END_COMPLETE) != complete or (
                end.status == P.END_CANCELLED and not cancelled):
            raise CorruptFrame(f"request {self.rid}: END says {end.cells} cells (status {end.status}), "
                               f"{self.next} of {len(self.labels)} arrived")


def _decode_cell(head: P.CellHeader, payload: bytes, wire: int, recv_s: float, head_s: float = 0.0) -> CellPayload:
    where = f"cell ({head.chunk}, {head.layer})"
    crc = P.cell_crc(head.request_id, head.chunk, head.layer, head.dtype, head.shape, head.k_len, head.codec, payload)
    if crc != head.crc32:
        raise CorruptFrame(f"{where}: crc32 {crc:08x} != header {head.crc32:08x}")
    try:
        codec = get_codec(head.codec)
        k = codec.decode(payload[: head.k_len], head.shape, head.dtype)
        v = codec.decode(payload[head.k_len :], head.shape, head.dtype)
    except Exception as exc:  # an unknown codec name or a payload the codec rejects
        raise CorruptFrame(f"{where}: cannot decode with codec {head.codec!r}: {exc}") from exc
    if k.shape != head.shape or v.shape != head.shape:
        raise CorruptFrame(f"{where}: decoded to {list(k.shape)}/{list(v.shape)}, header says {list(head.shape)}")
    return CellPayload(head.chunk, head.layer, k, v, wire, recv_s, head_s)
