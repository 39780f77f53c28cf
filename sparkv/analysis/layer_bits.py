"""Per-layer KV bit allocation from measured sensitivity: which layers can take fewer bits on the wire.

Sensitivity of layer l to codec q: the mean KL (nats) of the next-token distributions at the query's
positions, lossless KV vs the same KV with only layer l passed through q (`layer_sensitivity`, on real
documents). The allocation (`allocate_layer_codecs`) starts every layer at the cheapest candidate and
upgrades, one layer at a time, the one that removes the most KL per extra byte, while the total stays within
a byte budget: the greedy answer to a multiple-choice knapsack, which treats the layers' KLs as additive
(an approximation: check the result with `sparkv quality --codec <the chosen name>`). The result is a codec
name in the per-layer grammar, e.g. "int8:0-1,int8:5,int4-g32".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from sparkv.analysis.quality import KV, QualityConfig, codec_kv, compare, generate_on_kv
from sparkv.core.errors import UserError
from sparkv.cost_models.codecs import get_codec
from sparkv.executor.model.models import LoadedModel


def layer_sensitivity(
    loaded: LoadedModel,
    kv: KV,
    queries: Sequence[Tensor],
    codecs: Sequence[str],
    chunk_tokens: int,
    on_run: Callable[[], object] | None = None,
) -> np.ndarray:
    """[layers, codecs] mean KL nats over `queries` when only that layer goes through that codec."""
    base = [generate_on_kv(loaded, kv, q, 1) for q in queries]
    out = np.zeros((len(kv), len(codecs)))
    for j, name in enumerate(codecs):
        codec = get_codec(name)
        for layer in range(len(kv)):
            lossy, _ = codec_kv([kv[layer]], codec, chunk_tokens)
            mixed = [*kv[:layer], lossy[0], *kv[layer + 1 :]]
            kls = []
            for q, b in zip(queries, base, strict=True):
                kls.append(compare(b, generate_on_kv(loaded, mixed, q, 1)).kl_nats)
                if on_run is not None:
                    on_run()
            out[layer, j] = float(np.mean(kls))
    return out


@dataclass(frozen=True)
class Allocation:
    """One codec per layer under a byte budget."""

    choice: tuple[int, ...]  # per layer, index into the candidate codecs
    codec: str  # the per-layer codec name
    bytes: float  # total bytes per token of the choice (sum over layers)
    budget_bytes: float
    predicted_kl_nats: float  # sum of the chosen layers' measured KLs (the additive estimate)


def allocate_layer_codecs(
    sensitivity: np.ndarray, bytes_per_layer: np.ndarray, budget_bytes: float, names: Sequence[str]
) -> Allocation:
    """Greedy upgrade by KL removed per extra byte; `bytes_per_layer` [layers, codecs] ascending by column cost."""
    layers, n = sensitivity.shape
    if bytes_per_layer.shape != sensitivity.shape or len(names) != n:
        raise ValueError(f"shapes differ: sensitivity {sensitivity.shape}, bytes {bytes_per_layer.shape}, {n} names")
    cheapest = int(np.argmin(bytes_per_layer.sum(axis=0)))
    choice = [cheapest] * layers
    total = float(bytes_per_layer[:, cheapest].sum())
    if total > budget_bytes:
        raise ValueError(
            f"even the cheapest codec ({names[cheapest]}: {total:.0f} B) exceeds the budget {budget_bytes:.0f} B"
        )
    for _ in range(layers * n):  # each step moves one layer to a strictly costlier codec
        best: tuple[float, int, int] | None = None
        for layer in range(layers):
            cur = choice[layer]
            for j in range(n):
                extra = bytes_per_layer[layer, j] - bytes_per_layer[layer, cur]
                gain = sensitivity[layer, cur] - sensitivity[layer, j]
                if extra <= 0 or gain <= 0 or total + extra > budget_bytes:
                    continue
                if best is None or gain / extra > best[0]:
                    best = (gain / extra, layer, j)
        if best is None:
            break
        _, layer, j = best
        total += float(bytes_per_layer[layer, j] - bytes_per_layer[layer, choice[layer]])
        choice[layer] = j
    kl = float(sum(sensitivity[layer, j] for layer, j in enumerate(choice)))
    return Allocation(tuple(choice), layer_codec_name(choice, names), total, budget_bytes, kl)


def layer_codec_name(choice: Sequence[int], names: Sequence[str]) -> str:
    """Per-layer choices -> "a:0-3,a:7,b" (the most common codec, ties to the earlier candidate, is the default;
    runs become ranges)."""
    counts = Counter(choice)
    default = max(counts, key=lambda j: (counts[j], -j))  # ties: the first candidate
    parts: list[str] = []
    layer = 0
    while layer < len(choice):
        j = choice[layer]
        end = layer
        while end + 1 < len(choice) and choice[end + 1] == j:
            end += 1
        if j != default:
            parts.append(f"{names[j]}:{layer}" if end == layer else f"{names[j]}:{layer}-{end}")
        layer = end + 1
    return ",".join([*parts, names[default]])


def run_layer_bits(
    loaded: LoadedModel, config: QualityConfig, codecs: Sequence[str], budget_pct_fp16: float
) -> tuple[np.ndarray, np.ndarray, Allocation]:
    """Sensitivity averaged over the documents of `config`, wire bytes per cell, and the allocation whose
    bytes stay within `budget_pct_fp16` % of fp16 (cells of `config.chunk_tokens` tokens)."""
    from pathlib import Path

    from sparkv.analysis.quality import default_data_dir, load_documents, prompt_ids
    from sparkv.cost_models.kv import cell_wire_bytes
    from sparkv.executor.model.prefill import reference_kv

    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    n_docs, n_q = config.documents, config.questions_per_doc
    docs = [d for ds in config.datasets for d in load_documents(data_dir, ds, n_docs, n_q)]
    per_doc = []
    for doc in docs:
        prompts = [prompt_ids(loaded, doc, q, config.max_context_tokens) for q, _ in doc.questions]
        if prompts:
            kv = reference_kv(loaded, prompts[0][0])
            per_doc.append(layer_sensitivity(loaded, kv, [q for _, q in prompts], codecs, config.chunk_tokens))
    if not per_doc:
        raise UserError("no questions to measure sensitivity on: check --dataset and --documents")
    sensitivity = np.mean(per_doc, axis=0)
    spec = loaded.spec
    layers = spec.num_layers
    wire = np.array([[cell_wire_bytes(spec, config.chunk_tokens, c, layer) for c in codecs] for layer in range(layers)],
                    dtype=np.float64)  # fmt: skip
    fp16 = sum(cell_wire_bytes(spec, config.chunk_tokens, "fp16", layer) for layer in range(layers))
    return sensitivity, wire, allocate_layer_codecs(sensitivity, wire, fp16 * budget_pct_fp16 / 100, codecs)
