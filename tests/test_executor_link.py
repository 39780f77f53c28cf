"""Links replaying a trace: sender-side pacing on loopback, and netns + tc tbf where the machine allows it.

Wall-clock checks are loose (a factor of 0.7-1.5 of the ideal time) and each takes well under 2 s; the
> 20 MB regression stream takes a few seconds and has no timing check, only a generous idle timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparkv.core.request import CellBlock
from sparkv.executor.net import link as link_mod
from sparkv.executor.net import netns
from sparkv.executor.net.client import KVClient, ServerGone
from sparkv.executor.net.codecs import get_codec
from sparkv.executor.net.link import Link, NetnsLink, PacingLink, make_link
from sparkv.executor.net.pacing import BUCKET_S, Pacer, _pace_until
from sparkv.executor.net.protocol import DeadlineExceeded
from sparkv.executor.net.store import make_synthetic_store
from sparkv.traces.synthetic import constant, steps

KEY, S = "11223344aabbccdd", 256  # 8 chunks x 4 layers, 256 KiB per cell


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kv")
    make_synthetic_store(root, KEY, num_layers=4, num_kv_heads=2, context_tokens=2048, head_dim=64)
    return root


def _netns_works() -> str:
    """'' when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        ns = netns.create_netns()
    except (netns.NetnsUnavailable, RuntimeError) as exc:
        return str(exc)
    netns.delete_netns(ns)
    return ""


NETNS_SKIP = _netns_works() if sys.platform == "linux" else "not Linux"
needs_netns = pytest.mark.skipif(bool(NETNS_SKIP), reason=f"network namespaces unavailable: {NETNS_SKIP}")


def timed_fetch(link: Link, block: CellBlock) -> tuple[int, float]:
    """(wire bytes, seconds) of one fetch, with the trace clock started at the request."""
    with KVClient(link.server.host, link.server.port) as client:
        client.ping()  # connect first: the handshake is not part of the transfer
        t0 = time.perf_counter()
        link.start_clock(t0)
        n = sum(cell.wire_bytes for cell in client.fetch(1, KEY, S, "raw", block))
        return n, time.perf_counter() - t0


def test_pacer_follows_the_trace() -> None:
    pacer = Pacer(constant(1000.0, 10.0), t0_s=time.perf_counter() - 5.0)
    # A sender running late catches up BUCKET_S at most: 500 bytes leave about 0.5 s - BUCKET_S from now.
    assert pacer.reserve(500) - time.perf_counter() == pytest.approx(0.5 - BUCKET_S, abs=0.05)
    # A response's first frame gets no credit for idle time: 500 bytes leave 0.5 s after the link is free.
    pacer.set_clock(time.perf_counter() - 5.0)
    assert pacer.reserve(500, fresh=True) - time.perf_counter() == pytest.approx(0.5, abs=0.05)
    pacer.set_clock(time.perf_counter())
    first = pacer.reserve(1000)
    assert pacer.reserve(1000) == pytest.approx(first + 1.0)
    stop, cancel = threading.Event(), threading.Event()
    cancel.set()
    assert not _pace_until(time.perf_counter() + 10, cancel, stop, time.perf_counter() + 10)
    assert _pace_until(time.perf_counter(), threading.Event(), stop, time.perf_counter() + 1)


def test_pacing_link_delivers_at_the_trace_rate(root: Path) -> None:
    rate = 2e6
    with make_link("pacing", constant(rate, 60.0), root) as link:
        assert link.kind == "pacing" and link.server.paced
        assert link.server.set_clock(time.perf_counter())  # acknowledged
        n, took = timed_fetch(link, CellBlock(0, 1, 0, 4))  # 1 MiB: about 0.5 s
    assert 0.7 * n / rate < took < 1.5 * n / rate


def test_pacing_link_follows_a_step_trace(root: Path) -> None:
    trace = steps([(0.2, 4e6), (10.0, 1e6)])  # 0.8 MB in the first 0.2 s, then slower
    with make_link("pacing", trace, root) as link:
        n, took = timed_fetch(link, CellBlock(0, 1, 0, 4))  # 1.05 MB: 0.2 s + the rest at 1 MB/s
    ideal = 0.2 + (n - 0.8e6) / 1e6
    assert 0.7 * ideal < took < 1.5 * ideal


def test_make_link_rejects_unknown_kinds(root: Path) -> None:
    with pytest.raises(ValueError, match="link kind"):
        make_link("carrier-pigeon", constant(1e6), root)


def test_auto_falls_back_to_pacing_and_says_why(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> netns.Netns:
        raise netns.NetnsUnavailable("ip netns add: Operation not permitted")

    monkeypatch.setattr(link_mod, "create_netns", refuse)
    with make_link("auto", constant(1e6), root) as link:
        assert isinstance(link, PacingLink) and link.kind == "pacing"
        assert "Operation not permitted" in link.reason
    assert not link.server.alive()


def test_tbf_parameters_floor_zero_rates() -> None:
    bits, burst, latency_us = netns.tbf_params(0.0, overhead=1.0)
    assert bits == 8000 and burst >= 1514 and latency_us == 50_000
    bits, burst, _ = netns.tbf_params(1e8, overhead=1.0)
    assert bits == 8e8 and burst == int(1e8 * netns.BURST_S)


@needs_netns
def test_netns_link_shapes_to_the_trace_and_cleans_up(root: Path) -> None:
    rate = 2e6
    with make_link("auto", constant(rate, 60.0), root) as link:
        assert isinstance(link, NetnsLink) and link.kind == "netns-tbf"
        assert link.server.host == link.ns.ns_addr and netns.exists(link.ns)
        n, took = timed_fetch(link, CellBlock(0, 1, 0, 4))
        ns = link.ns
    assert 0.7 * n / rate < took < 1.5 * n / rate
    assert link.rate_changes[0].rate_bps == rate
    assert not netns.exists(ns)
    assert ns.host_if not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


@needs_netns
def test_netns_link_replays_rate_changes(root: Path) -> None:
    trace = steps([(0.3, 4e6), (0.3, 0.0), (10.0, 1e6)])
    with NetnsLink(trace, root, step_s=0.1) as link:
        before = len(link.rate_changes)  # the trace plays from the link's opening until start_clock
        link.start_clock()
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline and (
            len(link.rate_changes) < before + 3 or link.rate_changes[-1].rate_bps != 1e6
        ):
            threading.Event().wait(0.05)
        changes = [(round(c.trace_s, 1), c.rate_bps) for c in link.rate_changes[before:]]
        zero = [c for c in link.rate_changes if c.rate_bps == 0.0]
    # a step the player was already taking when the clock restarted may come first
    assert changes[-3:] == [(0.0, 4e6), (0.3, 0.0), (0.6, 1e6)], changes
    assert zero and zero[0].applied_bps == pytest.approx(netns.MIN_RATE_BPS * netns.FRAME_OVERHEAD, rel=1e-3)


@needs_netns
def test_stale_namespaces_of_dead_processes_are_removed() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    name = f"sparkv-{dead.pid}-250"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        assert name in netns.cleanup_stale()
        assert name not in netns.list_netns()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@needs_netns
def test_netns_link_that_fails_to_start_leaves_no_namespace(tmp_path: Path) -> None:
    mine = f"sparkv-{os.getpid()}-"
    with pytest.raises(ValueError, match="not a directory"):
        NetnsLink(constant(1e6), tmp_path / "missing")
    assert not [name for name in netns.list_netns() if name.startswith(mine)]


def test_a_dead_server_is_explained_in_the_clients_error(root: Path) -> None:
    with (make_link("pacing", constant(1e9, 60.0), root, faults=("die-after-bytes=100000",)) as link,
          KVClient(link.server.host, link.server.port) as client, pytest.raises(ServerGone) as err):
        list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 4)))
    message = str(err.value)
    assert f"KV server pid {link.server.pid}" in message
    assert "server log:" in message and "die-after-bytes=100000: exiting" in message


@needs_netns
def test_netns_link_streams_past_rate_drops_without_wedging(tmp_path: Path) -> None:
    """Regression: the shaper wedged for good when the trace slowed after a fast stretch.

    TCP sized its GSO packets to its own pacing rate (tens of KiB here); tbf took them whole while a fast
    step gave it a large burst, and could never send one once a slow step had cut the burst below its
    size, so nothing at all left the namespace (sparkv run stalled for 30 s, then could not reconnect).
    The namespace's veth now caps its packets at a few segments. 21 MB: fast, slow, fast (18 MB in by then), then
    slow to the end, so a wedge at the last slowdown is permanent and the idle timeout catches it (no
    timing check). About 2 s on an idle machine.
    """
    key = "feedfacecafebeef"
    make_synthetic_store(tmp_path, key, num_layers=5, num_kv_heads=2, context_tokens=4096, head_dim=64)
    trace = steps([(0.4, 25e6), (0.3, 3e6), (0.3, 25e6), (30.0, 3e6)])
    block = CellBlock(0, 4, 0, 5)  # 20 cells of 1 MiB
    get_codec("raw")  # import the codec registry now: a client slow to read would keep tbf's queue short
    with NetnsLink(trace, tmp_path) as link:
        assert netns.gso_max_segs(link.ns) == netns.GSO_MAX_SEGS
        with KVClient(link.server.host, link.server.port, idle_timeout_s=4.0) as client:
            client.ping()
            t0 = time.perf_counter()
            link.start_clock(t0)
            cells = list(client.fetch(1, key, 1024, "raw", block))
            took = time.perf_counter() - t0
        slow = [c for c in link.rate_changes if c.rate_bps < 10e6 and c.wall_s >= t0]
    n = sum(cell.wire_bytes for cell in cells)
    assert len(cells) == block.num_cells and n > 20e6
    assert slow  # the shaper really was turned down while the stream ran
    ideal = 1.0 + (n - trace.bytes_between(0.0, 1.0)) / 3e6
    print(f"{n / 1e6:.1f} MB in {took:.2f} s (ideal {ideal:.2f} s)")


@needs_netns
def test_netns_link_failure_names_the_shaper_state(root: Path) -> None:
    # 8 kbit/s: a 256 KiB cell never arrives
    with (NetnsLink(constant(0.0, 60.0), root) as link,
          KVClient(link.server.host, link.server.port, idle_timeout_s=1.0) as client):
        client.ping()
        link.start_clock()
        with pytest.raises(DeadlineExceeded) as err:
            list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
    message = str(err.value)
    assert "shaper player running" in message and "tbf" in message and "backlog" in message
    assert "server log:" in message and "connection from" in message


def test_client_progress_shows_a_cell_before_it_is_whole(root: Path) -> None:
    """A driver sees bytes arrive between whole cells: on a slow link one 256 KiB cell takes ~1 s."""
    with make_link("pacing", constant(250e3, 60.0), root) as link, KVClient(link.server.host, link.server.port) as c:
        c.ping()
        t0 = time.perf_counter()
        link.start_clock(t0)
        seen: list[tuple[float | None, int]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                seen.append(c.progress())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        cells = list(c.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
        done.set()
        watcher.join(5.0)
    assert len(cells) == 1
    partial = [n for first, n in seen if first is not None and 0 < n < cells[0].wire_bytes]
    assert len(partial) >= 3  # several samples caught the cell part-way
    assert all(first is None or first >= t0 for first, _ in seen)
    assert partial == sorted(partial)  # bytes of the cell only grow until it is whole
