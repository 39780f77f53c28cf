"""The KV wire format: message round trips, cells over a socket, malformed frames, crc, reader deadlines."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkv.core.request import CellBlock
from sparkv.executor.net import protocol as P
from sparkv.executor.net.client import _decode_cell
from sparkv.executor.net.codecs import RawCodec
from sparkv.executor.net.io import FrameReader, Woken, make_wake_pair, ring, send_all

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
names = st.text(max_size=40)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@st.composite
def blocks(draw: st.DrawFn) -> CellBlock:
    c0, l0 = draw(st.integers(0, 10_000)), draw(st.integers(0, 200))
    return CellBlock(c0, c0 + draw(st.integers(1, 500)), l0, l0 + draw(st.integers(1, 80)))


messages = st.one_of(
    st.builds(P.Ping, u64),
    st.builds(P.Pong, u64),
    st.builds(P.Cancel, u64),
    st.builds(P.Abort, u64),
    st.builds(P.Fetch, u64, names, u32, st.text(max_size=20), blocks()),
    st.builds(P.End, u64, u64, u32, st.sampled_from([P.END_COMPLETE, P.END_CANCELLED])),
    st.builds(P.Error, u64, st.integers(0, 0xFFFF), st.text(max_size=200)),
    st.builds(P.CellHeader, u64, u32, u32, st.sampled_from(list(P.DTYPE_CODES.values())),
              st.tuples(u32, u32, u32), st.text(max_size=20), st.integers(2**40, 2**41), st.integers(0, 2**40),
              u32),
)


@given(messages)
def test_every_message_round_trips(msg: P.Message) -> None:
    data = P.encode(msg)
    ftype, length = P.parse_header(data[: P.HEADER.size])
    assert length == len(data) - P.HEADER.size
    assert P.decode(ftype, data[P.HEADER.size :]) == msg


def _send_cell(sock: socket.socket, rid: int, c: int, layer: int, k: np.ndarray, v: np.ndarray, piece: int) -> None:
    codec = RawCodec()
    kb, vb = codec.encode(k), codec.encode(v)
    payload = kb + vb
    shape = (k.shape[0], k.shape[1], k.shape[2])
    head = P.CellHeader(rid, c, layer, k.dtype, shape, "raw", len(payload), len(kb),
                        P.cell_crc(rid, c, layer, k.dtype, shape, len(kb), "raw", payload))
    frames = [P.encode(head)] + [P.piece(payload[i : i + piece]) for i in range(0, len(payload), piece)]
    send_all(sock, b"".join(frames), time.perf_counter() + 5)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 70), st.integers(1, 16)),
    dtype=st.sampled_from(["float32", "float16"]),
    piece=st.integers(1, 3000),
    seed=st.integers(0, 1000),
)
def test_cell_round_trips_over_a_socket(shape: tuple[int, int, int], dtype: str, piece: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = rng.standard_normal(shape).astype(dtype)
    v = rng.standard_normal(shape).astype(dtype)
    a, b = socket.socketpair()
    with a, b:
        _send_cell(a, 7, 3, 2, k, v, piece)
        reader = FrameReader(b)
        ftype, body = reader.read(time.perf_counter() + 5)
        head = P.decode(ftype, body)
        assert isinstance(head, P.CellHeader)
        parts: list[bytes] = []
        while sum(map(len, parts)) < head.payload_len:
            ftype, body = reader.read(time.perf_counter() + 5)
            assert ftype == P.PIECE
            parts.append(body)
        cell = _decode_cell(head, b"".join(parts), 0, 0.0)
    assert (cell.chunk, cell.layer) == (3, 2)
    assert cell.k.dtype == np.dtype(dtype) and cell.k.shape == shape
    assert np.array_equal(cell.k, k) and np.array_equal(cell.v, v)


def test_crc_mismatch_is_a_corrupt_frame() -> None:
    k = np.ones((1, 2, 3), np.float32)
    payload = k.tobytes() * 2
    head = P.CellHeader(1, 0, 0, k.dtype, (1, 2, 3), "raw", len(payload), len(payload) // 2,
                        P.cell_crc(1, 0, 0, k.dtype, (1, 2, 3), len(payload) // 2, "raw", payload))
    flipped = payload[:5] + bytes([payload[5] ^ 1]) + payload[6:]
    with pytest.raises(P.CorruptFrame, match="crc32"):
        _decode_cell(head, flipped, 0, 0.0)
    wrong_size = P.CellHeader(1, 0, 0, k.dtype, (1, 2, 4), "raw", len(payload), len(payload) // 2,
                              P.cell_crc(1, 0, 0, k.dtype, (1, 2, 4), len(payload) // 2, "raw", payload))
    with pytest.raises(P.CorruptFrame, match="decode"):
        _decode_cell(wrong_size, payload, 0, 0.0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"XX" + bytes([P.VERSION, P.PING]) + struct.pack("<II", 8, 0), "bad frame header"),
        (b"SK" + bytes([9, P.PING]) + struct.pack("<II", 8, 0), "bad frame header"),
        (b"SK" + bytes([P.VERSION, 99]) + struct.pack("<II", 0, 0), "unknown frame type"),
    ],
)
def test_malformed_headers(data: bytes, match: str) -> None:
    with pytest.raises(P.CorruptFrame, match=match):
        P.parse_header(data)


def test_oversized_frames_are_refused() -> None:
    head = P.HEADER.pack(P.MAGIC, P.VERSION, P.PIECE, P.MAX_FRAME_BYTES + 1, 0)
    with pytest.raises(P.CorruptFrame) as info:
        P.parse_header(head)
    assert info.value.code == P.E_FRAME_TOO_LARGE
    with pytest.raises(ValueError, match="MAX_FRAME_BYTES"):
        P.frame(P.PIECE, bytes(P.MAX_FRAME_BYTES + 1))


def test_malformed_bodies() -> None:
    fetch = P.encode(P.Fetch(1, "key", 16, "raw", CellBlock(0, 1, 0, 1)))[P.HEADER.size :]
    with pytest.raises(P.CorruptFrame, match="too short"):
        P.decode(P.FETCH, fetch[:10])
    with pytest.raises(P.CorruptFrame, match="trailing"):
        P.decode(P.FETCH, fetch + b"x")
    with pytest.raises(P.CorruptFrame, match="overruns"):
        P.decode(P.FETCH, fetch[:-3])
    empty_block = struct.pack("<QI4II", 1, 16, 3, 3, 0, 1, 0) + b"\x00\x00\x00"
    with pytest.raises(P.CorruptFrame) as info:
        P.decode(P.FETCH, empty_block)
    assert info.value.code == P.E_BAD_REQUEST
    bad_utf8 = struct.pack("<QH", 1, 2) + b"\x02\x00\xff\xfe"
    with pytest.raises(P.CorruptFrame, match="UTF-8"):
        P.decode(P.ERROR, bad_utf8)
    with pytest.raises(P.CorruptFrame, match="no message body"):
        P.decode(P.PIECE, b"abc")


def test_reader_keeps_a_partial_frame_across_a_deadline(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = P.encode(P.Error(5, 3, "nope"))
    a.sendall(data[:6])
    reader = FrameReader(b)
    t0 = time.perf_counter()
    with pytest.raises(P.DeadlineExceeded):
        reader.read(t0 + 0.05)
    assert time.perf_counter() - t0 < 1.0
    a.sendall(data[6:])
    assert P.decode(*reader.read(time.perf_counter() + 1)) == P.Error(5, 3, "nope")


def test_reader_reports_eof_and_wakeups(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    wake_r, wake_w = make_wake_pair()
    with wake_r, wake_w:
        reader = FrameReader(b, wake=wake_r)
        ring(wake_w)
        with pytest.raises(Woken):
            reader.read(time.perf_counter() + 5)
    a.close()
    with pytest.raises(P.PeerGone):
        FrameReader(b).read(time.perf_counter() + 5)


def test_reader_refuses_an_oversized_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(P.HEADER.pack(P.MAGIC, P.VERSION, P.PIECE, 5000, 0))
    with pytest.raises(P.CorruptFrame) as info:
        FrameReader(b, max_frame_bytes=4096).read(time.perf_counter() + 1)
    assert info.value.code == P.E_FRAME_TOO_LARGE
