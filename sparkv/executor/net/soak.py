"""A soak of the KV server: N clients x M requests against one server process, with injected faults.

The server runs with `corrupt-rate` and `stall-rate` faults (sparkv.executor.net.server.Faults) and is
killed (SIGKILL) and restarted on the same port every `kill_every_s`. Each client thread fetches random
blocks and retries a failed request (fresh connection, exponential backoff) until it gets every cell, or
gives up at `request_timeout_s` (a hang). A request counts as correct only when every cell's K and V are
byte-equal to the store's arrays (compared as tensors, not by any checksum). The server's RSS and thread
count are sampled from /proc throughout. Everything travels over loopback.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparkv.core.request import CellBlock
from sparkv.executor.net.client import KVClient
from sparkv.executor.net.launch import ServerHandle, start_server
from sparkv.executor.net.protocol import NetError
from sparkv.executor.net.store import make_synthetic_store

KEY = "soak0000"


@dataclass(frozen=True)
class SoakConfig:
    clients: int = 100
    requests: int = 100  # per client
    corrupt_rate: float = 0.02  # per cell frame: one random byte flipped
    stall_rate: float = 0.05  # per request: a pause of stall_s mid-stream
    stall_s: float = 1.0
    kill_every_s: float = 10.0  # SIGKILL and restart the server this often (0: never)
    idle_timeout_s: float = 0.5  # a client gives up on a silent connection after this long, and retries
    request_timeout_s: float = 120.0  # a request not correct by then is a hang
    chunks: int = 8
    layers: int = 4
    chunk_tokens: int = 32
    seed: int = 0


@dataclass
class SoakReport:
    config: dict[str, Any]
    requests: int = 0
    correct: int = 0
    wrong: int = 0  # delivered but not equal to the reference: must stay 0
    hangs: int = 0
    retries: int = 0  # failed attempts that were retried (faults seen by clients)
    faulted_requests: int = 0  # requests that met at least one fault
    kills: int = 0
    unexpected_exits: int = 0  # server deaths that were not injected
    max_rss_kb: int = 0
    max_threads: int = 0
    wall_s: float = 0.0

    def ok(self) -> bool:
        return self.correct == self.requests and self.wrong == 0 and self.hangs == 0 and self.unexpected_exits == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok()}


def _status(pid: int) -> tuple[int, int]:
    rss = threads = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, threads


class _Server:
    """The server under test, restartable on one port; a watcher samples it and counts its deaths."""

    def __init__(self, root: Path, cfg: SoakConfig) -> None:
        self.root, self.cfg = root, cfg
        self.faults = [f"corrupt-rate={cfg.corrupt_rate}", f"stall-rate={cfg.stall_rate}", f"stall-s={cfg.stall_s}"]
        self.lock = threading.Lock()
        self.generation = 0
        self.handle: ServerHandle = self._start(0)
        self.port = self.handle.port

    def _start(self, port: int) -> ServerHandle:
        self.generation += 1
        faults = [*self.faults, f"seed={self.cfg.seed + self.generation}"]
        deadline = time.perf_counter() + 30.0
        while True:
            try:
                return start_server(self.root, port=port, faults=faults, extra_args=("--max-clients", "1024"))
            except RuntimeError:  # the port may linger a moment after a kill
                if time.perf_counter() > deadline:
                    raise
                time.sleep(0.1)

    def kill_and_restart(self) -> None:
        with self.lock:
            self.handle.kill()
            self.handle = self._start(self.port)

    def alive_or_restart(self) -> bool:
        """False (and restarted) when the server died without being killed."""
        with self.lock:
            if self.handle.alive():
                return True
            self.handle = self._start(self.port)
            return False

    def stop(self) -> None:
        with self.lock:
            self.handle.stop()


def run_soak(cfg: SoakConfig) -> SoakReport:
    """Run the soak; every loop is bounded by counts and by `request_timeout_s` per request."""
    report = SoakReport(asdict(cfg))
    with tempfile.TemporaryDirectory(prefix="sparkv-soak-") as tmp:
        root = Path(tmp)
        tokens = cfg.chunks * cfg.chunk_tokens - cfg.chunk_tokens // 2  # a short last chunk
        make_synthetic_store(root, KEY, num_layers=cfg.layers, num_kv_heads=2, context_tokens=tokens, head_dim=16,
                             seed=cfg.seed)
        ref_k = [np.load(root / KEY / f"k_{layer:03d}.npy") for layer in range(cfg.layers)]
        ref_v = [np.load(root / KEY / f"v_{layer:03d}.npy") for layer in range(cfg.layers)]
        server = _Server(root, cfg)
        lock = threading.Lock()
        done = threading.Event()

        def shape(c: int, layer: int) -> tuple[int, int, int]:
            return (2, min(cfg.chunk_tokens, tokens - c * cfg.chunk_tokens), 16)

        def one_request(client: KVClient, rid: int, block: CellBlock) -> tuple[str, int]:
            start, backoff, failures = time.perf_counter(), 0.02, 0
            while time.perf_counter() - start < cfg.request_timeout_s:
                try:
                    cells = list(client.fetch(rid, KEY, cfg.chunk_tokens, "raw", block,
                                              start + cfg.request_timeout_s, expect=shape))
                except NetError:
                    failures += 1
                    rid += 1 << 32  # a fresh id for the retry
                    time.sleep(backoff)  # the server may be restarting: back off
                    backoff = min(2 * backoff, 0.5)
                    continue
                for cell in cells:
                    lo = cell.chunk * cfg.chunk_tokens
                    hi = lo + cell.k.shape[1]
                    if not (np.array_equal(cell.k, ref_k[cell.layer][:, lo:hi])
                            and np.array_equal(cell.v, ref_v[cell.layer][:, lo:hi])):
                        return "wrong", failures
                return ("correct" if [(c.chunk, c.layer) for c in cells] == block.cells() else "wrong"), failures
            return "hang", failures

        def client_loop(i: int) -> None:
            rng = random.Random(cfg.seed * 1_000_003 + i)
            client = KVClient("127.0.0.1", server.port, connect_timeout_s=2.0, idle_timeout_s=cfg.idle_timeout_s)
            try:
                for j in range(cfg.requests):
                    c0 = rng.randrange(cfg.chunks)
                    l0 = rng.randrange(cfg.layers)
                    c1, l1 = rng.randrange(c0 + 1, cfg.chunks + 1), rng.randrange(l0 + 1, cfg.layers + 1)
                    block = CellBlock(c0, c1, l0, l1)
                    outcome, failures = one_request(client, (i << 20) + j, block)
                    with lock:
                        report.requests += 1
                        report.retries += failures
                        report.faulted_requests += failures > 0
                        setattr(report, outcome, getattr(report, outcome) + 1)
            finally:
                client.close()

        def watch() -> None:
            next_kill = time.perf_counter() + cfg.kill_every_s if cfg.kill_every_s else float("inf")
            while not done.wait(0.2):
                rss, threads = _status(server.handle.pid)
                report.max_rss_kb = max(report.max_rss_kb, rss)
                report.max_threads = max(report.max_threads, threads)
                if not server.alive_or_restart():
                    report.unexpected_exits += 1
                if time.perf_counter() >= next_kill:
                    server.kill_and_restart()
                    report.kills += 1
                    next_kill = time.perf_counter() + cfg.kill_every_s

        t0 = time.perf_counter()
        watcher = threading.Thread(target=watch, name="soak-watch", daemon=True)
        watcher.start()
        threads = [threading.Thread(target=client_loop, args=(i,), name=f"soak-{i}", daemon=True)
                   for i in range(cfg.clients)]
        for t in threads:
            t.start()
        limit = time.perf_counter() + cfg.requests * cfg.request_timeout_s + 60
        for t in threads:
            t.join(timeout=max(0.0, limit - time.perf_counter()))
        report.hangs += sum(t.is_alive() for t in threads)  # a client still stuck after every request's limit
        done.set()
        watcher.join(timeout=10)
        server.stop()
        report.wall_s = time.perf_counter() - t0
    return report
