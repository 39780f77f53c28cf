"""Block-sparse causal attention for local prefill: pooled-key scores choose the key blocks each query block reads.

Positions are cut into blocks of `spec.block` tokens aligned at position 0, for queries and keys alike. For
each query block and head, the block means of the queries and keys give a pooled score per key block
(q_mean . k_mean * scale); a softmax over the causally visible key blocks ranks them, and the fewest whose
mass reaches `tau` are kept (or the `top_k` best). The first `sink_blocks` and the diagonal/local blocks are
always kept; a query block that sees at most `dense_below` key blocks attends densely. Attention then runs
over the gathered keys of the kept blocks only (exact softmax within them), so the work done is the kept
fraction of the causal work: heads of one query block are padded to the largest kept count among them, and
`BlockStats.computed` counts those padded blocks, the honest measure of work.

Shapes as in `prefill_layers`: H query heads, KV key/value heads, hd head dim, N new tokens at positions
[start, start + N), T = start + N keys. Sliding-window layers attend densely.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparkv.core.attention import AttentionSpec, parse_attention
from sparkv.executor.model.prefill_layers import attend


@dataclass(frozen=True)
class BlockStats:
    """Key blocks of one attention call, summed over heads and query blocks."""

    kept: int  # (head, query block, key block) triples selected
    allowed: int  # triples the causal mask allows: the dense work
    computed: int  # triples multiplied after padding heads of a query block to the same count

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.allowed if self.allowed else 1.0

    @property
    def computed_fraction(self) -> float:
        return self.computed / self.allowed if self.allowed else 1.0

    def __add__(self, other: BlockStats) -> BlockStats:
        return BlockStats(self.kept + other.kept, self.allowed + other.allowed, self.computed + other.computed)


def _kv_heads(num_heads: int, num_kv: int, device: torch.device) -> Tensor:
    """[H] the K/V head each query head reads (grouped-query attention)."""
    return torch.arange(num_heads, device=device) // (num_heads // num_kv)


def pooled_scores(q: Tensor, k: Tensor, start: int, block: int, scale: float) -> Tensor:
    """q [H, N, hd], k [KV, T, hd] -> [H, nqb, nkb] float32 scores of query-block means against key-block means.

    Query block i covers positions [i0*block, ...) clipped to [start, start+N), i0 = start // block.
    """
    h, n, hd = q.shape
    t = k.shape[1]
    q0 = start // block
    nqb = (start + n - 1) // block - q0 + 1
    nkb = (t + block - 1) // block
    qf = F.pad(q.float(), (0, 0, start - q0 * block, (q0 + nqb) * block - start - n))  # [H, nqb*block, hd]
    q_counts = torch.zeros(nqb * block, device=q.device)
    q_counts[start - q0 * block : start - q0 * block + n] = 1.0
    q_mean = qf.view(h, nqb, block, hd).sum(2) / q_counts.view(nqb, block).sum(1)[None, :, None]  # [H, nqb, hd]
    kf = F.pad(k.float(), (0, 0, 0, nkb * block - t))  # [KV, nkb*block, hd]
    k_counts = torch.clamp(t - torch.arange(nkb, device=k.device) * block, max=block).float()  # [nkb]
    k_mean = kf.view(k.shape[0], nkb, block, hd).sum(2) / k_counts[None, :, None]  # [KV, nkb, hd]
    k_mean = k_mean[_kv_heads(h, k.shape[0], q.device)]  # [H, nkb, hd]
    return torch.einsum("hqd,hkd->hqk", q_mean, k_mean) * scale


def select_blocks(scores: Tensor, start: int, block: int, spec: AttentionSpec) -> Tensor:
    """Pooled scores [H, nqb, nkb] -> bool [H, nqb, nkb]: the key blocks each (head, query block) reads."""
    _, nqb, nkb = scores.shape
    q_index = torch.arange(nqb, device=scores.device)[:, None] + start // block  # [nqb, 1] absolute
    k_index = torch.arange(nkb, device=scores.device)[None, :]  # [1, nkb]
    causal = k_index <= q_index  # [nqb, nkb]
    forced = (k_index < spec.sink_blocks) | ((k_index > q_index - spec.local_blocks) & causal)
    forced = forced | (causal & (q_index + 1 <= spec.dense_below))  # few visible blocks: dense
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)  # [H, nqb, nkb]
    order = torch.argsort(probs, dim=-1, descending=True, stable=True)
    ranked = probs.gather(-1, order)
    if spec.top_k:
        keep_ranked = torch.arange(nkb, device=scores.device) < spec.top_k  # [nkb]
        keep_ranked = keep_ranked.expand_as(ranked)
    else:
        keep_ranked = (ranked.cumsum(-1) - ranked) < spec.tau  # include the block that crosses tau
    keep = torch.zeros_like(keep_ranked).scatter(-1, order, keep_ranked)
    return (keep | forced) & causal


def block_sparse_attend(
    q: Tensor, k: Tensor, v: Tensor, start: int, scale: float, spec: AttentionSpec
) -> tuple[Tensor, BlockStats]:
    """q [H, N, hd] over keys/values [KV, T, hd] with T = start + N -> ([N, H*hd], stats)."""
    h, n, _ = q.shape
    t = k.shape[1]
    b = spec.block
    if t != start + n:
        raise ValueError(f"keys must cover positions [0, start + N) = [0, {start + n}), got {t}")
    keep = select_blocks(pooled_scores(q, k, start, b, scale), start, b, spec)  # [H, nqb, nkb]
    kvh = _kv_heads(h, k.shape[0], q.device)[:, None]  # [H, 1]
    q0 = start // b
    outs: list[Tensor] = []
    kept = allowed = computed = 0
    for i in range(keep.shape[1]):
        qi = q0 + i  # absolute query block
        lo, hi = max(start, qi * b), min(start + n, (qi + 1) * b)  # its positions
        sel = keep[:, i, : qi + 1]  # [H, qi+1]
        counts = sel.sum(-1)  # [H]
        m = int(counts.max())
        order = torch.argsort(sel.to(torch.int8), dim=-1, descending=True, stable=True)[:, :m]  # [H, m]
        valid_block = sel.gather(-1, order)  # [H, m]
        pos = (order[..., None] * b + torch.arange(b, device=q.device)).reshape(h, m * b)  # [H, m*b]
        q_pos = torch.arange(lo, hi, device=q.device)  # [nq]
        valid = valid_block.repeat_interleave(b, dim=-1) & (pos < t)  # [H, m*b]
        mask = valid[:, None, :] & (pos[:, None, :] <= q_pos[None, :, None])  # [H, nq, m*b]
        idx = pos.clamp(max=t - 1)
        k_sel, v_sel = k[kvh, idx], v[kvh, idx]  # [H, m*b, hd]
        out = F.scaled_dot_product_attention(
            q[None, :, lo - start : hi - start], k_sel[None], v_sel[None], attn_mask=mask[None], scale=scale
        )  # [1, H, nq, hd]
        outs.append(out[0])
        kept, allowed, computed = kept + int(counts.sum()), allowed + h * (qi + 1), computed + h * m
    attn = torch.cat(outs, dim=1)  # [H, N, hd]
    return attn.transpose(0, 1).reshape(n, -1), BlockStats(kept, allowed, computed)


class PrefillAttention:
    """The attention callable `layer_step` takes, for one `AttentionSpec`; keeps the last call's stats."""

    def __init__(self, spec: AttentionSpec | str = "dense") -> None:
        self.spec = parse_attention(spec) if isinstance(spec, str) else spec
        self.last: BlockStats | None = None  # stats of the last call (None: it attended densely)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, start: int, scale: float, window: int | None) -> Tensor:
        if not self.spec.sparse or window is not None:
            self.last = None
            return attend(q, k, v, start, scale, window)
        out, self.last = block_sparse_attend(q, k, v, start, scale, self.spec)
        return out


def dense_stats(num_heads: int, start: int, n: int, block: int) -> BlockStats:
    """The block counts of dense attention over the same query positions (every causal block kept)."""
    q0, q1 = start // block, (start + n - 1) // block
    allowed = num_heads * sum(i + 1 for i in range(q0, q1 + 1))
    return BlockStats(allowed, allowed, allowed)
