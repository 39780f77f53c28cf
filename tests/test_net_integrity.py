"""End-to-end integrity of the KV link: every byte of every frame checked, labels and shapes trusted only
when they are the ones asked for, stored cells verified at rest, corrupt stores refused and never served."""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from sparkv.core.request import CellBlock
from sparkv.executor.net import protocol as P
from sparkv.executor.net.client import CorruptFrame, KVClient, ServerError
from sparkv.executor.net.codecs import RawCodec
from sparkv.executor.net.io import FrameReader
from sparkv.executor.net.launch import start_server
from sparkv.executor.net.store import make_synthetic_store
from sparkv.executor.net.storefmt import TILE_TOKENS

KEY, S = "00aa11bb22cc33dd", 32


def _frames() -> list[bytes]:
    k = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    payload = k.tobytes() * 2
    crc = P.cell_crc(1, 0, 0, k.dtype, (2, 3, 4), len(payload) // 2, "raw", payload)
    return [P.encode(P.Fetch(7, KEY, 16, "raw", CellBlock(0, 2, 0, 3), 500)),
            P.encode(P.CellHeader(1, 0, 0, k.dtype, (2, 3, 4), "raw", len(payload), len(payload) // 2, crc)),
            P.piece(payload), P.encode(P.End(1, 300, 1, P.END_COMPLETE)), P.encode(P.Cancel(3)),
            P.encode(P.Error(2, P.E_BAD_CODEC, "no")), P.encode(P.Hello(True, bytes(range(32))))]


def test_every_single_byte_flip_in_a_frame_is_caught() -> None:
    """No flip of any bit pattern in any byte of a frame reads back as a frame: a CorruptFrame, or a frame
    that never completes (a longer length), never a wrong message."""
    rng = random.Random(0)
    caught = 0
    for data in _frames():
        for i in range(len(data)):
            bad = bytearray(data)
            bad[i] ^= rng.randrange(1, 256)
            a, b = socket.socketpair()
            with a, b:
                a.sendall(bytes(bad))
                with pytest.raises((P.CorruptFrame, P.DeadlineExceeded)):
                    FrameReader(b).read(time.perf_counter() + 0.01)
                caught += 1
    assert caught == sum(map(len, _frames())) > 400


class FakeServer:
    """A KV server that answers every FETCH with `answer(fetch)`'s frames (checksums right, content not)."""

    def __init__(self, answer: Callable[[P.Fetch], list[bytes]]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError, P.NetError):
            while True:
                sock, _ = self.listener.accept()
                with sock:
                    sock.sendall(P.encode(P.Hello(False, bytes(32))))
                    reader = FrameReader(sock)
                    while True:
                        msg = P.decode(*reader.read(time.perf_counter() + 5))
                        if isinstance(msg, P.Fetch):
                            sock.sendall(b"".join(self.answer(msg)))

    def close(self) -> None:
        self.listener.close()


def _cell(rid: int, c: int, layer: int, k: np.ndarray, v: np.ndarray, codec: str = "raw",
          payload: bytes | None = None, shape: tuple[int, int, int] | None = None) -> list[bytes]:
    body = payload if payload is not None else RawCodec().encode(k) + RawCodec().encode(v)
    shape = shape or (k.shape[0], k.shape[1], k.shape[2])
    k_len = len(body) // 2
    crc = P.cell_crc(rid, c, layer, k.dtype, shape, k_len, codec, body)
    return [P.encode(P.CellHeader(rid, c, layer, k.dtype, shape, codec, len(body), k_len, crc)), P.piece(body)]


def _arrays(c: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10 * c + layer)
    return rng.standard_normal((2, S, 8)).astype(np.float32), rng.standard_normal((2, S, 8)).astype(np.float32)


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[P.Fetch], list[bytes]]], FakeServer]]:
    made: list[FakeServer] = []

    def make(answer: Callable[[P.Fetch], list[bytes]]) -> FakeServer:
        made.append(FakeServer(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _answer(order: list[tuple[int, int]], **cell: object) -> Callable[[P.Fetch], list[bytes]]:
    def answer(f: P.Fetch) -> list[bytes]:
        frames: list[bytes] = []
        for c, layer in order:
            frames += _cell(f.request_id, c, layer, *_arrays(c, layer), **cell)  # type: ignore[arg-type]
        return [*frames, P.encode(P.End(f.request_id, 0, len(order), P.END_COMPLETE))]

    return answer


@pytest.mark.parametrize(("order", "match"), [
    ([(1, 0), (0, 0)], "arrived where cell"),  # two labels swapped
    ([(0, 0), (0, 0)], "arrived where cell"),  # one label twice
    ([(0, 0)], "END says"),  # one cell missing, END claims complete
])
def test_wrong_labels_are_corrupt_not_installed(fake: Callable[..., FakeServer], order: list[tuple[int, int]],
                                                match: str) -> None:
    server = fake(_answer(order))
    with KVClient("127.0.0.1", server.port) as client, pytest.raises(CorruptFrame, match=match):
        list(client.fetch(1, KEY, S, "raw", CellBlock(0, 2, 0, 1)))


def test_a_huge_claimed_shape_is_refused_before_allocating(fake: Callable[..., FakeServer]) -> None:
    """6 bytes of payload claiming a [64, 32, 50000] float32 cell: refused from the header alone."""
    server = fake(_answer([(0, 0)], payload=b"abcdef", shape=(64, 32, 50_000)))
    with KVClient("127.0.0.1", server.port, max_cell_bytes=1 << 20) as client, \
            pytest.raises(CorruptFrame, match="above the limit"):
        list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1)))
    server = fake(_answer([(0, 0)]))
    with KVClient("127.0.0.1", server.port) as client, pytest.raises(CorruptFrame, match="expected"):
        list(client.fetch(1, KEY, S, "raw", CellBlock(0, 1, 0, 1), expect=lambda c, lyr: (2, S, 16)))


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    make_synthetic_store(tmp_path, KEY, num_layers=2, num_kv_heads=2, context_tokens=100, head_dim=8)
    return tmp_path


def _fetch_all(port: int) -> list[np.ndarray]:
    with KVClient("127.0.0.1", port) as client:
        return [c.k for c in client.fetch(1, KEY, S, "raw", CellBlock(0, 4, 0, 2))]


def test_a_byte_flipped_at_rest_is_refused_not_served(store_root: Path) -> None:
    file = store_root / KEY / "k_001.npy"
    data = bytearray(file.read_bytes())
    with start_server(store_root) as handle:
        assert len(_fetch_all(handle.port)) == 8
        data[-5] ^= 0x10  # the last tile of the last head, after the server opened the file
        file.write_bytes(bytes(data))
        with pytest.raises(ServerError) as info:
            _fetch_all(handle.port)
        assert info.value.code == P.E_STORE_CORRUPT and "crc32" in info.value.message
        assert handle.alive()


def test_a_store_truncated_under_the_server_is_no_sigbus(store_root: Path) -> None:
    with start_server(store_root) as handle:
        assert len(_fetch_all(handle.port)) == 8
        with open(store_root / KEY / "v_000.npy", "r+b") as f:
            f.truncate(200)
        with pytest.raises(ServerError) as info:
            _fetch_all(handle.port)
        assert info.value.code == P.E_STORE_CORRUPT and handle.alive()


def test_random_corruptions_of_a_stored_file_never_serve_wrong_kv(store_root: Path) -> None:
    """Every single-byte corruption of a store file (meta.json or an array) is refused or harmless."""
    from sparkv.executor.net.store import StoreCache

    rng = random.Random(1)
    files = sorted((store_root / KEY).iterdir())
    good = {f.name: f.read_bytes() for f in files}
    clean = StoreCache(store_root).get(KEY)
    want = [clean.cell(S, c, layer) for c in range(4) for layer in range(2)]
    clean.close()
    refused = served = 0
    for trial in range(300):
        file = files[trial % len(files)]
        data = bytearray(good[file.name])
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        file.write_bytes(bytes(data))
        cache = StoreCache(store_root)
        try:
            store = cache.get(KEY)
            got = [store.cell(S, c, layer) for c in range(4) for layer in range(2)]
        except Exception:
            refused += 1
        else:
            served += 1
            for (k, v), (wk, wv) in zip(got, want, strict=True):
                assert k.tobytes() == wk.tobytes() and v.tobytes() == wv.tobytes()
        finally:
            cache.close()
            file.write_bytes(good[file.name])
    assert refused > 250  # almost every flip is caught; the rest (JSON whitespace) change nothing


def test_tiles_cover_every_range(store_root: Path) -> None:
    from sparkv.executor.net.store import StoreCache

    store = StoreCache(store_root).get(KEY)
    full = np.load(store_root / KEY / "k_000.npy")
    for lo, hi in [(0, 1), (TILE_TOKENS - 1, TILE_TOKENS + 1), (5, 100), (99, 100), (0, 100)]:
        assert np.array_equal(store.arrays[("k", 0)].read(lo, hi), full[:, lo:hi])
    store.close()
