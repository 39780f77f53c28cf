"""The KV server's wire format: length-prefixed binary frames, struct-packed little-endian, no pickle.

Every frame is an 8-byte header then `body_len` bytes of body:

    header   magic b"SK" | version u8 (=1) | type u8 | body_len u32           ("<2sBBI")

Strings inside bodies are a length then UTF-8 bytes (u16 length for ids and messages, u8 for codec names).

Client -> server:
    PING   (1)  nonce u64                                                     answered by PONG
    FETCH  (2)  request_id u64 | chunk_tokens u32 | chunk_lo, chunk_hi, layer_lo, layer_hi u32
                | context_key str16 | codec str8
    CANCEL (3)  request_id u64

Server -> client, for each cell of a FETCH in order (chunk-major, then layer):
    CELL   (17) request_id u64 | chunk u32 | layer u32 | dtype code u8 | shape 3 x u32
                | payload_len u64 | k_len u64 | crc32 u32 | codec str8
    PIECE  (18) payload bytes; PIECE frames follow a CELL until payload_len bytes have come; the payload
                is K's encoding (k_len bytes) then V's; crc32 is zlib.crc32 of the whole payload
    ABORT  (19) request_id u64: the open cell was cancelled mid-payload and is dropped
then one of
    END    (20) request_id u64 | total_bytes u64 (wire bytes of this request's frames) | cells u32
                | status u8 (0 complete, 1 cancelled)
    ERROR  (21) request_id u64 (0 if not about a request) | code u16 | message str16
plus PONG (22) nonce u64.

A frame whose body_len exceeds MAX_FRAME_BYTES is refused (the server answers ERROR FRAME_TOO_LARGE and
closes that connection; the client raises CorruptFrame). Cells of any size travel as many PIECE frames,
so cancelling mid-payload takes effect at the next piece.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from sparkv.core.request import CellBlock

MAGIC = b"SK"
VERSION = 1
HEADER = struct.Struct("<2sBBI")  # magic, version, type, body_len
MAX_FRAME_BYTES = 1 << 20  # largest body accepted, either direction
PIECE_BYTES = 256 * 1024  # largest PIECE body the server sends (smaller when pacing)

PING, FETCH, CANCEL = 1, 2, 3
CELL, PIECE, ABORT, END, ERROR, PONG = 17, 18, 19, 20, 21, 22
FRAME_NAMES = {PING: "PING", FETCH: "FETCH", CANCEL: "CANCEL", CELL: "CELL", PIECE: "PIECE",
               ABORT: "ABORT", END: "END", ERROR: "ERROR", PONG: "PONG"}

# ERROR codes
E_BAD_FRAME, E_FRAME_TOO_LARGE, E_UNKNOWN_CONTEXT, E_OUT_OF_RANGE = 1, 2, 3, 4
E_BAD_CODEC, E_BAD_REQUEST, E_INTERNAL, E_BUSY = 5, 6, 7, 8

END_COMPLETE, END_CANCELLED = 0, 1

DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8"),
                                    4: np.dtype("i1"), 5: np.dtype("u1")}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}

_U64 = struct.Struct("<Q")
_FETCH = struct.Struct("<QI4I")
_CELL = struct.Struct("<QIIB3IQQI")
_END = struct.Struct("<QQIB")
_ERROR = struct.Struct("<QH")


class NetError(Exception):
    """Base of the executor's wire errors."""


class PeerGone(NetError):
    """The other end closed the connection, reset it, or refused it."""


class ServerGone(PeerGone):
    """The KV server closed the connection, reset it, or refused it."""


class CorruptFrame(NetError):
    """A frame that cannot be parsed, is too large, or whose payload fails its crc32."""

    def __init__(self, message: str, code: int = E_BAD_FRAME) -> None:
        super().__init__(message)
        self.code = code


class ServerError(NetError):
    """The server answered a request with an ERROR frame."""

    def __init__(self, request_id: int, code: int, message: str) -> None:
        super().__init__(f"server error {code} for request {request_id}: {message}")
        self.request_id, self.code, self.message = request_id, code, message


class DeadlineExceeded(NetError):
    """No progress (or no completion) before the deadline."""


@dataclass(frozen=True)
class Ping:
    nonce: int


@dataclass(frozen=True)
class Pong:
    nonce: int


@dataclass(frozen=True)
class Fetch:
    request_id: int  # u64, chosen by the client
    context_key: str  # the store directory's name under the server's root
    chunk_tokens: int  # S: chunk c is tokens [c*S, min((c+1)*S, T))
    codec: str  # codec name for get_codec
    block: CellBlock  # cells to send, chunk-major


@dataclass(frozen=True)
class Cancel:
    request_id: int


@dataclass(frozen=True)
class CellHeader:
    request_id: int
    chunk: int
    layer: int
    dtype: np.dtype  # dtype of the decoded K and V
    shape: tuple[int, int, int]  # [kv_heads, tokens, head_dim] of the decoded K (and V)
    codec: str
    payload_len: int  # bytes of PIECE payload that follow: K's encoding then V's
    k_len: int  # bytes of the payload that are K's encoding
    crc32: int  # zlib.crc32 of the payload


@dataclass(frozen=True)
class Abort:
    request_id: int


@dataclass(frozen=True)
class End:
    request_id: int
    total_bytes: int  # wire bytes (headers included) of this request's CELL/PIECE/ABORT frames
    cells: int  # complete cells sent
    status: int  # END_COMPLETE or END_CANCELLED


@dataclass(frozen=True)
class Error:
    request_id: int  # 0 when not about one request
    code: int
    message: str


Message = Ping | Pong | Fetch | Cancel | CellHeader | Abort | End | Error


def _str(s: str, width: int) -> bytes:
    raw = s.encode()
    limit = 0xFF if width == 1 else 0xFFFF
    if len(raw) > limit:
        raise ValueError(f"string of {len(raw)} bytes does not fit a u{8 * width} length: {s[:40]!r}...")
    return len(raw).to_bytes(width, "little") + raw


def frame(ftype: int, body: bytes) -> bytes:
    """Header + body; ValueError when the body is larger than MAX_FRAME_BYTES."""
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"frame body of {len(body)} bytes exceeds MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    return HEADER.pack(MAGIC, VERSION, ftype, len(body)) + body


def piece(payload: bytes | memoryview) -> bytes:
    """One PIECE frame carrying part of a cell's payload (one copy: header and payload joined)."""
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"piece of {len(payload)} bytes exceeds MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    return HEADER.pack(MAGIC, VERSION, PIECE, len(payload)) + payload


def dtype_code(dtype: np.dtype) -> int:
    code = _CODE_OF.get(np.dtype(dtype))
    if code is None:
        raise ValueError(f"dtype {dtype} has no wire code (have {[str(d) for d in DTYPE_CODES.values()]})")
    return code


def encode(msg: Message) -> bytes:
    """The full frame (header and body) for one message."""
    if isinstance(msg, Ping | Pong):
        return frame(PING if isinstance(msg, Ping) else PONG, _U64.pack(msg.nonce))
    if isinstance(msg, Fetch):
        b = msg.block
        head = _FETCH.pack(msg.request_id, msg.chunk_tokens, b.chunk_lo, b.chunk_hi, b.layer_lo, b.layer_hi)
        return frame(FETCH, head + _str(msg.context_key, 2) + _str(msg.codec, 1))
    if isinstance(msg, Cancel | Abort):
        return frame(CANCEL if isinstance(msg, Cancel) else ABORT, _U64.pack(msg.request_id))
    if isinstance(msg, CellHeader):
        head = _CELL.pack(msg.request_id, msg.chunk, msg.layer, dtype_code(msg.dtype), *msg.shape,
                          msg.payload_len, msg.k_len, msg.crc32)
        return frame(CELL, head + _str(msg.codec, 1))
    if isinstance(msg, End):
        return frame(END, _END.pack(msg.request_id, msg.total_bytes, msg.cells, msg.status))
    if isinstance(msg, Error):
        return frame(ERROR, _ERROR.pack(msg.request_id, msg.code) + _str(msg.message[:2000], 2))
    raise TypeError(f"not a protocol message: {msg!r}")


class _Cursor:
    """Bounds-checked reads from a frame body; every failure is a CorruptFrame."""

    def __init__(self, body: bytes, what: str) -> None:
        self.body, self.pos, self.what = body, 0, what

    def unpack(self, st: struct.Struct) -> tuple[int, ...]:
        if self.pos + st.size > len(self.body):
            raise CorruptFrame(f"{self.what} body too short: {len(self.body)} bytes")
        out = st.unpack_from(self.body, self.pos)
        self.pos += st.size
        return out

    def string(self, width: int) -> str:
        if self.pos + width > len(self.body):
            raise CorruptFrame(f"{self.what} body too short for a string length")
        n = int.from_bytes(self.body[self.pos : self.pos + width], "little")
        self.pos += width
        if self.pos + n > len(self.body):
            raise CorruptFrame(f"{self.what} string of {n} bytes overruns the body")
        raw, self.pos = self.body[self.pos : self.pos + n], self.pos + n
        try:
            return raw.decode()
        except UnicodeDecodeError as exc:
            raise CorruptFrame(f"{self.what} string is not UTF-8") from exc

    def done(self) -> None:
        if self.pos != len(self.body):
            raise CorruptFrame(f"{self.what} body has {len(self.body) - self.pos} trailing bytes")


def parse_header(header: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> tuple[int, int]:
    """(type, body_len) of an 8-byte header; CorruptFrame for bad magic/version/type or an oversized body."""
    magic, version, ftype, length = HEADER.unpack(header)
    if magic != MAGIC or version != VERSION:
        raise CorruptFrame(f"bad frame header {header.hex()} (magic {magic!r}, version {version})")
    if ftype not in FRAME_NAMES:
        raise CorruptFrame(f"unknown frame type {ftype}")
    if length > max_frame_bytes:
        raise CorruptFrame(f"frame of {length} bytes exceeds the limit {max_frame_bytes}", E_FRAME_TOO_LARGE)
    return ftype, length


def decode(ftype: int, body: bytes) -> Message:
    """The message in a frame body (not for PIECE, whose body is raw payload)."""
    cur = _Cursor(body, FRAME_NAMES.get(ftype, str(ftype)))
    msg: Message
    if ftype in (PING, PONG):
        (nonce,) = cur.unpack(_U64)
        msg = Ping(nonce) if ftype == PING else Pong(nonce)
    elif ftype == FETCH:
        rid, s, c0, c1, l0, l1 = cur.unpack(_FETCH)
        key, codec = cur.string(2), cur.string(1)
        try:
            block = CellBlock(c0, c1, l0, l1)
        except ValueError as exc:
            raise CorruptFrame(f"FETCH {rid}: {exc}", E_BAD_REQUEST) from exc
        msg = Fetch(rid, key, s, codec, block)
    elif ftype in (CANCEL, ABORT):
        (rid,) = cur.unpack(_U64)
        msg = Cancel(rid) if ftype == CANCEL else Abort(rid)
    elif ftype == CELL:
        rid, c, lyr, code, d0, d1, d2, plen, klen, crc = cur.unpack(_CELL)
        if code not in DTYPE_CODES or klen > plen:
            raise CorruptFrame(f"CELL ({c}, {lyr}): dtype code {code}, k_len {klen} > payload_len {plen}?")
        msg = CellHeader(rid, c, lyr, DTYPE_CODES[code], (d0, d1, d2), cur.string(1), plen, klen, crc)
    elif ftype == END:
        msg = End(*cur.unpack(_END))
    elif ftype == ERROR:
        rid, code = cur.unpack(_ERROR)
        msg = Error(rid, code, cur.string(2))
    else:
        raise CorruptFrame(f"frame type {FRAME_NAMES.get(ftype, ftype)} has no message body to decode")
    cur.done()
    return msg
