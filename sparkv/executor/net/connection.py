"""One KV server connection as a non-blocking state machine, stepped by the server's event loop.

Bounded in every direction (`Limits`): a connection holds at most `max_pipelined` queued FETCHes, one
cell being sent and about `output_bytes` of unsent frames; past either bound the loop stops reading it
(the client's TCP window fills: backpressure, not memory). A handshake, and any frame once begun, must
complete within `header_timeout_s`; a connection with nothing to do for `idle_timeout_s` and one whose
client reads nothing for `send_stall_s` are closed. A FETCH with a deadline is abandoned at it (ERROR
E_DEADLINE). Per connection the server holds at most

    RECV_BYTES + MAX_REQUEST_FRAME_BYTES            (input)
  + output_bytes + MAX_FRAME_BYTES + HEADER.size   (unsent frames)
  + 3 x the largest cell (its tiles read, K and V, and its encoding)
  + max_pipelined x ~70 KiB                         (queued FETCHes, a key of at most 64 KiB each)

so the whole server is bounded by max_clients times that, plus the interpreter (`Limits.bound_bytes`).
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import random
import secrets
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sparkv.executor.net import protocol as P
from sparkv.executor.net.codecs import WireCodec, get_codec
from sparkv.executor.net.io import limit_unsent
from sparkv.executor.net.pacing import Pacer
from sparkv.executor.net.store import OpenStore, RequestRefused, StoreCache
from sparkv.executor.net.storefmt import StoreCorrupt

log = logging.getLogger("sparkv.kvserver")
RECV_BYTES = 64 * 1024
LINGER_S = 0.5  # after an ERROR that closes the connection: read and drop input this long before closing


@dataclass(frozen=True)
class Limits:
    """Every bound the server keeps (see the module docstring for the memory they imply)."""

    max_clients: int = 256  # open connections; one more is refused with ERROR E_BUSY
    max_pipelined: int = 16  # queued FETCHes per connection; beyond, the connection is not read
    output_bytes: int = 512 * 1024  # unsent bytes per connection before the server stops adding more
    header_timeout_s: float = 10.0  # a handshake or a begun frame must complete within this
    idle_timeout_s: float = 3600.0  # a connection with nothing queued, running or unsent
    send_stall_s: float = 60.0  # a client that takes no byte (or a paced link carrying none) this long

    def bound_bytes(self, max_cell_bytes: int) -> int:
        """Most bytes the connections may hold, for cells of at most `max_cell_bytes` (K and V together)."""
        per = (RECV_BYTES + P.MAX_REQUEST_FRAME_BYTES + self.output_bytes + P.MAX_FRAME_BYTES + P.HEADER.size
               + 3 * max_cell_bytes + self.max_pipelined * P.MAX_REQUEST_FRAME_BYTES)
        return self.max_clients * per


class KVServer(Protocol):
    """What a connection uses of its server (sparkv.executor.net.server.KVServer)."""

    @property
    def stores(self) -> StoreCache: ...

    @property
    def pacer(self) -> Pacer | None: ...

    @property
    def faults(self) -> Any: ...  # server.Faults

    @property
    def limits(self) -> Limits: ...

    @property
    def secret(self) -> bytes | None: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def sel(self) -> selectors.BaseSelector: ...

    def count_sent(self, n: int) -> int: ...

    def sent(self, n: int) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class _Stream:
    """The answer to one FETCH: CELL headers and PIECEs, paced, then END (or ERROR)."""

    def __init__(self, conn: Connection, f: P.Fetch, store: OpenStore, codec: WireCodec, now: float) -> None:
        self.conn, self.f, self.store, self.codec = conn, f, store, codec
        self.rid = f.request_id
        self.labels = f.block.cells()
        self.deadline = now + f.deadline_ms / 1000 if f.deadline_ms else float("inf")
        self.idx = 0  # next cell of `labels`
        self.payload: memoryview | None = None  # the current cell's payload, from its CELL header's making
        self.open_cell = False  # its CELL header has gone out (a cancel must ABORT it)
        self._header_pending = False
        self.offset = 0  # payload bytes framed so far
        self.pending: bytes | None = None  # the next frame, waiting for the pacer
        self.release_at = 0.0
        self.cancelled = False
        self.cells = self.total = 0
        self.t0 = self.last_progress = now
        self.stall_until = 0.0  # an injected stall holds the stream until then
        faults = conn.server.faults
        if faults.stall_rate and conn.server.rng.random() < faults.stall_rate:
            self.stall_at_cell = conn.server.rng.randrange(len(self.labels))
        else:
            self.stall_at_cell = -1

    def next(self, now: float) -> tuple[list[bytes], bool] | None:
        """(frames to send, finished) or None when the next frame is not due yet (see `wake_at`)."""
        if self.cancelled or now >= self.deadline:
            frames = [P.encode(P.Abort(self.rid))] if self.open_cell else []
            if self.cancelled:
                frames.append(P.encode(P.End(self.rid, self.total + sum(map(len, frames)), self.cells,
                                             P.END_CANCELLED)))
                log.info("request %d %s: cancelled, %d cells, %d bytes", self.rid, self.f.block, self.cells, self.total)
            else:
                frames.append(P.encode(P.Error(self.rid, P.E_DEADLINE, f"deadline of {self.f.deadline_ms} ms passed "
                                                                      f"after {self.cells} cells")))
                log.info("request %d: deadline passed after %d cells", self.rid, self.cells)
            return frames, True
        if now < self.stall_until:
            return None
        if self.pending is None:
            made = self._make(now)
            if made is not None:
                return made
        assert self.pending is not None
        if now < self.release_at:
            if now - self.last_progress > self.conn.server.limits.send_stall_s:
                frames = [P.encode(P.Abort(self.rid))] if self.open_cell else []
                stall_s = self.conn.server.limits.send_stall_s
                log.warning("request %d: link stalled (the trace carried nothing for %.0f s)", self.rid, stall_s)
                frames.append(P.encode(P.Error(self.rid, P.E_INTERNAL, "link stalled: trace carried nothing")))
                return frames, True
            return None
        frame, self.pending = self.pending, None
        self.last_progress = now
        self.total += len(frame)
        if self._header_pending:
            self._header_pending, self.open_cell = False, True
        if self.payload is not None and self.offset >= len(self.payload):
            self.payload, self.open_cell = None, False
            self.cells += 1
            self.idx += 1
            if self.idx == len(self.labels):
                end = P.encode(P.End(self.rid, self.total, self.cells, P.END_COMPLETE))
                log.info("request %d %s: complete, %d cells, %d bytes in %.3f s", self.rid, self.f.block,
                         self.cells, self.total, now - self.t0)
                return [frame, end], True
        return [frame], False

    @property
    def wake_at(self) -> float:
        if self.stall_until:
            return self.stall_until
        return self.release_at if self.pending is not None else 0.0

    def _make(self, now: float) -> tuple[list[bytes], bool] | None:
        """Build the next frame into `pending` (None), or the frames that end the stream on an error."""
        server = self.conn.server
        if self.payload is None:
            c, layer = self.labels[self.idx]
            if self.idx == self.stall_at_cell and not self.stall_until:
                self.stall_until = now + server.faults.stall_s
                self.stall_at_cell = -1
                log.info("request %d: fault stall for %.1f s before cell (%d, %d)", self.rid, server.faults.stall_s,
                         c, layer)
                return [], False
            try:
                k, v = self.store.cell(self.f.chunk_tokens, c, layer)  # [kv_heads, tokens, head_dim], verified
                kb, vb = self.codec.encode(k, kind="k", layer=layer), self.codec.encode(v, kind="v", layer=layer)
            except Exception as exc:
                code = P.E_INTERNAL
                if isinstance(exc, StoreCorrupt):
                    code = P.E_STORE_CORRUPT
                    server.stores.forget(self.f.context_key)
                log.warning("request %d: cell (%d, %d) failed: %r", self.rid, c, layer, exc)
                return [P.encode(P.Error(self.rid, code, f"cell ({c}, {layer}): {exc}"))], True
            payload = kb + vb
            shape = (k.shape[0], k.shape[1], k.shape[2])
            crc = P.cell_crc(self.rid, c, layer, k.dtype, shape, len(kb), self.f.codec, payload)
            frame = P.encode(P.CellHeader(self.rid, c, layer, k.dtype, shape, self.f.codec, len(payload), len(kb), crc))
            self.payload, self.offset, self._header_pending = memoryview(payload), 0, True
        else:
            pacer = server.pacer
            n = pacer.piece_bytes() if pacer is not None else P.PIECE_BYTES
            frame = P.piece(self.payload[self.offset : self.offset + n])
            self.offset += n
            c, layer = self.labels[self.idx]
            if (c, layer) in server.faults.corrupt_cells and self.offset >= len(self.payload):
                frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])  # on the wire, after every checksum
        if server.faults.corrupt_rate and server.rng.random() < server.faults.corrupt_rate:
            i = server.rng.randrange(len(frame))
            frame = frame[:i] + bytes([frame[i] ^ (1 << server.rng.randrange(8))]) + frame[i + 1 :]
        self.pending = frame
        # a response's first frame gets no credit for idle link time (see `pacing`)
        self.release_at = server.pacer.reserve(len(frame), fresh=self.total == 0) if server.pacer is not None else now
        return None


class Connection:
    """One client's socket, input and output buffers, queued FETCHes and the stream being sent."""

    def __init__(self, server: KVServer, sock: socket.socket, peer: str, now: float) -> None:
        self.server, self.sock, self.peer = server, sock, peer
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limit_unsent(sock)
        self.inbuf = bytearray()
        self.out: collections.deque[memoryview] = collections.deque()
        self.out_bytes = 0
        self.fetches: collections.deque[P.Fetch] = collections.deque()
        self.ids: set[int] = set()  # request ids queued or running
        self.cancelled: set[int] = set()  # queued ids cancelled before they ran
        self.stream: _Stream | None = None
        self.authed = server.secret is None
        self.nonce = secrets.token_bytes(P.NONCE_BYTES)
        self.opened_s = self.last_in_s = self.last_out_s = now
        self.partial_since: float | None = None
        self.closing_at: float | None = None  # an ERROR ends it: flush, then linger until this instant
        self.shut = False
        self.closed = False
        self.mask = 0
        self.wake_at = float("inf")
        self._queue(P.encode(P.Hello(server.secret is not None, self.nonce)))
        self._update_mask(now)

    # ---- events ----

    def on_events(self, mask: int) -> None:
        if self.closed:
            return
        if mask & selectors.EVENT_READ:
            self._on_read()
        if not self.closed and mask & selectors.EVENT_WRITE:
            self._on_write()

    def _on_read(self) -> None:
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close(f"reading: {exc}")
            return
        if not data:
            self.close("closed by the client" if self.closing_at is None else "")
            return
        self.last_in_s = time.perf_counter()
        if self.closing_at is not None:
            return  # lingering after an error: input is read and dropped
        self.inbuf += data
        self._parse(self.last_in_s)

    def _on_write(self) -> None:
        while self.out:
            view = self.out[0]
            allowed = self.server.count_sent(len(view))
            try:
                n = self.sock.send(view[:allowed]) if allowed else 0
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.close(f"sending: {exc}")
                return
            self.last_out_s = time.perf_counter()
            self.out_bytes -= n
            if n == len(view):
                self.out.popleft()
            else:
                self.out[0] = view[n:]
            self.server.sent(n)
            if n < len(view):
                return

    # ---- parsing requests ----

    def _parse(self, now: float) -> None:
        """Handle every complete frame in the input, until the FETCH queue or the output is full."""
        limits = self.server.limits
        while self.closing_at is None and len(self.fetches) < limits.max_pipelined \
                and self.out_bytes < limits.output_bytes:
            if len(self.inbuf) < P.HEADER.size:
                break
            head = bytes(self.inbuf[: P.HEADER.size])
            try:
                ftype, length = P.parse_header(head, P.MAX_REQUEST_FRAME_BYTES)
                end = P.HEADER.size + length
                if len(self.inbuf) < end:
                    break
                body = bytes(self.inbuf[P.HEADER.size : end])
                del self.inbuf[:end]
                P.check_frame(head, body)
                if ftype not in P.CLIENT_FRAMES:
                    raise P.CorruptFrame(f"a client may not send {P.FRAME_NAMES[ftype]} frames")
                self._handle(P.decode(ftype, body), now)
            except P.CorruptFrame as exc:
                self._fail(exc.code, f"bad frame: {exc}")
                return
        self.partial_since = (self.partial_since or now) if self.inbuf else None

    def _handle(self, msg: P.Message, now: float) -> None:
        if not self.authed:
            if not isinstance(msg, P.Auth):
                self._fail(P.E_AUTH, "authentication required: AUTH first")
            elif not hmac.compare_digest(msg.mac, P.mac(self.server.secret or b"", b"client", self.nonce)):
                self._fail(P.E_AUTH, "wrong shared secret")
            else:
                self.authed = True
                self._queue(P.encode(P.Welcome(P.mac(self.server.secret or b"", b"server", msg.nonce))))
            return
        if isinstance(msg, P.Fetch):
            if msg.request_id in self.ids:
                self._queue(P.encode(P.Error(msg.request_id, P.E_BAD_REQUEST, "request id already in use")))
            else:
                self.ids.add(msg.request_id)
                self.fetches.append(msg)
        elif isinstance(msg, P.Cancel):
            if self.stream is not None and self.stream.rid == msg.request_id:
                self.stream.cancelled = True
            elif msg.request_id in self.ids:
                self.cancelled.add(msg.request_id)
        elif isinstance(msg, P.Ping):
            self._queue(P.encode(P.Pong(msg.nonce)))
        else:
            self._fail(P.E_BAD_FRAME, f"unexpected {type(msg).__name__} frame")

    # ---- producing answers ----

    def _begin(self, f: P.Fetch, now: float) -> _Stream | None:
        if f.request_id in self.cancelled:
            self.cancelled.discard(f.request_id)
            self.ids.discard(f.request_id)
            self._queue(P.encode(P.End(f.request_id, 0, 0, P.END_CANCELLED)))
            return None
        try:
            store = self.server.stores.get(f.context_key)
            store.check(f.chunk_tokens, f.block)
            try:
                codec = get_codec(f.codec)
            except ImportError as exc:
                raise RequestRefused(P.E_INTERNAL, f"codec registry unavailable: {exc!r}") from exc
            except Exception as exc:  # the registry raises UserError or ValueError
                raise RequestRefused(P.E_BAD_CODEC, f"codec {f.codec!r}: {exc}") from exc
        except RequestRefused as exc:
            log.info("request %d refused: %s", f.request_id, exc.message)
            self.ids.discard(f.request_id)
            self._queue(P.encode(P.Error(f.request_id, exc.code, exc.message)))
            return None
        return _Stream(self, f, store, codec, now)

    def _produce(self, now: float) -> None:
        limits = self.server.limits
        self.wake_at = float("inf")
        while self.closing_at is None and self.out_bytes < limits.output_bytes:
            if self.stream is None:
                if not self.fetches:
                    return
                self.stream = self._begin(self.fetches.popleft(), now)
                continue
            got = self.stream.next(now)
            if got is None:
                self.wake_at = self.stream.wake_at
                return
            frames, finished = got
            for frame in frames:
                self._queue(frame)
            if finished:
                self.ids.discard(self.stream.rid)
                self.stream = None

    # ---- housekeeping ----

    def step(self, now: float) -> None:
        """Timeouts, more input parsed, more output made; the selector told what to wait for."""
        if self.closed:
            return
        limits = self.server.limits
        if self.closing_at is not None:
            if not self.out and not self.shut:
                self.shut = True
                self.closing_at = now + LINGER_S
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)
            if now >= self.closing_at and (self.shut or now - self.last_out_s > limits.header_timeout_s):
                self.close("")
                return
        else:
            if not self.authed and now - self.opened_s > limits.header_timeout_s:
                self.close(f"no AUTH within {limits.header_timeout_s} s")
                return
            if self.partial_since is not None and now - self.partial_since > limits.header_timeout_s:
                self.close(f"a frame begun {limits.header_timeout_s} s ago is still incomplete")
                return
            busy = self.stream is not None or self.fetches or self.out
            if not busy and now - max(self.last_in_s, self.last_out_s) > limits.idle_timeout_s:
                self.close(f"idle for {limits.idle_timeout_s} s")
                return
            self._parse(now)
            self._produce(now)
            if self.out:
                self._on_write()
                if self.closed:
                    return
        if self.out and now - self.last_out_s > limits.send_stall_s:
            self.close(f"the client read nothing for {limits.send_stall_s} s")
            return
        self._update_mask(now)

    def _update_mask(self, now: float) -> None:
        limits = self.server.limits
        reading = self.closing_at is not None or (
            len(self.fetches) < limits.max_pipelined and self.out_bytes < limits.output_bytes)
        mask = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if self.out else 0)
        if mask == self.mask:
            return
        if self.mask == 0:
            self.server.sel.register(self.sock, mask, self)
        elif mask == 0:
            self.server.sel.unregister(self.sock)
        else:
            self.server.sel.modify(self.sock, mask, self)
        self.mask = mask

    def _queue(self, frame: bytes) -> None:
        if frame:
            if not self.out:
                self.last_out_s = time.perf_counter()
            self.out.append(memoryview(frame))
            self.out_bytes += len(frame)

    def _fail(self, code: int, why: str) -> None:
        """ERROR then close: stop reading requests, flush, half-close, and drop input for a moment so
        closing does not reset the connection before the client has read the ERROR."""
        log.warning("connection from %s: %s", self.peer, why)
        self.stream = None
        self.fetches.clear()
        self._queue(P.encode(P.Error(0, code, why)))
        self.closing_at = time.perf_counter() + LINGER_S

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.mask:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.server.sel.unregister(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()
        self.server.forget(self)
        log.info("connection from %s closed%s", self.peer, f": {why}" if why else "")
