"""The importance-scoring kernel over quantised keys (numpy), run for the host's share and, as the same
function, for the modelled drive's share: identical results whoever is charged for it.

Keys are quantised per token in blocks of 32 values (symmetric, one fp16 scale per block: GGML Q8_0/Q4_0
style; the layout is `sparkv.core.keyplane`). The query of each head is quantised to INT8 too. A token's
score is the max over query heads of its scaled logit q_h . k_t (the key head of h's GQA group): comparable
across any split of the tokens, so each side can return its own candidates. Shapes: n groups, G tokens per
group, d = KV heads x head dim, H query heads, hd head dim.
"""

from __future__ import annotations

import numpy as np

from sparkv.core.keyplane import QUANT_BLOCK, key_record_bytes


def quantize_keys(keys: np.ndarray, bits: int) -> np.ndarray:
    """keys float [n, G, d] -> records uint8 [n, record bytes]."""
    n, g, d = keys.shape
    blocks = keys.astype(np.float32).reshape(n, g, d // QUANT_BLOCK, QUANT_BLOCK)
    top = (1 << (bits - 1)) - 1  # 127 or 7
    scale = np.abs(blocks).max(axis=3, keepdims=True) / top
    scale16 = scale.astype(np.float16)
    safe = np.where(scale16 == 0, np.float16(1), scale16).astype(np.float32)
    q = np.clip(np.rint(blocks / safe), -top - 1, top).astype(np.int8).reshape(n, g, d)
    if bits == 4:
        u = (q.astype(np.int16) & 0xF).astype(np.uint8).reshape(n, g, d // 2, 2)
        values = (u[..., 0] | (u[..., 1] << 4)).reshape(n, -1)
    else:
        values = q.view(np.uint8).reshape(n, -1)
    out = np.concatenate([values, scale16.reshape(n, -1).view(np.uint8)], axis=1)
    assert out.shape[1] == key_record_bytes(g, d, bits)
    return out


def dequantize_keys(records: np.ndarray, group_tokens: int, key_width: int, bits: int) -> np.ndarray:
    """records uint8 [n, record bytes] -> keys float32 [n * G, d] (value x its block's scale)."""
    n, g, d = records.shape[0], group_tokens, key_width
    nvalues = g * d * bits // 8
    raw = records[:, :nvalues]
    if bits == 4:
        lo = (raw & 0xF).astype(np.int8)
        hi = (raw >> 4).astype(np.int8)
        vals = np.stack([lo, hi], axis=-1).reshape(n, g * d)
        vals = np.where(vals > 7, vals - 16, vals).astype(np.float32)
    else:
        vals = raw.view(np.int8).astype(np.float32)
    scales = np.ascontiguousarray(records[:, nvalues:]).view(np.float16).astype(np.float32)  # [n, G*d/32]
    k = vals.reshape(n * g, d // QUANT_BLOCK, QUANT_BLOCK) * scales.reshape(n * g, d // QUANT_BLOCK, 1)
    return k.reshape(n * g, d)


def quantize_query(q: np.ndarray) -> np.ndarray:
    """q float [H, hd] -> its INT8 image per head (dequantised, float32): what the drive is sent."""
    scale = np.abs(q).max(axis=1, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale)
    return (np.clip(np.rint(q / scale), -127, 127) * scale).astype(np.float32)


def token_scores(keys: np.ndarray, q: np.ndarray, kv_heads: int, scaling: float) -> np.ndarray:
    """keys float32 [T, d] (d = KV x hd), q float32 [H, hd] -> max over heads of the scaled logit, [T]."""
    t = keys.shape[0]
    heads, hd = q.shape
    k = keys.reshape(t, kv_heads, hd)
    qg = q.reshape(kv_heads, heads // kv_heads, hd)
    logits = np.einsum("tkd,kgd->tkg", k, qg, optimize=True)  # [T, KV, H/KV]
    return logits.reshape(t, heads).max(axis=1) * np.float32(scaling)


def score_records(records: np.ndarray, q: np.ndarray, group_tokens: int, kv_heads: int, bits: int,
                  scaling: float) -> np.ndarray:  # fmt: skip
    """Group scores [n] (the max over each group's tokens) from quantised records and an INT8 query."""
    n = records.shape[0]
    if n == 0:
        return np.zeros(0, np.float32)
    d = kv_heads * q.shape[1]
    keys = dequantize_keys(records, group_tokens, d, bits)
    return token_scores(keys, q, kv_heads, scaling).reshape(n, group_tokens).max(axis=1).astype(np.float32)
