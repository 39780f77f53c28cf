"""The KV server: a separate OS process serving KV cells of stored contexts over TCP (sparkv.executor.net.protocol).

Run as `python -m sparkv.executor.net.server --root DIR [--host H] [--port P] [--trace FILE] [--fault ...]`;
it prints `PORT <n>` on stdout once listening and reads control lines on stdin (`clock <t0>`: trace
time 0 is perf_counter instant t0, acknowledged with a `CLOCK` line; `stop`); stdin closing (its parent
died) stops it too. Start it from Python with `start_server` (sparkv.executor.net.launch).

One thread runs every connection: a `selectors` event loop (sparkv.executor.net.connection holds the
per-connection state machine), so the server's threads do not grow with its clients (two in all: the
loop and the control reader). Every resource is bounded by `Limits`: connections (one more is told
ERROR E_BUSY and closed), queued FETCHes and unsent output per connection (beyond them the server stops
reading that client: TCP pushes back), time to finish a handshake or a started frame, idle time, and
time a client may read nothing. Out of descriptors, it still answers one refusal (a spare descriptor
is kept for it) and then pauses accepting briefly instead of dying. With `--trace` every frame waits
for the trace to carry it (sender-side pacing, sparkv.executor.net.pacing).

Authentication: with a shared secret (`--secret-file`, or sparkv.executor.net.auth's environment) every
connection must pass a mutual HMAC challenge-response first; a server bound to a non-loopback address
refuses to start without one, and warns when bound to a wildcard address.

Faults for tests: `die-after-bytes=N` (the process exits after sending N bytes in all),
`corrupt-cell=c,l` (one payload byte flipped on the wire), `corrupt-rate=P` (each frame a cell sends has
one random byte flipped with probability P), `stall-rate=P` and `stall-s=S` (a FETCH pauses mid-stream
for S seconds with probability P), `seed=N`.

It logs through `logging` to stderr (the launcher keeps it as the server's log), one whole line per
record, stamped with perf_counter (the clock the client and the link use).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sparkv.executor.net import protocol as P
from sparkv.executor.net.auth import SecretError, is_loopback, is_wildcard, secret_from_env
from sparkv.executor.net.codecs import get_codec
from sparkv.executor.net.connection import Connection, Limits
from sparkv.executor.net.launch import ServerHandle, start_server
from sparkv.executor.net.pacing import Pacer, load_trace_arg
from sparkv.executor.net.store import StoreCache

__all__ = ["Faults", "KVServer", "Limits", "ServerHandle", "main", "start_server"]

log = logging.getLogger("sparkv.kvserver")
POLL_S = 0.2  # longest select wait: how soon a stop or a timeout is noticed
ACCEPT_BATCH = 64  # connections accepted per loop turn at most
ACCEPT_PAUSE_S = 0.1  # after running out of descriptors, accept nothing for this long
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class Faults:
    """Injected faults, for tests and the soak."""

    die_after_bytes: int | None = None  # exit the process once this many bytes have been sent
    corrupt_cells: frozenset[tuple[int, int]] = field(default_factory=frozenset)  # (chunk, layer)
    corrupt_rate: float = 0.0  # probability that a frame of a cell gets one random byte flipped
    stall_rate: float = 0.0  # probability that a FETCH pauses mid-stream
    stall_s: float = 2.0  # for this long
    seed: int = 0

    @classmethod
    def parse(cls, specs: list[str]) -> Faults:
        values: dict[str, object] = {}
        corrupt: set[tuple[int, int]] = set()
        for spec in specs:
            name, _, value = spec.partition("=")
            try:
                if name == "die-after-bytes" and value.isdigit():
                    values["die_after_bytes"] = int(value)
                elif name == "corrupt-cell" and len(parts := value.split(",")) == 2 and all(p.isdigit() for p in parts):
                    corrupt.add((int(parts[0]), int(parts[1])))
                elif name in ("corrupt-rate", "stall-rate") and 0.0 <= float(value) <= 1.0:
                    values[name.replace("-", "_")] = float(value)
                elif name == "stall-s" and 0.0 <= float(value) < 3600:
                    values["stall_s"] = float(value)
                elif name == "seed" and value.isdigit():
                    values["seed"] = int(value)
                else:
                    raise ValueError(value)
            except ValueError:
                raise ValueError(f"bad fault {spec!r}: use die-after-bytes=N, corrupt-cell=c,l, corrupt-rate=P, "
                                 "stall-rate=P, stall-s=S or seed=N") from None
        return cls(corrupt_cells=frozenset(corrupt), **values)  # type: ignore[arg-type]


class KVServer:
    """Listens on (host, port) and serves every connection from one event loop until `stop` is set."""

    def __init__(self, root: Path | str, host: str = "127.0.0.1", port: int = 0, pacer: Pacer | None = None,
                 faults: Faults | None = None, limits: Limits | None = None, secret: bytes | None = None) -> None:
        self.stores = StoreCache(root)
        self.pacer = pacer
        self.faults = faults or Faults()
        self.limits = limits or Limits()
        self.secret = secret
        self.rng = random.Random(self.faults.seed)
        self.stop = threading.Event()
        self.listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.conns: set[Connection] = set()
        self.sent_bytes = 0  # every byte to every client (for die-after-bytes)
        self.refused = 0  # connections refused (full, or out of descriptors)
        self._spare_fd: int | None = _spare()
        self._accept_paused_until = 0.0
        self._last_exhausted_log = -1e9

    # ---- the loop ----

    def serve(self) -> None:
        """Run the event loop until stopped."""
        try:
            while not self.stop.is_set():
                now = time.perf_counter()
                timeout = POLL_S
                for conn in self.conns:
                    timeout = min(timeout, max(0.0, conn.wake_at - now))
                for key, mask in self.sel.select(timeout):
                    if key.data is None:
                        self._accept()
                    else:
                        key.data.on_events(mask)
                now = time.perf_counter()
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self.sel.register(self.listener, selectors.EVENT_READ, None)
                for conn in list(self.conns):
                    conn.step(now)
        finally:
            for conn in list(self.conns):
                conn.close("server stopping")
            self.sel.close()
            self.listener.close()
            self.stores.close()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._out_of_descriptors(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                log.warning("accept failed: %s", exc)
                return
            name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            if len(self.conns) >= self.limits.max_clients:
                self.refused += 1
                _refuse(sock, f"server full: {len(self.conns)} connections (max_clients {self.limits.max_clients})")
                log.warning("refused %s: %d connections already", name, len(self.conns))
                continue
            try:
                conn = Connection(self, sock, name, time.perf_counter())
            except OSError as exc:  # setting it up needed a descriptor (the selector's) or memory
                self.refused += 1
                _refuse(sock, f"server cannot take a connection now: {exc.strerror or exc}")
                continue
            self.conns.add(conn)
            log.info("connection from %s (%d open)", name, len(self.conns))

    def _out_of_descriptors(self, exc: OSError) -> None:
        """Answer one waiting client with a refusal through the spare descriptor, then pause accepting."""
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                sock, _ = self.listener.accept()
                self.refused += 1
                _refuse(sock, f"server out of descriptors ({exc.strerror})")
            except OSError:
                pass
            self._spare_fd = _spare()
        now = time.perf_counter()
        if now - self._last_exhausted_log > 5.0:
            self._last_exhausted_log = now
            log.warning("accept: %s (%d connections open): refusing new ones for now", exc.strerror, len(self.conns))
        if not self._accept_paused_until:
            self.sel.unregister(self.listener)
            self._accept_paused_until = now + ACCEPT_PAUSE_S

    def forget(self, conn: Connection) -> None:
        self.conns.discard(conn)

    def count_sent(self, n: int) -> int:
        """Bytes of `n` that may go out before the die-after-bytes fault ends the process."""
        die = self.faults.die_after_bytes
        if die is None:
            return n
        return max(0, min(n, die - self.sent_bytes))

    def sent(self, n: int) -> None:
        self.sent_bytes += n
        die = self.faults.die_after_bytes
        if die is not None and self.sent_bytes >= die:
            log.warning("fault die-after-bytes=%d: exiting", die)
            logging.shutdown()
            os._exit(17)  # the injected crash: no cleanup, no goodbye


def _spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _refuse(sock: socket.socket, why: str) -> None:
    """The polite refusal: one ERROR E_BUSY frame (it fits any socket buffer), then close."""
    try:
        sock.setblocking(False)
        sock.send(P.encode(P.Error(0, P.E_BUSY, why)))
    except OSError:
        pass
    finally:
        sock.close()


# ---- the process ----


def _control_loop(server: KVServer) -> None:
    """Read `clock <t0>` / `stop` lines from stdin; EOF (the parent is gone) stops the server."""
    import select

    fd = sys.stdin.fileno()
    buf = b""
    while not server.stop.is_set():
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            log.info("stdin closed (the parent is gone): stopping")
            server.stop.set()
            return
        buf += data
        if len(buf) > 65536:
            buf = buf[-4096:]
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd, _, arg = line.decode(errors="replace").strip().partition(" ")
            if cmd == "clock":
                try:
                    t0 = float(arg)
                except ValueError:
                    log.warning("bad control line %r", line[:80])
                    continue
                if server.pacer is not None:
                    server.pacer.set_clock(t0)
                print("CLOCK", flush=True)  # the parent waits for this before its next request
            elif cmd == "stop":
                log.info("stop requested")
                server.stop.set()


class _Stamp(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{time.perf_counter():.3f} {record.getMessage()}"


def setup_logging() -> None:
    """One whole line per record on stderr (a handler's lock keeps threads' lines apart)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Stamp())
    root = logging.getLogger("sparkv")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparkv.executor.net.server", description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="folder holding one KV store directory per context key")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed as 'PORT <n>')")
    ap.add_argument("--trace", help="pace sends to this trace (JSON times_s/rates_bps/duration_s, or a trace file)")
    ap.add_argument("--fault", action="append", default=[], help="die-after-bytes=N | corrupt-cell=c,l | ...")
    ap.add_argument("--secret-file", help="file holding the shared secret (else $SPARKV_KV_SECRET_FILE / "
                    "$SPARKV_KV_SECRET); required when --host is not a loopback address")
    ap.add_argument("--max-clients", type=int, default=Limits.max_clients, help="open connections at most")
    ap.add_argument("--header-timeout-s", type=float, default=Limits.header_timeout_s,
                    help="a handshake or a begun frame must complete within this")
    ap.add_argument("--send-stall-s", type=float, default=Limits.send_stall_s,
                    help="drop a client that reads nothing (or a paced link that carries nothing) this long")
    ap.add_argument("--idle-timeout-s", type=float, default=Limits.idle_timeout_s)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        secret = secret_from_env(args.secret_file)
        if secret is None and not is_loopback(args.host):
            raise SecretError(f"--host {args.host} is not a loopback address: set a shared secret "
                              "(--secret-file, $SPARKV_KV_SECRET_FILE or $SPARKV_KV_SECRET)")
        if args.max_clients < 1:
            raise ValueError(f"--max-clients must be at least 1, got {args.max_clients}")
        for flag in ("header_timeout_s", "send_stall_s", "idle_timeout_s"):
            value = getattr(args, flag)
            if not 0 < value < 1e6:
                raise ValueError(f"--{flag.replace('_', '-')} must be a positive number of seconds, got {value}")
        limits = Limits(max_clients=args.max_clients, header_timeout_s=args.header_timeout_s,
                        send_stall_s=args.send_stall_s, idle_timeout_s=args.idle_timeout_s)
        faults = Faults.parse(args.fault)
        pacer = Pacer(load_trace_arg(args.trace)) if args.trace else None
        server = KVServer(args.root, args.host, args.port, pacer, faults, limits, secret)
    except (SecretError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_wildcard(args.host):
        log.warning("listening on every address (%s): any host that can reach this one may connect; "
                    "the shared secret is all that keeps them out", args.host or "*")
    try:
        get_codec("raw")  # import the codec registry now, not during the first request
    except ImportError as exc:  # requests will retry the import and report it
        log.warning("codec registry unavailable: %r", exc)
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    threading.Thread(target=_control_loop, args=(server,), name="kv-control", daemon=True).start()
    print(f"PORT {server.port}", flush=True)
    paced = f", pacing to {args.trace}" if args.trace else ""
    auth = ", shared secret required" if secret is not None else ""
    log.info("pid %d listening on %s:%d%s%s", os.getpid(), args.host, server.port, paced, auth)
    server.serve()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
