"""The KV server's wire format: length-prefixed binary frames, struct-packed little-endian, no pickle.

Every frame is a 12-byte header then `body_len` bytes of body:

    header   magic b"SK" | version u8 (=2) | type u8 | body_len u32 | crc32 u32   ("<2sBBII")

`crc32` is zlib.crc32 of the header's first 8 bytes then the body, checked by every reader in both
directions: a flipped bit anywhere in a frame (type, length or body) is a CorruptFrame.

Strings inside bodies are a length then UTF-8 bytes (u16 length for ids and messages, u8 for codec names).

A connection opens with the server's HELLO (or, when it is full, ERROR E_BUSY and a close):
    HELLO  (23) auth u8 (1: AUTH required) | nonce 32 bytes
    AUTH   (4)  mac 32 bytes = HMAC-SHA256(secret, "client" | server nonce) | client nonce 32 bytes
    WELCOME(24) mac 32 bytes = HMAC-SHA256(secret, "server" | client nonce): the server knows it too
Without a secret the client sends no AUTH and the server accepts requests at once.

Client -> server:
    PING   (1)  nonce u64                                                     answered by PONG
    FETCH  (2)  request_id u64 | chunk_tokens u32 | chunk_lo, chunk_hi, layer_lo, layer_hi u32
                | deadline_ms u32 (0: none; the server gives up after this long) | context_key str16
                | codec str8
    CANCEL (3)  request_id u64

Server -> client, for each cell of a FETCH in order (chunk-major, then layer):
    CELL   (17) request_id u64 | chunk u32 | layer u32 | dtype code u8 | shape 3 x u32
                | payload_len u64 | k_len u64 | crc32 u32 | codec str8
    PIECE  (18) payload bytes; PIECE frames follow a CELL until payload_len bytes have come; the payload
                is K's encoding (k_len bytes) then V's; crc32 is `cell_crc`: the header's labels (request,
                chunk, layer, dtype, shape, k_len, codec) then the whole payload
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

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkv.core.request import CellBlock

MAGIC = b"SK"
VERSION = 2
HEADER = struct.Struct("<2sBBII")  # magic, version, type, body_len, crc32
_PREFIX = struct.Struct("<2sBBI")  # the part of the header the crc covers
MAX_FRAME_BYTES = 1 << 20  # largest body accepted, either direction
MAX_REQUEST_FRAME_BYTES = 70_000  # largest body a client may send (a FETCH with a 64 KiB key)
NONCE_BYTES = MAC_BYTES = 32
PIECE_BYTES = 256 * 1024  # largest PIECE body the server sends (smaller when pacing)

PING, FETCH, CANCEL, AUTH = 1, 2, 3, 4
CELL, PIECE, ABORT, END, ERROR, PONG, HELLO, WELCOME = 17, 18, 19, 20, 21, 22, 23, 24
FRAME_NAMES = {PING: "PING", FETCH: "FETCH", CANCEL: "CANCEL", AUTH: "AUTH", CELL: "CELL", PIECE: "PIECE",
               ABORT: "ABORT", END: "END", ERROR: "ERROR", PONG: "PONG", HELLO: "HELLO", WELCOME: "WELCOME"}
CLIENT_FRAMES = frozenset({PING, FETCH, CANCEL, AUTH})

# ERROR codes
E_BAD_FRAME, E_FRAME_TOO_LARGE, E_UNKNOWN_CONTEXT, E_OUT_OF_RANGE = 1, 2, 3, 4
E_BAD_CODEC, E_BAD_REQUEST, E_INTERNAL, E_BUSY = 5, 6, 7, 8
E_DEADLINE, E_AUTH, E_STORE_CORRUPT = 9, 10, 11

END_COMPLETE, END_CANCELLED = 0, 1

DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("<f8"),
                                    4: np.dtype("i1"), 5: np.dtype("u1")}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}

_U64 = struct.Struct("<Q")
_FETCH = struct.Struct("<QI4II")
_CELL_LABELS = struct.Struct("<QIIB3IQ")  # what cell_crc covers before the codec name
_CELL = struct.Struct("<QIIB3IQQI")
_END = struct.Struct("<QQIB")
_ERROR = struct.Struct("<QH")
_U32 = struct.Struct("<I")
_HELLO = struct.Struct(f"<B{NONCE_BYTES}s")
_AUTH = struct.Struct(f"<{MAC_BYTES}s{NONCE_BYTES}s")
_WELCOME = struct.Struct(f"<{MAC_BYTES}s")


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


class AuthFailed(NetError):
    """The handshake failed: a wrong or missing shared secret on either side."""


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
    deadline_ms: int = 0  # the server abandons the request after this long (0: no deadline)


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
    crc32: int  # cell_crc of the labels and the payload


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


@dataclass(frozen=True)
class Hello:
    auth: bool  # the server requires AUTH before anything else
    nonce: bytes  # NONCE_BYTES random bytes the client's mac covers


@dataclass(frozen=True)
class Auth:
    mac: bytes  # HMAC-SHA256(secret, b"client" + server nonce)
    nonce: bytes  # the client's challenge for the server


@dataclass(frozen=True)
class Welcome:
    mac: bytes  # HMAC-SHA256(secret, b"server" + client nonce); zeros when no secret is in use


Message = Ping | Pong | Fetch | Cancel | CellHeader | Abort | End | Error | Hello | Auth | Welcome


def cell_crc(rid: int, chunk: int, layer: int, dtype: np.dtype, shape: tuple[int, int, int], k_len: int,
             codec: str, payload: bytes | memoryview) -> int:
    """crc32 of a cell's labels then its payload: a payload delivered under another cell's labels fails."""
    labels = _CELL_LABELS.pack(rid, chunk, layer, dtype_code(dtype), *shape, k_len) + codec.encode()
    return zlib.crc32(payload, zlib.crc32(labels))


def mac(secret: bytes, role: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 of role + nonce under the shared secret."""
    return hmac.new(secret, role + nonce, hashlib.sha256).digest()


def _str(s: str, width: int) -> bytes:
    raw = s.encode()
    limit = 0xFF if width == 1 else 0xFFFF
    if len(raw) > limit:
        raise ValueError(f"string of {len(raw)} bytes does not fit a u{8 * width} length: {s[:40]!r}...")
    return len(raw).to_bytes(width, "little") + raw


def header(ftype: int, body: bytes | memoryview) -> bytes:
    """The 12-byte header of a frame carrying `body` (its crc computed)."""
    prefix = _PREFIX.pack(MAGIC, VERSION, ftype, len(body))
    return prefix + _U32.pack(zlib.crc32(body, zlib.crc32(prefix)))


def frame(ftype: int, body: bytes | memoryview) -> bytes:
    """Header + body; ValueError when the body is larger than MAX_FRAME_BYTES."""
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError(f"frame body of {len(body)} bytes exceeds MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    return header(ftype, body) + body


def piece(payload: bytes | memoryview) -> bytes:
    """One PIECE frame carrying part of a cell's payload (one copy: header and payload joined)."""
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"piece of {len(payload)} bytes exceeds MAX_FRAME_BYTES={MAX_FRAME_BYTES}")
    return header(PIECE, payload) + payload


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
        head = _FETCH.pack(msg.request_id, msg.chunk_tokens, b.chunk_lo, b.chunk_hi, b.layer_lo, b.layer_hi,
                           msg.deadline_ms)
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
    if isinstance(msg, Hello):
        return frame(HELLO, _HELLO.pack(int(msg.auth), msg.nonce))
    if isinstance(msg, Auth):
        return frame(AUTH, _AUTH.pack(msg.mac, msg.nonce))
    if isinstance(msg, Welcome):
        return frame(WELCOME, _WELCOME.pack(msg.mac))
    raise TypeError(f"not a protocol message: {msg!r}")


class _Cursor:
    """Bounds-checked reads from a frame body; every failure is a CorruptFrame."""

    def __init__(self, body: bytes, what: str) -> None:
        self.body, self.pos, self.what = body, 0, what

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
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


def parse_header(head: bytes, max_frame_bytes: int = MAX_FRAME_BYTES) -> tuple[int, int]:
    """(type, body_len) of a 12-byte header; CorruptFrame for bad magic/version/type or an oversized body
    (the crc is checked with the body, by `check_frame`)."""
    magic, version, ftype, length, _ = HEADER.unpack(head)
    if magic != MAGIC or version != VERSION:
        raise CorruptFrame(f"bad frame header {head.hex()} (magic {magic!r}, version {version})")
    if ftype not in FRAME_NAMES:
        raise CorruptFrame(f"unknown frame type {ftype}")
    if length > max_frame_bytes:
        raise CorruptFrame(f"frame of {length} bytes exceeds the limit {max_frame_bytes}", E_FRAME_TOO_LARGE)
    return ftype, length


def check_frame(head: bytes | bytearray | memoryview, body: bytes | memoryview) -> None:
    """CorruptFrame unless the header's crc32 matches its first 8 bytes and the body."""
    (want,) = _U32.unpack_from(head, _PREFIX.size)
    got = zlib.crc32(body, zlib.crc32(head[: _PREFIX.size]))
    if got != want:
        ftype = head[3]
        raise CorruptFrame(f"{FRAME_NAMES.get(ftype, str(ftype))} frame crc32 {got:08x} != header {want:08x}")


def decode(ftype: int, body: bytes) -> Message:
    """The message in a frame body (not for PIECE, whose body is raw payload)."""
    cur = _Cursor(body, FRAME_NAMES.get(ftype, str(ftype)))
    msg: Message
    if ftype in (PING, PONG):
        (nonce,) = cur.unpack(_U64)
        msg = Ping(nonce) if ftype == PING else Pong(nonce)
    elif ftype == FETCH:
        rid, s, c0, c1, l0, l1, deadline_ms = cur.unpack(_FETCH)
        key, codec = cur.string(2), cur.string(1)
        try:
            block = CellBlock(c0, c1, l0, l1)
        except ValueError as exc:
            raise CorruptFrame(f"FETCH {rid}: {exc}", E_BAD_REQUEST) from exc
        msg = Fetch(rid, key, s, codec, block, deadline_ms)
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
    elif ftype == HELLO:
        auth, nonce = cur.unpack(_HELLO)
        if auth not in (0, 1):
            raise CorruptFrame(f"HELLO auth flag {auth}")
        msg = Hello(bool(auth), nonce)
    elif ftype == AUTH:
        msg = Auth(*cur.unpack(_AUTH))
    elif ftype == WELCOME:
        msg = Welcome(*cur.unpack(_WELCOME))
    else:
        raise CorruptFrame(f"frame type {FRAME_NAMES.get(ftype, ftype)} has no message body to decode")
    cur.done()
    return msg
