"""Layer-wise prefill of a context into an explicit KV cache that streamed cells fill too.

The context's T tokens are split into chunks of `chunk_tokens`; a cell (c, l) is chunk c's K and V at
layer l. `LayerwisePrefill` owns, per layer, K and V buffers [KV, T + Q + max_new_tokens, hd] and each
chunk's hidden states after its computed prefix of layers. A chunk is computed for layers
[k, k') starting at its computed prefix k (layer 0: from embeddings); a cell may instead be installed
from the network. Then the query's Q tokens run layer by layer, and greedy decoding continues on the
same cache.

Chunks computed here attend with the request's `attention` (dense, or block-sparse: see `sparse_prefill`);
the query and decoding always attend densely. `block_stats` keeps, per computed (chunk range, layer), the
key blocks the sparse attention kept, for profiling and quality studies.

Threads: the executor installs streamed cells from its link thread while its compute thread computes.
That is safe because they touch disjoint cells: computing (c, l) reads only cells (c' <= c, l), which
the dependency rule requires to be present already, and a cell in flight is never present.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sparkv.core.attention import AttentionSpec
from sparkv.core.request import CellBlock, Request
from sparkv.executor.model.models import LoadedModel
from sparkv.executor.model.prefill_layers import layer_math, layer_step
from sparkv.executor.model.prefill_reference import full_prefill_reference, reference_kv
from sparkv.executor.model.sparse_prefill import BlockStats, PrefillAttention

__all__ = ["LayerwisePrefill", "full_prefill_reference", "reference_kv"]


class LayerwisePrefill:
    """KV cache and hidden states of one request, advanced by compute / install / query commands."""

    def __init__(
        self,
        loaded: LoadedModel,
        context_ids: Tensor,
        query_ids: Tensor,
        chunk_tokens: int,
        max_new_tokens: int = 32,
        attention: AttentionSpec | str = "dense",
    ) -> None:
        if context_ids.dim() != 1 or query_ids.dim() != 1:
            raise ValueError(f"token ids must be 1-D, got {tuple(context_ids.shape)} and {tuple(query_ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.loaded = loaded
        self.math = layer_math(loaded.model)
        self.device = torch.device(loaded.device)
        self.request = Request(len(context_ids), len(query_ids), chunk_tokens)  # checks the sizes
        self.context_ids = context_ids.to(self.device, torch.long)  # [T]
        self.query_ids = query_ids.to(self.device, torch.long)  # [Q]
        self.num_layers = self.math.num_layers
        self.num_chunks = self.request.num_chunks
        self.capacity = len(context_ids) + len(query_ids) + max_new_tokens
        spec = loaded.spec
        shape = (spec.num_kv_heads, self.capacity, spec.head_dim)  # [KV, T + Q + max_new, hd]
        self.k = [torch.zeros(shape, dtype=loaded.dtype, device=self.device) for _ in range(self.num_layers)]
        self.v = [torch.zeros(shape, dtype=loaded.dtype, device=self.device) for _ in range(self.num_layers)]
        self.present = [[False] * self.num_chunks for _ in range(self.num_layers)]  # [L][C]
        self.computed = [0] * self.num_chunks  # k_c so far: layers [0, k_c) computed
        self.hidden: dict[int, Tensor] = {}  # chunk -> x [chunk_len, D] after its computed prefix
        self.query_layers_done = 0
        self._query_x: Tensor | None = None  # [Q, D]
        self.tokens: list[int] = []  # first token, then generated ones
        self.attention = PrefillAttention(attention)  # what computed chunks attend with
        self.block_stats: dict[tuple[int, int, int], BlockStats] = {}  # (chunk_lo, chunk_hi, layer) -> stats

    # ---- positions ----

    @property
    def context_tokens(self) -> int:
        return self.request.context_tokens

    def chunk_span(self, chunk: int) -> tuple[int, int]:
        """Token positions [start, end) of `chunk`."""
        start = self.request.chunk_start(chunk)
        return start, start + self.request.chunk_len(chunk)

    # ---- context cells ----

    def compute(self, chunk: int, layer_lo: int, layer_hi: int) -> None:
        """Layers [layer_lo, layer_hi) of one chunk."""
        self.compute_block(CellBlock.one(chunk, layer_lo, layer_hi))

    def compute_block(self, block: CellBlock) -> None:
        """Chunks [chunk_lo, chunk_hi) x layers [layer_lo, layer_hi), run as one sequence per layer."""
        self._check_compute(block)
        start = self.chunk_span(block.chunk_lo)[0]
        end = self.chunk_span(block.chunk_hi - 1)[1]
        chunks = range(block.chunk_lo, block.chunk_hi)
        with torch.inference_mode():
            if block.layer_lo == 0:
                x = self.math.embed(self.context_ids[start:end], start)  # [N, D]
            else:
                x = torch.cat([self.hidden[c] for c in chunks])  # [N, D]
            for layer in range(block.layer_lo, block.layer_hi):
                x = layer_step(self.math, layer, x, start, self.k[layer], self.v[layer], self.attention)
                if self.attention.last is not None:
                    self.block_stats[(block.chunk_lo, block.chunk_hi, layer)] = self.attention.last
                for c in chunks:
                    self.present[layer][c] = True
        for c in chunks:
            self.computed[c] = block.layer_hi
            if block.layer_hi == self.num_layers:
                self.hidden.pop(c, None)  # fully computed: its hidden states are never needed again
            else:
                c_start, c_end = self.chunk_span(c)
                self.hidden[c] = x[c_start - start : c_end - start]

    def _check_compute(self, block: CellBlock) -> None:
        if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
            raise ValueError(f"compute {block} outside grid {self.num_chunks} x {self.num_layers}")
        for c in range(block.chunk_lo, block.chunk_hi):
            if self.computed[c] != block.layer_lo:
                raise ValueError(
                    f"compute {block}: chunk {c} has {self.computed[c]} computed layers, "
                    f"so it can only continue at layer {self.computed[c]}"
                )
        for layer in range(block.layer_lo, block.layer_hi):
            missing = [c for c in range(block.chunk_lo) if not self.present[layer][c]]
            if missing:
                raise ValueError(f"compute {block}: cell ({missing[0]}, {layer}) is not present")

    def install(self, chunk: int, layer: int, k: Tensor | np.ndarray, v: Tensor | np.ndarray) -> None:
        """Write streamed K and V [KV, chunk_len, hd] (any dtype/device, tensors or arrays) of `chunk` at `layer`.

        Arrays go into a CPU cache by numpy, single-threaded: installs run on the link's thread, and a torch
        copy there would start a second OpenMP team competing with the compute thread's for the cores.
        """
        if not (0 <= chunk < self.num_chunks and 0 <= layer < self.num_layers):
            raise ValueError(f"install ({chunk}, {layer}) outside grid {self.num_chunks} x {self.num_layers}")
        start, end = self.chunk_span(chunk)
        expected = (self.k[layer].shape[0], end - start, self.k[layer].shape[2])
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise ValueError(
                f"install ({chunk}, {layer}): K/V shapes {tuple(k.shape)}/{tuple(v.shape)}, expected {expected}"
            )
        for cache, new in ((self.k[layer], k), (self.v[layer], v)):
            dst = cache[:, start:end]
            if isinstance(new, np.ndarray) and dst.device.type == "cpu" and dst.dtype != torch.bfloat16:
                np.copyto(dst.numpy(), new, casting="unsafe")
            else:
                dst.copy_(torch.as_tensor(new))
        self.present[layer][chunk] = True

    # ---- query and decoding ----

    def query_layer(self, layer: int) -> None:
        """Prefill the query's tokens through `layer`; every context cell of that layer must be present."""
        if layer != self.query_layers_done:
            raise ValueError(f"query layer {layer} out of order: {self.query_layers_done} layers done")
        if not all(self.present[layer]):
            missing = self.present[layer].index(False)
            raise ValueError(f"query layer {layer}: context cell ({missing}, {layer}) is not present")
        start = self.context_tokens
        with torch.inference_mode():
            x = self._query_x if layer > 0 else self.math.embed(self.query_ids, start)  # [Q, D]
            assert x is not None
            self._query_x = layer_step(self.math, layer, x, start, self.k[layer], self.v[layer])
        self.query_layers_done = layer + 1

    def first_token(self) -> int:
        """Greedy next token after the query (final norm + LM head on its last position)."""
        if self.query_layers_done != self.num_layers or self._query_x is None:
            raise ValueError(f"first token needs all {self.num_layers} query layers, {self.query_layers_done} done")
        if not self.tokens:
            with torch.inference_mode():
                logits = self.math.head(self._query_x[-1:])  # [1, vocab]
            self.tokens.append(int(logits[0].argmax()))
        return self.tokens[0]

    def generate(self, n: int, stop: frozenset[int] = frozenset()) -> list[int]:
        """Up to n more greedy tokens after those produced so far, each attending to the whole cache; ends
        after a token in `stop` (an end-of-sequence id), which is kept."""
        self.first_token()
        out: list[int] = []
        with torch.inference_mode():
            for _ in range(n):
                if self.tokens[-1] in stop:
                    break
                pos = self.context_tokens + self.request.query_tokens + len(self.tokens) - 1
                if pos >= self.capacity:
                    raise ValueError(f"cache holds {self.capacity} positions; raise max_new_tokens")
                ids = torch.tensor([self.tokens[-1]], device=self.device)
                x = self.math.embed(ids, pos)  # [1, D]
                for layer in range(self.num_layers):
                    x = layer_step(self.math, layer, x, pos, self.k[layer], self.v[layer])
                token = int(self.math.head(x)[0].argmax())
                self.tokens.append(token)
                out.append(token)
        return out

    # ---- inspection ----

    def cache_tensors(self, end: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per layer (K, V) views [KV, end, hd]; `end` defaults to context + query positions."""
        end = self.context_tokens + self.request.query_tokens if end is None else end
        return [(k[:, :end], v[:, :end]) for k, v in zip(self.k, self.v, strict=True)]

    def complete(self) -> bool:
        """True when every context cell is present."""
        return all(all(row) for row in self.present)
