"""Decode-time sparse attention on a real Llama-architecture model, with KVSwap's low-rank key metadata.

`build_cache` prefills a context layer by layer, writes its K/V to per-layer files (`kvfile`), and projects
the post-RoPE keys (all KV heads concatenated per token) onto rank r: U_l holds the top-r left singular
vectors of the keys of a calibration text, and the metadata Z_l^T = (K_l U_l)^T stays in memory ([r, tokens]:
a step's scores are one vector-matrix product over contiguous rows).

`SparseDecoder` then runs one token through the layers attending only to the groups the policy chose (held
in a `SlotPool`) plus the tail group and the current token. `predicted_scores` builds layer l's query from
the hidden state entering layer l-1 (one layer ahead; layer 0 from the embedding), averages it per GQA
group, and scores every token against Z_l (`score_predictor`, in one fused linear form): one score per token
for all heads; a group scores its max.
`exact_scores` is the reference: the attention mass of each group under the layer's true query.
Shapes: KV key/value heads, H query heads, hd head dim, T tokens; batch 1 is left out.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparkv.core.errors import UserError
from sparkv.executor.model.kvfile import KVFiles, KVLayout, aligned_buffer
from sparkv.executor.model.models import LoadedModel
from sparkv.executor.model.prefill_layers import LLAMA_LIKE, LlamaMath, layer_step
from sparkv.executor.model.score_predictor import ScorePredictor

PREFILL_CHUNK = 512


class SlotPool:
    """One layer's resident groups in page-aligned memory: group -> slot, reads land in their slots."""

    def __init__(self, layout: KVLayout, capacity: int = 16) -> None:
        self.layout = layout
        self.slot_of: dict[int, int] = {}
        self.free: list[int] = []
        self.capacity = 0
        self.buf: mmap.mmap = aligned_buffer(0)
        self._alloc(max(1, capacity))

    def _alloc(self, capacity: int) -> None:
        old = self.buf if self.capacity else None
        lay = self.layout
        self.buf = aligned_buffer(capacity * lay.slot_bytes)
        rows = torch.frombuffer(self.buf, dtype=torch.float16, count=capacity * lay.slot_bytes // 2)
        self.tensor = rows.view(capacity, lay.slot_bytes // 2)[:, : lay.group_bytes // 2].view(
            capacity, 2, lay.group_tokens, lay.kv_heads, lay.head_dim
        )  # [slots, 2, G, KV, hd]
        start = 0 if old is None else self.capacity
        if old is not None:
            self.buf[: len(old)] = old[:]
        self.capacity = capacity
        self.free.extend(range(capacity - 1, start - 1, -1))

    def retain(self, groups: set[int]) -> None:
        """Free every slot whose group is not in `groups`."""
        for g in [g for g in self.slot_of if g not in groups]:
            self.free.append(self.slot_of.pop(g))

    def reserve(self, new_groups: int) -> None:
        """Room for `new_groups` more without growing (views handed out earlier stay valid only until a growth)."""
        while len(self.free) < new_groups:
            self._alloc(self.capacity * 2)

    def view(self, group: int) -> memoryview:
        """A slot for `group` (allocated if new), as the bytes a read fills."""
        slot = self.slot_of.get(group)
        if slot is None:
            if not self.free:
                self._alloc(self.capacity * 2)
            slot = self.free.pop()
            self.slot_of[group] = slot
        size = self.layout.slot_bytes
        return memoryview(self.buf)[slot * size : (slot + 1) * size]

    def put(self, group: int, kv: Tensor) -> None:
        """Place a group's K/V ([2, G, KV, hd]) directly (a group appended at the end of a step)."""
        self.view(group)
        self.tensor[self.slot_of[group]] = kv.to(torch.float16)

    def gather_into(self, groups: tuple[int, ...], k: Tensor, v: Tensor) -> int:
        """Write K, V of `groups` as float32 into k, v [KV, >= n*G, hd] (one converting copy each); n*G."""
        n = len(groups) * self.layout.group_tokens
        if not groups:
            return 0
        idx = torch.tensor([self.slot_of[g] for g in groups])
        kv = self.tensor.index_select(0, idx)  # [groups, 2, G, KV, hd] float16
        heads, hd = self.layout.kv_heads, self.layout.head_dim
        k[:, :n].copy_(kv[:, 0].reshape(n, heads, hd).transpose(0, 1))
        v[:, :n].copy_(kv[:, 1].reshape(n, heads, hd).transpose(0, 1))
        return n


@dataclass
class CacheBuild:
    """What `build_cache` leaves in memory besides the files."""

    projections: list[Tensor]  # U_l [KV*hd, r] per layer
    metadata: list[Tensor]  # Z_l^T [r, capacity tokens] per layer (columns beyond the written tokens unused)
    keys: list[Tensor]  # exact post-RoPE keys [KV, capacity tokens, hd] per layer, for reference scores
    tail_k: list[Tensor]  # [KV, tail, hd] per layer: context tokens after the last full group
    tail_v: list[Tensor]
    last_hidden: Tensor  # [D]: hidden state of the last context token after the final layer


def _check_family(loaded: LoadedModel) -> LlamaMath:
    if loaded.model_type not in LLAMA_LIKE:
        raise UserError(f"sparse decode supports {', '.join(LLAMA_LIKE)} models, not {loaded.model_type!r}")
    return LlamaMath(loaded.model)


@torch.inference_mode()
def prefill_keys(loaded: LoadedModel, ids: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Layer-wise prefill of ids [T]: (K per layer [KV, T, hd], V per layer, last hidden [D])."""
    math = _check_family(loaded)
    spec = loaded.spec
    total = int(ids.shape[0])
    ks = [torch.zeros(spec.num_kv_heads, total, spec.head_dim) for _ in range(spec.num_layers)]
    vs = [torch.zeros(spec.num_kv_heads, total, spec.head_dim) for _ in range(spec.num_layers)]
    last = torch.zeros(spec.hidden_size)
    for start in range(0, total, PREFILL_CHUNK):
        x = math.embed(ids[start : start + PREFILL_CHUNK], start)
        for layer in range(spec.num_layers):
            x = layer_step(math, layer, x, start, ks[layer], vs[layer])
        last = x[-1]
    return ks, vs, last


def calibrate_projections(keys: list[Tensor], rank: int) -> list[Tensor]:
    """U_l: top-`rank` left singular vectors of each layer's keys (all KV heads concatenated per token)."""
    out = []
    for k in keys:
        cat = k.transpose(0, 1).reshape(k.shape[1], -1)  # [T, KV*hd]
        if rank > cat.shape[1]:
            raise UserError(f"rank {rank} exceeds the key width {cat.shape[1]} (KV heads x head dim)")
        u, _, _ = torch.linalg.svd(cat.T.double(), full_matrices=False)
        out.append(u[:, :rank].float().contiguous())
    return out


@torch.inference_mode()
def build_cache(
    loaded: LoadedModel, ids: Tensor, files: KVFiles, projections: list[Tensor], reserve_tokens: int
) -> CacheBuild:
    """Prefill `ids`, write every full group to `files`, project the keys; room for `reserve_tokens` more."""
    lay = files.layout
    ks, vs, last = prefill_keys(loaded, ids)
    total = int(ids.shape[0])
    full = total // lay.group_tokens
    cap = total + reserve_tokens
    metadata, keys, tail_k, tail_v = [], [], [], []
    for layer, (k, v) in enumerate(zip(ks, vs, strict=True)):
        g, heads, hd = lay.group_tokens, lay.kv_heads, lay.head_dim
        body = torch.stack([k[:, : full * g], v[:, : full * g]])  # [2, KV, full*G, hd]
        groups = body.view(2, heads, full, g, hd).permute(2, 0, 3, 1, 4)  # [full, 2, G, KV, hd]
        files.write_groups(layer, 0, groups.to(torch.float16).numpy())
        z = torch.zeros(projections[layer].shape[1], cap)
        z[:, :total] = (k.transpose(0, 1).reshape(total, -1) @ projections[layer]).T
        metadata.append(z)
        kk = torch.zeros(heads, cap, hd)
        kk[:, :total] = k.to(torch.float16).float()
        keys.append(kk)
        tail_k.append(k[:, full * g :].clone())
        tail_v.append(v[:, full * g :].clone())
    files.save_layout()
    return CacheBuild(projections, metadata, keys, tail_k, tail_v, last)


class SparseDecoder:
    """One token at a time through every layer, attending to selected groups + tail + current token."""

    def __init__(self, loaded: LoadedModel, layout: KVLayout, cache: CacheBuild) -> None:
        self.math = _check_family(loaded)
        self.loaded, self.layout, self.cache = loaded, layout, cache
        spec = loaded.spec
        self.heads, self.kv_heads, self.head_dim = spec.num_attention_heads, spec.num_kv_heads, spec.head_dim
        self.tail_k = [t.clone() for t in cache.tail_k]  # [KV, t, hd]
        self.tail_v = [t.clone() for t in cache.tail_v]
        self._k = torch.empty(self.kv_heads, 0, self.head_dim)  # attention's K/V, reused by every layer
        self._v = torch.empty_like(self._k)
        self.predictor = ScorePredictor(self.math, cache.projections, self.kv_heads, self.heads)

    # ---- scores ----

    def token_predicted(self, layer: int, x: Tensor, pos: int, tokens: int) -> Tensor:
        """Per-token scores [tokens] of `layer` from x [1, D] entering the previous layer (or the embedding)."""
        return self.predictor.weights(layer, x, pos) @ self.cache.metadata[layer][:, :tokens]  # [T]

    def token_exact(self, layer: int, q: Tensor, tokens: int) -> Tensor:
        """Attention mass [tokens] under the layer's true q [H, 1, hd] (softmax over them, summed over heads)."""
        k = self.cache.keys[layer][:, :tokens]  # [KV, T, hd]
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=0)  # [H, T, hd]
        logits = (k @ q[:, 0, :, None])[..., 0] * self.math.scaling(layer)  # [H, T]
        return torch.softmax(logits, dim=-1).sum(dim=0)  # [T]

    def predicted_scores(self, layer: int, x: Tensor, pos: int, full_groups: int) -> np.ndarray:
        """Group scores (the max over each group's tokens) for the policy; see `token_predicted`."""
        g = self.layout.group_tokens
        tokens = self.token_predicted(layer, x, pos, full_groups * g)
        return tokens.view(full_groups, g).amax(dim=1).numpy().astype(np.float32)

    def exact_scores(self, layer: int, q: Tensor, full_groups: int) -> np.ndarray:
        """Attention mass per group (the sum over its tokens); see `token_exact`."""
        g = self.layout.group_tokens
        mass = self.token_exact(layer, q, full_groups * g)
        return mass.view(full_groups, g).sum(dim=1).numpy().astype(np.float32)

    # ---- one layer ----

    def layer(self, layer: int, x: Tensor, pos: int, pool: SlotPool, attend: tuple[int, ...]) -> Tensor:
        """x [1, D] through `layer`, attending to `attend` (in the pool), the tail and the current token."""
        q, k_new, v_new = self.math.qkv(layer, x, pos)  # [H, 1, hd], [KV, 1, hd]
        k_new16, v_new16 = k_new.to(torch.float16).float(), v_new.to(torch.float16).float()
        self.tail_k[layer] = torch.cat([self.tail_k[layer], k_new16], dim=1)
        self.tail_v[layer] = torch.cat([self.tail_v[layer], v_new16], dim=1)
        k, v = self._attended(pool, attend, self.tail_k[layer], self.tail_v[layer])  # [KV, T', hd]
        out = F.scaled_dot_product_attention(q[None], k[None], v[None], scale=self.math.scaling(layer),
                                             enable_gqa=self.heads != self.kv_heads)  # fmt: skip
        return self.math.finish(layer, x, out[0].transpose(0, 1).reshape(1, -1))

    def _attended(
        self, pool: SlotPool, attend: tuple[int, ...], tail_k: Tensor, tail_v: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The selected groups then the tail as float32 K, V [KV, T', hd], in buffers kept across layers
        (one converting copy of the selection instead of a gather, a conversion and a concatenation)."""
        need = len(attend) * self.layout.group_tokens + tail_k.shape[1]
        if self._k.shape[1] < need:
            size = max(need, 2 * self._k.shape[1])
            self._k = torch.empty(self.kv_heads, size, self.head_dim)
            self._v = torch.empty_like(self._k)
        n = pool.gather_into(attend, self._k, self._v)
        self._k[:, n:need] = tail_k
        self._v[:, n:need] = tail_v
        return self._k[:, :need], self._v[:, :need]

    def take_full_tail(self, layer: int) -> Tensor:
        """The filled tail of `layer` as one group [2, G, KV, hd]; the tail empties."""
        k, v = self.tail_k[layer], self.tail_v[layer]
        group = torch.stack([k, v]).permute(0, 2, 1, 3).contiguous()  # [2, G, KV, hd]
        self.tail_k[layer], self.tail_v[layer] = k[:, :0], v[:, :0]
        return group

    def append_metadata(self, layer: int, group: int, kv: Tensor) -> None:
        """Project a new group's keys into the metadata, and keep the exact keys for reference scores."""
        g = self.layout.group_tokens
        keys = kv[0].float()  # [G, KV, hd]
        z = keys.reshape(g, -1) @ self.cache.projections[layer]  # [G, r]
        self.cache.metadata[layer][:, group * g : (group + 1) * g] = z.T
        self.cache.keys[layer][:, group * g : (group + 1) * g] = keys.transpose(0, 1)

    def logits(self, x: Tensor) -> Tensor:
        return self.math.head(x)[0]


CACHE_FILE = "decode-cache.pt"
CACHE_FORMAT = 2  # 2: metadata saved as Z^T [r, tokens]; a build saved in another format is rebuilt


def append_filled_group(
    decoder: SparseDecoder, files: KVFiles, pools: list[SlotPool], group: int,
    also: Callable[[int, int, Tensor], None] | None = None,
) -> None:
    """At a step's end, the tail group that just filled is written to every layer's file, added to the key
    metadata and kept in the layer's pool; `also(layer, group, kv)` for whatever else a policy keeps of it."""
    for layer, pool in enumerate(pools):
        kv = decoder.take_full_tail(layer)
        files.write_groups(layer, group, kv[None].to(torch.float16).numpy())
        decoder.append_metadata(layer, group, kv)
        if also is not None:
            also(layer, group, kv)
        pool.put(group, kv)


def save_cache(folder: Path, cache: CacheBuild, tokens: int) -> None:
    """Keep what `build_cache` left in memory beside the KV files, so a later run of the same context reuses it."""
    torch.save({"projections": cache.projections, "metadata": [z[:, :tokens] for z in cache.metadata],
                "keys": [k[:, :tokens] for k in cache.keys], "tail_k": cache.tail_k, "tail_v": cache.tail_v,
                "last_hidden": cache.last_hidden, "tokens": tokens, "format": CACHE_FORMAT},
               folder / CACHE_FILE)  # fmt: skip


def load_cache(folder: Path, reserve_tokens: int) -> CacheBuild | None:
    """The saved build (with room for `reserve_tokens` more), or None when there is none (or in another format)."""
    path = folder / CACHE_FILE
    if not path.is_file():
        return None
    data = torch.load(path, weights_only=True)
    if data.get("format") != CACHE_FORMAT:
        return None
    tokens = int(data["tokens"])
    metadata, keys = [], []
    for z, k in zip(data["metadata"], data["keys"], strict=True):
        zz = torch.zeros(z.shape[0], tokens + reserve_tokens)
        zz[:, :tokens] = z
        kk = torch.zeros(k.shape[0], tokens + reserve_tokens, k.shape[2])
        kk[:, :tokens] = k
        metadata.append(zz)
        keys.append(kk)
    return CacheBuild(data["projections"], metadata, keys, data["tail_k"], data["tail_v"], data["last_hidden"])
