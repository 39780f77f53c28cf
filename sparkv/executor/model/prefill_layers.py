"""One decoder layer at a time, from a Hugging Face model's own modules, with K/V written to explicit buffers.

HF's layer call appends to its cache object; the executor needs to write a chunk's K/V at its true
positions in a preallocated buffer, and to attend over cells that arrived from the network. So the layer
is spelled out here (as gpt-fast does) from the modules' weights: norm, projections, rotary embedding
(the model's own `rotary_emb`, at absolute positions), attention with an explicit causal mask, output
projection, MLP. Shapes: N new tokens at positions [start, start + N), D hidden, H query heads,
KV key/value heads, hd head dim. Batch size is always 1 and left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from sparkv.core.errors import UserError
from sparkv.executor.model.hf_compat import attention_scaling

LLAMA_LIKE = ("llama", "qwen2", "mistral")


class LayerMath(Protocol):
    """Family-specific pieces of a decoder-only transformer."""

    num_layers: int

    def embed(self, ids: Tensor, start: int) -> Tensor:
        """ids [N] -> residual stream x [N, D]."""
        ...

    def qkv(self, layer: int, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, D] -> q [H, N, hd], k [KV, N, hd], v [KV, N, hd], position encoding applied."""
        ...

    def finish(self, layer: int, x: Tensor, attn: Tensor) -> Tensor:
        """Residual x [N, D] and attention output [N, H*hd] -> x [N, D] after the layer."""
        ...

    def head(self, x: Tensor) -> Tensor:
        """x [N, D] -> logits [N, vocab] (final norm + LM head)."""
        ...

    def scaling(self, layer: int) -> float: ...

    def window(self, layer: int) -> int | None:
        """Sliding-window length of `layer`, or None for full causal attention."""
        ...


def _heads(t: Tensor, head_dim: int) -> Tensor:
    """[N, heads*hd] -> [heads, N, hd]."""
    return t.view(t.shape[0], -1, head_dim).transpose(0, 1)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on t [heads, N, hd] with cos, sin [1, N, hd]."""
    return t * cos + rotate_half(t) * sin


class LlamaMath:
    """Llama, Qwen2 (q/k/v biases live in the Linear modules) and Mistral (sliding window)."""

    def __init__(self, model: Any) -> None:
        self.base = model.model
        self.lm_head = model.lm_head
        self.layers = self.base.layers
        self.num_layers = len(self.layers)
        self.head_dim = int(self.layers[0].self_attn.head_dim)
        config = model.config
        mistral_window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
        self._windows = [getattr(layer.self_attn, "sliding_window", mistral_window) for layer in self.layers]
        self._rope_key: tuple[int, int, torch.dtype, torch.device, bool] | None = None
        self._rope: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))

    def rope(self, h: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """cos, sin [1, N, hd] at positions [start, start + N): computed once for all layers of a step, since
        they depend only on the positions (the model's own `rotary_emb`, scaling included)."""
        key = (start, int(h.shape[0]), h.dtype, h.device, torch.is_inference_mode_enabled())
        if key != self._rope_key:
            positions = torch.arange(start, start + h.shape[0], device=h.device)[None]  # [1, N]
            self._rope = self.base.rotary_emb(h, positions)
            self._rope_key = key
        return self._rope

    def query(self, layer: int, x: Tensor, start: int) -> Tensor:
        """x [N, D] -> layer's q [H, N, hd] only, position encoding applied (for predicting its attention)."""
        block = self.layers[layer]
        h = block.input_layernorm(x)  # [N, D]
        return _apply_rope(_heads(block.self_attn.q_proj(h), self.head_dim), *self.rope(h, start))  # [H, N, hd]

    def embed(self, ids: Tensor, start: int) -> Tensor:
        return self.base.embed_tokens(ids)  # [N, D]; position enters through RoPE

    def qkv(self, layer: int, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        block = self.layers[layer]
        attn = block.self_attn
        h = block.input_layernorm(x)  # [N, D]
        q = _heads(attn.q_proj(h), self.head_dim)  # [H, N, hd]
        k = _heads(attn.k_proj(h), self.head_dim)  # [KV, N, hd]
        v = _heads(attn.v_proj(h), self.head_dim)  # [KV, N, hd]
        cos, sin = self.rope(h, start)  # [1, N, hd] each
        return _apply_rope(q, cos, sin), _apply_rope(k, cos, sin), v

    def finish(self, layer: int, x: Tensor, attn: Tensor) -> Tensor:
        block = self.layers[layer]
        x = x + block.self_attn.o_proj(attn)  # [N, D]
        return x + block.mlp(block.post_attention_layernorm(x))

    def head(self, x: Tensor) -> Tensor:
        return self.lm_head(self.base.norm(x))  # [N, vocab]

    def scaling(self, layer: int) -> float:
        return attention_scaling(self.layers[layer].self_attn)

    def window(self, layer: int) -> int | None:
        return self._windows[layer]


class GPT2Math:
    """GPT-2: learned absolute position embeddings, fused c_attn, pre-norm blocks."""

    def __init__(self, model: Any) -> None:
        self.base = model.transformer
        self.lm_head = model.lm_head
        self.blocks = self.base.h
        self.num_layers = len(self.blocks)
        self.hidden = int(model.config.n_embd)
        self.head_dim = self.hidden // int(model.config.n_head)

    def embed(self, ids: Tensor, start: int) -> Tensor:
        positions = torch.arange(start, start + ids.shape[0], device=ids.device)  # [N]
        return self.base.wte(ids) + self.base.wpe(positions)  # [N, D]

    def qkv(self, layer: int, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        block = self.blocks[layer]
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(self.hidden, dim=-1)  # 3 x [N, D]
        return _heads(q, self.head_dim), _heads(k, self.head_dim), _heads(v, self.head_dim)  # [H, N, hd]

    def finish(self, layer: int, x: Tensor, attn: Tensor) -> Tensor:
        block = self.blocks[layer]
        x = x + block.attn.c_proj(attn)  # [N, D]
        return x + block.mlp(block.ln_2(x))

    def head(self, x: Tensor) -> Tensor:
        return self.lm_head(self.base.ln_f(x))  # [N, vocab]

    def scaling(self, layer: int) -> float:
        return attention_scaling(self.blocks[layer].attn)

    def window(self, layer: int) -> int | None:
        return None


def layer_math(model: Any) -> LayerMath:
    """The layer math for a loaded HF causal LM."""
    model_type = str(model.config.model_type)
    if model_type in LLAMA_LIKE:
        return LlamaMath(model)
    if model_type == "gpt2":
        return GPT2Math(model)
    raise UserError(f"layer-wise prefill does not support {model_type!r}; supported: {[*LLAMA_LIKE, 'gpt2']}")


def causal_mask(start: int, n: int, window: int | None, device: torch.device) -> Tensor:
    """[N, start + N] bool: token at position start+i sees key j iff j <= start+i (and j > start+i-window)."""
    rows = torch.arange(start, start + n, device=device)[:, None]  # [N, 1]
    cols = torch.arange(start + n, device=device)[None, :]  # [1, start+N]
    mask = cols <= rows
    if window is not None:
        mask &= cols > rows - window
    return mask


def attend(q: Tensor, k: Tensor, v: Tensor, start: int, scale: float, window: int | None) -> Tensor:
    """q [H, N, hd] over keys/values [KV, start+N, hd] (positions 0..start+N-1) -> [N, H*hd]."""
    n = q.shape[1]
    mask = causal_mask(start, n, window, q.device)  # [N, start+N]
    out = F.scaled_dot_product_attention(
        q[None], k[None], v[None], attn_mask=mask, scale=scale, enable_gqa=q.shape[0] != k.shape[0]
    )  # [1, H, N, hd]
    return out[0].transpose(0, 1).reshape(n, -1)  # [N, H*hd]


AttendFn = Callable[[Tensor, Tensor, Tensor, int, float, int | None], Tensor]  # the signature of `attend`


def layer_step(
    math: LayerMath, layer: int, x: Tensor, start: int, k_buf: Tensor, v_buf: Tensor, attend_fn: AttendFn | None = None
) -> Tensor:
    """Run `layer` on x [N, D] at positions [start, start+N): write its K/V into k_buf/v_buf [KV, S, hd]
    at those positions, attend over buffer positions [0, start+N) (with `attend_fn`, default `attend`),
    return x [N, D] after the layer."""
    end = start + x.shape[0]
    q, k, v = math.qkv(layer, x, start)
    k_buf[:, start:end] = k
    v_buf[:, start:end] = v
    fn = attend if attend_fn is None else attend_fn
    attn = fn(q, k_buf[:, :end], v_buf[:, :end], start, math.scaling(layer), math.window(layer))
    return math.finish(layer, x, attn)
