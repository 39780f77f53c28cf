"""The KV server: a separate OS process serving KV cells of stored contexts over TCP (sparkv.executor.net.protocol).

Run as `python -m sparkv.executor.net.server --root DIR [--host H] [--port P] [--trace FILE] [--fault ...]`;
it prints `PORT <n>` on stdout once listening and reads control lines on stdin (`clock <t0>`: trace
time 0 is perf_counter instant t0, acknowledged with a `CLOCK` line; `stop`); stdin closing (its parent
died) stops it too. Start it from Python with `start_server` (sparkv.executor.net.launch).

Each connection gets a reader thread (FETCH, CANCEL, PING) and a worker thread that streams the cells
of its FETCHes in order, each as a CELL header and PIECE frames, checking for a CANCEL before every
piece. Bad requests get an ERROR frame; malformed or oversized frames get an ERROR frame and the
connection is closed; other clients are unaffected. With `--trace` every piece waits for the trace
to carry it (sender-side pacing, sparkv.executor.net.pacing). Faults for tests: `die-after-bytes=N`
(the process exits after sending N bytes in all) and `corrupt-cell=c,l` (one payload byte flipped after
the crc was computed).

It logs to stderr (the launcher keeps it as the server's log): one line per connection opened and
closed, per FETCH answered (bytes, cells, seconds) and per fault, each stamped with perf_counter (the
clock the client and the link use), so a client's failure can be matched with what the server saw.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from sparkv.executor.net import protocol as P
from sparkv.executor.net.codecs import get_codec
from sparkv.executor.net.io import FrameReader, limit_unsent, send_all
from sparkv.executor.net.launch import ServerHandle, start_server
from sparkv.executor.net.pacing import Pacer, _pace_until, load_trace_arg
from sparkv.executor.net.store import RequestRefused, StoreCache

__all__ = ["Faults", "KVServer", "ServerHandle", "main", "start_server"]

IDLE_S = 3600.0  # a connection that sends no frame for this long is closed
SEND_STALL_S = 60.0  # a client that reads nothing for this long (or a link carrying nothing) is dropped
POLL_S = 0.2  # accept loop and stdin checks: how soon a stop is noticed


def say(message: str) -> None:
    """One log line on stderr, stamped with perf_counter."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.perf_counter():.3f} {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Faults:
    """Injected faults, for tests."""

    die_after_bytes: int | None = None  # exit the process once this many bytes have been sent
    corrupt_cells: frozenset[tuple[int, int]] = field(default_factory=frozenset)  # (chunk, layer)

    @classmethod
    def parse(cls, specs: list[str]) -> Faults:
        die, corrupt = None, set()
        for spec in specs:
            name, _, value = spec.partition("=")
            if name == "die-after-bytes" and value.isdigit():
                die = int(value)
            elif name == "corrupt-cell" and len(parts := value.split(",")) == 2 and all(p.isdigit() for p in parts):
                corrupt.add((int(parts[0]), int(parts[1])))
            else:
                raise ValueError(f"bad fault {spec!r}: use die-after-bytes=N or corrupt-cell=c,l")
        return cls(die, frozenset(corrupt))


class KVServer:
    """Listens on (host, port) and serves every connection on its own threads until `stop` is set."""

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0,
                 pacer: Pacer | None = None, faults: Faults | None = None) -> None:
        self.stores = StoreCache(root)
        self.pacer = pacer
        self.faults = faults or Faults()
        self.stop = threading.Event()
        self.listener = socket.create_server((host, port), reuse_port=False)
        self.port: int = self.listener.getsockname()[1]
        self._sent_bytes = 0
        self._sent_lock = threading.Lock()

    def serve(self) -> None:
        """Accept connections until stopped."""
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([self.listener], [], [], POLL_S)
                if ready:
                    sock, peer = self.listener.accept()
                    _Connection(self, sock, f"{peer[0]}:{peer[1]}").start()
        finally:
            self.listener.close()

    def send(self, sock: socket.socket, data: bytes) -> None:
        """Every byte to a client passes here (so `die-after-bytes` can cut the stream anywhere)."""
        die = self.faults.die_after_bytes
        if die is None:
            send_all(sock, data, time.perf_counter() + SEND_STALL_S, self.stop)
            return
        with self._sent_lock:
            allowed = die - self._sent_bytes
            send_all(sock, data[: max(0, allowed)], time.perf_counter() + SEND_STALL_S, self.stop)
            self._sent_bytes += len(data)
            if len(data) >= allowed:
                say(f"fault die-after-bytes={die}: exiting")
                os._exit(17)  # the injected crash: no cleanup, no goodbye


class _Connection:
    """One client: a reader thread for requests, a worker thread streaming FETCH answers in order."""

    def __init__(self, server: KVServer, sock: socket.socket, peer: str = "?") -> None:
        self.server, self.sock, self.peer = server, sock, peer
        sock.settimeout(SEND_STALL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limit_unsent(sock)
        self.send_lock = threading.Lock()
        self.fetches: queue.Queue[P.Fetch | None] = queue.Queue()
        self.cancels: dict[int, threading.Event] = {}  # queued or running FETCHes by request id
        self.closed = threading.Event()

    def start(self) -> None:
        say(f"connection from {self.peer}")
        threading.Thread(target=self._read_loop, name="kv-reader", daemon=True).start()
        threading.Thread(target=self._work_loop, name="kv-worker", daemon=True).start()

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.server.send(self.sock, data)

    def _close(self, why: str = "") -> None:
        if not self.closed.is_set():
            self.closed.set()
            say(f"connection from {self.peer} closed{': ' + why if why else ''}")
            for event in list(self.cancels.values()):
                event.set()
            self.fetches.put(None)
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the other thread

    def _read_loop(self) -> None:
        reader = FrameReader(self.sock)
        try:
            while not self.closed.is_set():
                ftype, body = reader.read(time.perf_counter() + IDLE_S)
                msg = P.decode(ftype, body)
                if isinstance(msg, P.Fetch):
                    if msg.request_id in self.cancels:
                        self.send(P.encode(P.Error(msg.request_id, P.E_BAD_REQUEST, "request id already in use")))
                        continue
                    self.cancels[msg.request_id] = threading.Event()
                    self.fetches.put(msg)
                elif isinstance(msg, P.Cancel):
                    event = self.cancels.get(msg.request_id)
                    if event is not None:
                        event.set()
                elif isinstance(msg, P.Ping):
                    self.send(P.encode(P.Pong(msg.nonce)))
                else:
                    raise P.CorruptFrame(f"a client may not send {P.FRAME_NAMES[ftype]} frames")
        except P.CorruptFrame as exc:
            say(f"connection from {self.peer}: bad frame: {exc}")
            with contextlib.suppress(P.NetError, OSError):
                self.send(P.encode(P.Error(0, exc.code, str(exc))))
                self._discard_input()
        except P.NetError as exc:  # the client left, or went quiet for IDLE_S
            self._close(f"reading: {exc}")
        finally:
            self._close()
            self.sock.close()

    def _discard_input(self, for_s: float = 0.2) -> None:
        """After an ERROR for a bad frame: stop sending, read and drop what the client still sends for a
        moment, so closing does not reset the connection before the client has read the ERROR."""
        self.sock.shutdown(socket.SHUT_WR)
        deadline = time.perf_counter() + for_s
        while (remaining := deadline - time.perf_counter()) > 0:
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if ready and not self.sock.recv(65536):
                return

    def _work_loop(self) -> None:
        try:
            while not self.closed.is_set():
                try:
                    fetch = self.fetches.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                if fetch is None:
                    return
                try:
                    self._serve(fetch, self.cancels[fetch.request_id])
                finally:
                    self.cancels.pop(fetch.request_id, None)
        except P.NetError as exc:  # the client stopped reading, left, or the link carried nothing
            self._close(f"sending: {exc}")

    def _serve(self, f: P.Fetch, cancel: threading.Event) -> None:
        rid = f.request_id
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
            say(f"request {rid} refused: {exc.message}")
            self.send(P.encode(P.Error(rid, exc.code, exc.message)))
            return
        t0, total, cells = time.perf_counter(), 0, 0
        for c, layer in f.block.cells():
            if cancel.is_set():
                break
            try:
                k, v = store.cell(f.chunk_tokens, c, layer)  # [kv_heads, tokens, head_dim] each
                kb, vb = codec.encode(k, kind="k", layer=layer), codec.encode(v, kind="v", layer=layer)
            except Exception as exc:
                code = exc.code if isinstance(exc, RequestRefused) else P.E_INTERNAL
                say(f"request {rid}: cell ({c}, {layer}) failed: {exc!r}")
                self.send(P.encode(P.Error(rid, code, f"cell ({c}, {layer}): {exc}")))
                return
            payload = kb + vb
            crc = zlib.crc32(payload)
            if (c, layer) in self.server.faults.corrupt_cells:
                payload = payload[:-1] + bytes([payload[-1] ^ 0xFF]) if payload else payload
            head = P.encode(P.CellHeader(rid, c, layer, k.dtype, (k.shape[0], k.shape[1], k.shape[2]),
                                         f.codec, len(payload), len(kb), crc))
            sent, complete = self._send_cell(head, payload, cancel)
            total += sent
            if not complete:
                if sent:  # a cell is open: tell the client to drop it
                    abort = P.encode(P.Abort(rid))
                    self.send(abort)
                    total += len(abort)
                if not cancel.is_set():  # the paced link carried nothing for SEND_STALL_S
                    say(f"request {rid}: link stalled (the trace carried nothing for {SEND_STALL_S} s)")
                    self.send(P.encode(P.Error(rid, P.E_INTERNAL, "link stalled: trace carried nothing")))
                    return
                break
            cells += 1
        status = P.END_COMPLETE if cells == f.block.num_cells else P.END_CANCELLED
        say(f"request {rid} {f.block}: {'complete' if status == P.END_COMPLETE else 'cancelled'}, "
            f"{cells} cells, {total} bytes in {time.perf_counter() - t0:.3f} s")
        self.send(P.encode(P.End(rid, total, cells, status)))

    def _send_cell(self, head: bytes, payload: bytes, cancel: threading.Event) -> tuple[int, bool]:
        """Send a CELL header and its PIECEs; (bytes sent, False if cancelled or stalled part-way)."""
        pacer, sent, offset, view = self.server.pacer, 0, 0, memoryview(payload)
        frames = [head]
        while offset < len(payload) or frames:
            if not frames:
                n = pacer.piece_bytes() if pacer is not None else P.PIECE_BYTES
                frames.append(P.piece(view[offset : offset + n]))
                offset += n
            data = frames.pop()
            if pacer is not None:
                when = pacer.reserve(len(data))
                if not _pace_until(when, cancel, self.server.stop, time.perf_counter() + SEND_STALL_S):
                    return sent, False
            if cancel.is_set():
                return sent, False
            self.send(data)
            sent += len(data)
        return sent, True


def _control_loop(server: KVServer) -> None:
    """Read `clock <t0>` / `stop` lines from stdin; EOF (the parent is gone) stops the server."""
    fd = sys.stdin.fileno()
    buf = b""
    while not server.stop.is_set():
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            say("stdin closed (the parent is gone): stopping")
            server.stop.set()
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd, _, arg = line.decode().strip().partition(" ")
            if cmd == "clock":
                if server.pacer is not None:
                    server.pacer.set_clock(float(arg))
                print("CLOCK", flush=True)  # the parent waits for this before its next request
            elif cmd == "stop":
                say("stop requested")
                server.stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparkv.executor.net.server", description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="folder holding one KV store directory per context key")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed as 'PORT <n>')")
    ap.add_argument("--trace", help="pace sends to this trace (JSON times_s/rates_bps/duration_s, or a trace file)")
    ap.add_argument("--fault", action="append", default=[], help="die-after-bytes=N | corrupt-cell=c,l")
    args = ap.parse_args(argv)
    pacer = Pacer(load_trace_arg(args.trace)) if args.trace else None
    try:
        get_codec("raw")  # import the codec registry now, not during the first request
    except ImportError as exc:  # requests will retry the import and report it
        print(f"codec registry unavailable: {exc!r}", file=sys.stderr)
    server = KVServer(args.root, args.host, args.port, pacer, Faults.parse(args.fault))
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    threading.Thread(target=_control_loop, args=(server,), name="kv-control", daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    paced = f", pacing to {args.trace}" if args.trace else ""
    say(f"pid {os.getpid()} listening on {args.host}:{server.port}{paced}")
    server.serve()
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
