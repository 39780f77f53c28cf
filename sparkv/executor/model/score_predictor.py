"""KVSwap's predicted per-token scores in one fused linear form.

Layer l's score of token t is z_t . w_l, with z_t = U_l^T k_t the projected post-RoPE key (all KV heads
concatenated) and w_l = U_l^T qbar_l the projection of the query averaged over each GQA group. The query is
linear in the normalised hidden state n (q = W_q n + b), RoPE is linear in q with the same rotation for every
head, and the group mean commutes with both; so

    w_l = B_l(pos) (Wbar_l n + bbar_l),   B_l(pos) = A_l * cos - rotate_half(A_l * sin),   A_l = U_l^T

with Wbar_l, bbar_l the group means of q_proj's rows and bias. The same values as rotating every head's
query, averaging and projecting (to float rounding), with a third of the query projection and no per-head
rotation; B(pos) is built once per step for every layer.
Shapes: KV key/value heads, H query heads, hd head dim, r rank, D hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sparkv.executor.model.prefill_layers import LlamaMath, rotate_half


class ScorePredictor:
    """w_l for layer l from the hidden state entering the layer before it (see the module docstring)."""

    def __init__(self, math: LlamaMath, projections: list[Tensor], kv_heads: int, heads: int) -> None:
        self.math = math
        hd = math.head_dim
        self.rank = int(projections[0].shape[1])
        self._wbar: list[Tensor] = []
        self._bbar: list[Tensor | None] = []
        for block in math.layers:
            proj = block.self_attn.q_proj
            w = proj.weight.detach().float().view(kv_heads, heads // kv_heads, hd, -1)
            self._wbar.append(w.mean(dim=1).reshape(kv_heads * hd, -1).contiguous())  # [KV*hd, D]
            b = proj.bias
            self._bbar.append(None if b is None else b.detach().float().view(kv_heads, -1, hd).mean(dim=1).reshape(-1))
        self._a = torch.stack([u.T.reshape(self.rank, kv_heads, hd) for u in projections])  # [L, r, KV, hd]
        self._b_key: tuple[int, bool] | None = None
        self._b = torch.empty(0)

    def _rotated(self, x: Tensor, pos: int) -> Tensor:
        """B(pos) [L, r, KV*hd]: the projection with RoPE at `pos` folded in, for every layer."""
        key = (pos, torch.is_inference_mode_enabled())
        if key != self._b_key:
            cos, sin = self.math.rope(x, pos)
            cos, sin = cos.reshape(-1).float(), sin.reshape(-1).float()  # [hd]
            self._b = (self._a * cos - rotate_half(self._a * sin)).flatten(2).contiguous()
            self._b_key = key
        return self._b

    def weights(self, layer: int, x: Tensor, pos: int) -> Tensor:
        """w_layer [r] from x [1, D] (entering the layer before `layer`, or the embedding for layer 0)."""
        norm = self.math.layers[layer].input_layernorm
        n = F.rms_norm(x[0].float(), (x.shape[-1],), norm.weight.float(), _eps(norm))  # [D]
        qbar = self._wbar[layer] @ n  # [KV*hd]
        bias = self._bbar[layer]
        if bias is not None:
            qbar = qbar + bias
        return self._rotated(x, pos)[layer] @ qbar  # [r]


def _eps(norm: torch.nn.Module) -> float:
    """The RMSNorm's epsilon (HF's Llama/Qwen2/Mistral norms call it `variance_epsilon`)."""
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
