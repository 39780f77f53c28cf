"""The KV server under floods and bad clients: connection limit, descriptors, pipelined floods, slow
headers, threads, per-request deadlines and shared-secret authentication."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkv.core.request import CellBlock
from sparkv.executor.net import protocol as P
from sparkv.executor.net.client import AuthFailed, KVClient, ServerError, ServerGone
from sparkv.executor.net.io import FrameReader
from sparkv.executor.net.launch import _PKG_PARENT, ServerHandle, start_server
from sparkv.executor.net.store import make_synthetic_store
from sparkv.traces.synthetic import constant

KEY, BIG, S = "00aa11bb22cc33dd", "big0big1", 32


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kv")
    make_synthetic_store(root, KEY, num_layers=3, num_kv_heads=2, context_tokens=100, head_dim=8)
    make_synthetic_store(root, BIG, num_layers=4, num_kv_heads=2, context_tokens=2048, head_dim=64, seed=2)
    return root


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _hello(sock: socket.socket) -> P.Message:
    return P.decode(*FrameReader(sock).read(time.perf_counter() + 5))


def _works(handle: ServerHandle, secret: bytes | None = None) -> bool:
    with KVClient(handle.host, handle.port, secret=secret) as client:
        return len(list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1


def test_a_full_server_refuses_politely_and_recovers(root: Path) -> None:
    with start_server(root, extra_args=("--max-clients", "3")) as handle:
        socks = [socket.create_connection((handle.host, handle.port), timeout=5) for _ in range(3)]
        try:
            assert all(isinstance(_hello(s), P.Hello) for s in socks)
            with socket.create_connection((handle.host, handle.port), timeout=5) as extra:
                reply = _hello(extra)
            assert isinstance(reply, P.Error) and reply.code == P.E_BUSY and "server full" in reply.message
            with KVClient(handle.host, handle.port) as client, pytest.raises(ServerGone, match="server full"):
                list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
        finally:
            for s in socks:
                s.close()
        deadline = time.perf_counter() + 5
        while time.perf_counter() < deadline:  # the server notices the closes within a loop turn
            with contextlib.suppress(ServerGone):
                if _works(handle):
                    break
        assert _works(handle)


def _limited_server(root: Path, nofile: int) -> subprocess.Popen[bytes]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    env = {**os.environ, "PYTHONPATH": _PKG_PARENT}
    proc = subprocess.Popen([sys.executable, "-m", "sparkv.executor.net.server", "--root", str(root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, preexec_fn=limit)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().split()
    assert line[0] == "PORT", line
    proc.port = int(line[1])  # type: ignore[attr-defined]
    return proc


def test_running_out_of_descriptors_does_not_kill_the_server(root: Path) -> None:
    proc = _limited_server(root, 64)
    port = proc.port  # type: ignore[attr-defined]
    socks: list[socket.socket] = []
    try:
        for _ in range(80):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        replies = []
        for s in socks:
            with contextlib.suppress(OSError, P.NetError):
                replies.append(_hello(s))
        assert proc.poll() is None  # alive
        assert any(isinstance(r, P.Hello) for r in replies)
        assert any(isinstance(r, P.Error) and r.code == P.E_BUSY for r in replies)  # told, not dropped
        for s in socks:
            s.close()
        socks.clear()
        deadline = time.perf_counter() + 10
        ok = False
        while not ok and time.perf_counter() < deadline:
            with contextlib.suppress(P.NetError), KVClient("127.0.0.1", port) as client:
                ok = len(list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1
        assert ok and proc.poll() is None
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait(timeout=5)


def test_idle_connections_cost_no_threads(root: Path) -> None:
    with start_server(root) as handle:
        assert _works(handle)
        threads0 = _status(handle.pid, "Threads")  # the loop, the control reader, the libraries' own
        socks = [socket.create_connection((handle.host, handle.port), timeout=5) for _ in range(100)]
        try:
            for s in socks:
                _hello(s)
            assert _status(handle.pid, "Threads") == threads0
            assert _works(handle)
        finally:
            for s in socks:
                s.close()


def test_a_pipelined_flood_stays_bounded(root: Path) -> None:
    """400k FETCHes sent and never read: the server stops reading the flood instead of queueing it."""
    with start_server(root, extra_args=("--send-stall-s", "30")) as handle:
        rss0 = _status(handle.pid, "VmRSS")
        batch = 1000
        with socket.create_connection((handle.host, handle.port), timeout=5) as flood:
            flood.setblocking(False)
            sent = n = 0
            t0 = time.perf_counter()
            while n < 400 and time.perf_counter() - t0 < 3:
                data = b"".join(P.encode(P.Fetch(n * batch + i, KEY, S, "raw", CellBlock(0, 4, 0, 3)))
                                for i in range(batch))
                view = memoryview(data)
                while view and time.perf_counter() - t0 < 3:
                    try:
                        k = flood.send(view)
                        view, sent = view[k:], sent + k
                    except BlockingIOError:
                        time.sleep(0.01)  # the server has stopped reading: the kernel buffers are full
                n += 1
            assert n < 400  # pushed back, not swallowed
            grown_kb = _status(handle.pid, "VmRSS") - rss0
            assert grown_kb < 30_000, f"server grew {grown_kb} kB after {sent} bytes of FETCHes"
            assert _works(handle)  # others are served meanwhile
        assert handle.alive()


def test_a_slow_header_is_dropped(root: Path) -> None:
    with start_server(root, extra_args=("--header-timeout-s", "0.5")) as handle:
        with socket.create_connection((handle.host, handle.port), timeout=5) as slow:
            reader = FrameReader(slow)
            reader.read(time.perf_counter() + 5)  # HELLO
            slow.sendall(P.encode(P.Ping(1))[:5])  # a frame begun and never finished
            t0 = time.perf_counter()
            with pytest.raises(P.PeerGone):
                while True:
                    reader.read(t0 + 5)
            assert time.perf_counter() - t0 < 4
        assert _works(handle)


def test_the_server_gives_up_at_the_request_deadline(root: Path) -> None:
    with start_server(root, pacing_trace=constant(1e6, 60.0)) as handle, \
            socket.create_connection((handle.host, handle.port), timeout=5) as sock:
        reader = FrameReader(sock)
        reader.read(time.perf_counter() + 5)  # HELLO
        sock.sendall(P.encode(P.Fetch(9, BIG, 256, "raw", CellBlock(0, 8, 0, 4), deadline_ms=300)))
        t0 = time.perf_counter()
        while True:
            ftype, body = reader.read(t0 + 5)
            if ftype == P.ERROR:
                break
        err = P.decode(ftype, body)
        assert isinstance(err, P.Error) and err.code == P.E_DEADLINE and err.request_id == 9
        assert time.perf_counter() - t0 < 3


def test_shared_secret_authentication(root: Path, tmp_path: Path) -> None:
    secret = b"correct horse battery staple"
    with start_server(root, secret=secret) as handle:
        assert _works(handle)  # this process's clients find the launcher's secret
        with KVClient(handle.host, handle.port, secret=b"wrong wrong wrong wrong") as client, \
                pytest.raises(AuthFailed):
            client.ping()
        with socket.create_connection((handle.host, handle.port), timeout=5) as sock:
            hello = _hello(sock)
            assert isinstance(hello, P.Hello) and hello.auth
            sock.sendall(P.encode(P.Ping(5)))  # no AUTH first
            reply = P.decode(*FrameReader(sock).read(time.perf_counter() + 5))
            assert isinstance(reply, P.Error) and reply.code == P.E_AUTH
    with start_server(root) as open_server, pytest.raises(AuthFailed, match="does not know"):
        KVClient(open_server.host, open_server.port, secret=secret).ping()  # the client checks the server too


def test_a_wildcard_bind_needs_a_secret(root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": _PKG_PARENT}
    env.pop("SPARKV_KV_SECRET", None)
    env.pop("SPARKV_KV_SECRET_FILE", None)
    run = subprocess.run([sys.executable, "-m", "sparkv.executor.net.server", "--root", str(root), "--host", "0.0.0.0"],
                         input=b"", capture_output=True, env=env, timeout=60)
    assert run.returncode == 2 and b"shared secret" in run.stderr and b"Traceback" not in run.stderr
    with start_server(root, host="0.0.0.0") as handle:  # the launcher makes a secret for it
        assert handle.secret is not None
        assert "listening on every address" in handle.log()
        with KVClient("127.0.0.1", handle.port, secret=handle.secret) as client:
            assert len(list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    from sparkv.executor.net.auth import SecretError, read_secret_file

    file = tmp_path / "secret"
    file.write_bytes(b"0123456789abcdef0123\n")
    file.chmod(0o644)
    with pytest.raises(SecretError, match="readable by others"):
        read_secret_file(file)
    file.chmod(0o600)
    assert read_secret_file(file) == b"0123456789abcdef0123"
    with pytest.raises(SecretError, match="cannot read"):
        read_secret_file(tmp_path / "absent")


def test_bad_requests_are_refused_per_request(root: Path) -> None:
    with start_server(root) as handle, KVClient(handle.host, handle.port) as client:
        with pytest.raises(ServerError) as info:
            list(client.fetch(1, "nope\n", S, "raw", CellBlock(0, 1, 0, 1)))  # a trailing newline is no key
        assert info.value.code == P.E_UNKNOWN_CONTEXT
        assert len(list(client.fetch(2, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1


def test_the_netns_lock_refuses_a_planted_symlink(tmp_path: Path) -> None:
    from sparkv.executor.net.netns import NetnsUnavailable, _open_lock

    d = tmp_path / "locks"
    fd = _open_lock(d)
    os.close(fd)
    assert (d.stat().st_mode & 0o777) == 0o700
    (d / "netns.lock").unlink()
    (d / "netns.lock").symlink_to(tmp_path / "victim")
    with pytest.raises(NetnsUnavailable, match="cannot open"):
        _open_lock(d)
    assert not (tmp_path / "victim").exists()
    open_dir = tmp_path / "shared"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    with pytest.raises(NetnsUnavailable, match="not a private directory"):
        _open_lock(open_dir)
