"""The KV server process and its client: exact bytes, concurrency, cancel, errors, faults and deadlines."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sparkv.core.request import CellBlock
from sparkv.executor.net import protocol as P
from sparkv.executor.net.client import CellPayload, CorruptFrame, DeadlineExceeded, KVClient, ServerError, ServerGone
from sparkv.executor.net.io import FrameReader
from sparkv.executor.net.server import ServerHandle, start_server
from sparkv.executor.net.store import make_synthetic_store
from sparkv.traces.synthetic import constant

KEY, BIG = "00aa11bb22cc33dd", "big0big1"
T, S = 100, 32  # small store: 100 tokens, 4 chunks of 32 (the last has 4)
BIG_S = 256  # big store: 8 chunks x 4 layers of 256 KiB cells


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kv")
    make_synthetic_store(root, KEY, num_layers=3, num_kv_heads=2, context_tokens=T, head_dim=8)
    make_synthetic_store(root, "f16f16f16", num_layers=2, context_tokens=50, dtype="float16", seed=1)
    make_synthetic_store(root, BIG, num_layers=4, num_kv_heads=2, context_tokens=2048, head_dim=64, seed=2)
    return root


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerHandle]:
    with start_server(root) as handle:
        yield handle


@pytest.fixture(scope="module")
def slow_server(root: Path) -> Iterator[ServerHandle]:
    """Paced to 1 MB/s, so a fetch of the big store lasts seconds."""
    with start_server(root, pacing_trace=constant(1e6, 60.0)) as handle:
        yield handle


def expected(root: Path, key: str, chunk: int, layer: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.load(root / key / f"k_{layer:03d}.npy")
    v = np.load(root / key / f"v_{layer:03d}.npy")
    return k[:, chunk * s : (chunk + 1) * s], v[:, chunk * s : (chunk + 1) * s]


@pytest.mark.parametrize(("key", "block"), [(KEY, CellBlock(0, 4, 0, 3)), (KEY, CellBlock(2, 4, 1, 2)),
                                            ("f16f16f16", CellBlock(0, 2, 0, 2))])
def test_fetch_returns_the_stored_bytes(root: Path, server: ServerHandle, key: str, block: CellBlock) -> None:
    with KVClient(server.host, server.port) as client:
        cells = list(client.fetch(1, key, S, "raw", block))
    assert [(c.chunk, c.layer) for c in cells] == block.cells()
    for cell in cells:
        k, v = expected(root, key, cell.chunk, cell.layer, S)
        assert cell.k.dtype == k.dtype and cell.k.tobytes() == k.tobytes() and cell.v.tobytes() == v.tobytes()
        assert cell.wire_bytes > k.nbytes + v.nbytes
    assert cells[-1].k.shape[1] == (T - 3 * S if key == KEY else 50 - S)


def test_fetch_through_a_lossy_codec(root: Path, server: ServerHandle) -> None:
    with KVClient(server.host, server.port) as client:
        cells = list(client.fetch(1, KEY, S, "int8", CellBlock(0, 1, 0, 1)))
    k, _ = expected(root, KEY, 0, 0, S)
    assert cells[0].k.shape == k.shape and np.allclose(cells[0].k, k, atol=0.05)
    assert cells[0].wire_bytes < 2 * k.nbytes // 2


@pytest.mark.parametrize("name", ["int4-t32-rot", "int4-t32-s1-rot", "int4-t32-s1-rot+zstd"])
def test_fetch_through_an_int4_variant(root: Path, server: ServerHandle, name: str) -> None:
    """The client's cell equals a local round trip through the codec; the frames carry the payload."""
    from sparkv.cost_models.codecs import get_codec

    codec = get_codec(name)
    with KVClient(server.host, server.port) as client:
        cells = list(client.fetch(1, BIG, BIG_S, name, CellBlock(1, 2, 2, 3)))
    k, v = expected(root, BIG, 1, 2, BIG_S)
    assert np.array_equal(cells[0].k, codec.decode(codec.encode(k, kind="k", layer=2), k.shape, k.dtype))
    assert np.array_equal(cells[0].v, codec.decode(codec.encode(v, kind="v", layer=2), v.shape, v.dtype))
    payload = len(codec.encode(k, kind="k")) + len(codec.encode(v, kind="v"))
    if codec.fixed_size:
        assert payload == codec.wire_bytes(k.shape, k.dtype, kind="k") + codec.wire_bytes(v.shape, v.dtype, kind="v")
    assert payload < 0.31 * 2 * (k.size + v.size) and cells[0].wire_bytes > payload  # 256-token cells


def test_concurrent_clients_each_get_their_cells(root: Path, server: ServerHandle) -> None:
    results: dict[int, list[tuple[int, int, bytes]]] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with KVClient(server.host, server.port) as client:
                got = [(c.chunk, c.layer, c.k.tobytes()) for c in client.fetch(i, BIG, BIG_S, "raw",
                                                                                CellBlock(i, i + 2, 0, 4))]
                results[i] = got
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors and sorted(results) == [0, 1, 2, 3]
    for i, got in results.items():
        assert [(c, lyr) for c, lyr, _ in got] == CellBlock(i, i + 2, 0, 4).cells()
        assert got[-1][2] == expected(root, BIG, i + 1, 3, BIG_S)[0].tobytes()


def test_cancel_mid_stream_ends_the_fetch_promptly(slow_server: ServerHandle) -> None:
    block = CellBlock(0, 8, 0, 4)  # 8 MB at 1 MB/s
    with KVClient(slow_server.host, slow_server.port) as client:
        cells = client.fetch(1, BIG, BIG_S, "raw", block)
        first = next(cells)
        t0 = time.perf_counter()
        client.cancel(1)
        rest = list(cells)
        took = time.perf_counter() - t0
        assert (first.chunk, first.layer) == (0, 0)
        assert took < 1.0 and len(rest) <= 1
        again = list(client.fetch(2, KEY, S, "raw", CellBlock(0, 1, 0, 1)))  # the client is still usable
        assert len(again) == 1
        client.cancel(3)  # cancelled before it started: yields nothing
        assert list(client.fetch(3, KEY, S, "raw", CellBlock(0, 1, 0, 1))) == []


@pytest.mark.parametrize(("key", "codec", "block", "code"), [
    ("feedface", "raw", CellBlock(0, 1, 0, 1), P.E_UNKNOWN_CONTEXT),
    ("../etc", "raw", CellBlock(0, 1, 0, 1), P.E_UNKNOWN_CONTEXT),
    (KEY, "raw", CellBlock(0, 5, 0, 1), P.E_OUT_OF_RANGE),
    (KEY, "raw", CellBlock(0, 1, 2, 4), P.E_OUT_OF_RANGE),
    (KEY, "no-such-codec", CellBlock(0, 1, 0, 1), P.E_BAD_CODEC),
])
def test_bad_requests_get_an_error_and_the_connection_survives(
    server: ServerHandle, key: str, codec: str, block: CellBlock, code: int
) -> None:
    with KVClient(server.host, server.port) as client:
        with pytest.raises(ServerError) as info:
            list(client.fetch(1, key, S, codec, block))
        assert info.value.code == code and info.value.request_id == 1
        assert len(list(client.fetch(2, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1
        assert client.drops == 0


def _raw_exchange(server: ServerHandle, data: bytes) -> P.Message:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        reader = FrameReader(sock)
        assert isinstance(P.decode(*reader.read(time.perf_counter() + 5)), P.Hello)
        sock.sendall(data)
        return P.decode(*reader.read(time.perf_counter() + 5))


@pytest.mark.parametrize(("data", "code"), [
    (P.HEADER.pack(P.MAGIC, P.VERSION, P.FETCH, P.MAX_FRAME_BYTES + 1, 0), P.E_FRAME_TOO_LARGE),
    (P.HEADER.pack(P.MAGIC, P.VERSION, P.FETCH, 2**32 - 1, 0) + bytes(300_000), P.E_FRAME_TOO_LARGE),
    (b"GET / HTTP/1.1\r\n\r\n", P.E_BAD_FRAME),
    (P.frame(P.FETCH, b"\x01\x02"), P.E_BAD_FRAME),
    (P.encode(P.End(1, 2, 3, 0)), P.E_BAD_FRAME),
])
def test_malformed_frames_get_an_error_and_others_are_served(server: ServerHandle, data: bytes, code: int) -> None:
    reply = _raw_exchange(server, data)
    assert isinstance(reply, P.Error) and reply.code == code
    with KVClient(server.host, server.port) as client:
        assert client.ping() < 1.0
        assert len(list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1


def test_killed_server_mid_stream_is_server_gone(root: Path) -> None:
    handle = start_server(root, pacing_trace=constant(1e6, 60.0))
    try:
        with KVClient(handle.host, handle.port) as client:
            cells = client.fetch(1, BIG, BIG_S, "raw", CellBlock(0, 8, 0, 4))
            next(cells)
            handle.kill()
            with pytest.raises(ServerGone):
                list(cells)
            with pytest.raises(ServerGone):  # and nothing to reconnect to
                list(client.fetch(2, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
    finally:
        handle.kill()


def test_fault_die_after_bytes_is_server_gone(root: Path) -> None:
    with start_server(root, faults=["die-after-bytes=5000"]) as handle, KVClient(handle.host, handle.port) as client:
        got: list[CellPayload] = []
        with pytest.raises(ServerGone):
            got.extend(client.fetch(1, KEY, S, "raw", CellBlock(0, 4, 0, 3)))
        assert len(got) == 1  # a cell is 4165 wire bytes: one arrives, the second is cut
        handle.proc.wait(timeout=5)
        assert handle.proc.returncode == 17


def test_fault_corrupt_cell_is_a_corrupt_frame(root: Path) -> None:
    with start_server(root, faults=["corrupt-cell=1,2"]) as handle, KVClient(handle.host, handle.port) as client:
        got: list[CellPayload] = []
        with pytest.raises(CorruptFrame, match="crc32"):
            got.extend(client.fetch(1, KEY, S, "raw", CellBlock(0, 4, 0, 3)))
        assert [(c.chunk, c.layer) for c in got] == CellBlock(0, 4, 0, 3).cells()[:5]
        assert len(list(client.fetch(2, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1  # reconnected


def test_deadline_and_idle_timeout(root: Path, slow_server: ServerHandle) -> None:
    with KVClient(slow_server.host, slow_server.port) as client:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            list(client.fetch(1, BIG, BIG_S, "raw", CellBlock(0, 8, 0, 4), deadline_s=t0 + 0.3))
        assert time.perf_counter() - t0 < 1.5
    with start_server(root, pacing_trace=constant(0.0, 60.0)) as stalled, \
            KVClient(stalled.host, stalled.port, idle_timeout_s=0.3) as client:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded, match="without a byte"):
            list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
        assert time.perf_counter() - t0 < 1.5


def test_connection_refused_is_server_gone() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with KVClient("127.0.0.1", port, connect_timeout_s=1.0) as client, pytest.raises(ServerGone):
            list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))


def test_one_fetch_at_a_time(server: ServerHandle) -> None:
    with KVClient(server.host, server.port) as client:
        first = client.fetch(1, KEY, S, "raw", CellBlock(0, 4, 0, 3))
        next(first)
        with pytest.raises(RuntimeError, match="one fetch at a time"):
            next(client.fetch(2, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
        first.close()  # abandoning a fetch drops the connection; the next one reconnects
        assert len(list(client.fetch(3, KEY, S, "raw", CellBlock(0, 1, 0, 1)))) == 1
