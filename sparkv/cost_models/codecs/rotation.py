"""An orthogonal rotation of head_dim that spreads outlier channels before quantisation (QuaRot, QuIP#).

The rotation is a normalised Walsh-Hadamard matrix H_n / sqrt(n) (Sylvester's construction: H_1 = [1],
H_2n = [[H_n, H_n], [H_n, -H_n]]). It is symmetric and orthogonal, so it is its own inverse and keeps every
token's L2 norm, and with it the L2 norm of the quantisation error. A head_dim that is not a power of two is
split into its binary parts, largest first (e.g. 96 = 64 + 32), with one Hadamard block on each part; a
power-of-two head_dim (64 for SmolLM2, 128 for Llama) is one block over all channels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def hadamard(n: int) -> np.ndarray:
    """The n x n normalised Walsh-Hadamard matrix (float64), n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Hadamard matrix needs a power-of-two size, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def blocks(dim: int) -> list[int]:
    """Powers of two summing to `dim`, largest first (its binary digits)."""
    if dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {dim}")
    return [1 << b for b in reversed(range(dim.bit_length())) if dim >> b & 1]


@lru_cache(maxsize=16)
def rotation_matrix(dim: int) -> np.ndarray:
    """float32 [dim, dim]: block-diagonal normalised Hadamard blocks (see `blocks`); symmetric, orthogonal."""
    r = np.zeros((dim, dim))
    start = 0
    for n in blocks(dim):
        r[start : start + n, start : start + n] = hadamard(n)
        start += n
    out = r.astype(np.float32)
    out.flags.writeable = False
    return out


def fwht(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """scale * x @ H_n along the last axis (n a power of two; H_n unnormalised): the fast transform, n log n adds."""
    n = x.shape[-1]
    y = np.ascontiguousarray(x.reshape(-1, n).T)  # [n, rows]: each butterfly adds whole rows (long inner loops)
    buf, h = np.empty_like(y), 1
    while h < n:  # H_n = H_2 (x) ... (x) H_2: one butterfly per bit of the channel index, in any order
        pairs, out = y.reshape(n // (2 * h), 2, h, -1), buf.reshape(n // (2 * h), 2, h, -1)
        np.add(pairs[:, 0], pairs[:, 1], out=out[:, 0])
        np.subtract(pairs[:, 0], pairs[:, 1], out=out[:, 1])
        y, buf, h = buf, y, 2 * h
    if scale != 1.0:
        y *= y.dtype.type(scale)
    return np.ascontiguousarray(y.T).reshape(x.shape)


def rotate(x: np.ndarray) -> np.ndarray:
    """float32 x [..., head_dim] times `rotation_matrix`; `rotate(rotate(x))` is x up to float32 rounding.

    Butterflies rather than a matrix product: no BLAS threads, whose wake-ups cost milliseconds on a busy CPU.
    """
    x = np.asarray(x, np.float32)
    parts = blocks(x.shape[-1])
    if x.size == 0 or len(parts) == 1:
        return fwht(x, 1 / np.sqrt(parts[0])) if x.size else x.copy()
    out, start = np.empty_like(x), 0
    for n in parts:
        out[..., start : start + n] = fwht(x[..., start : start + n], 1 / np.sqrt(n))
        start += n
    return out
