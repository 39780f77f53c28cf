"""Top-M recall of KVSwap's predicted selection under variants of its scoring, on one captured decode.

`capture_decode` prefills a context, then decodes greedily with full attention for a few steps, keeping for
every (step, layer) the hidden state entering the layer and the layer's true post-RoPE query; the exact
attention mass per token (softmax per query head, summed over heads) is the reference. `variant_tokens`
scores every token as a KVSwap-like predictor would under one `ScoreVariant`; `variant_recall` turns the
scores into groups and measures |predicted top M/G ∩ exact top M/G| / |exact top| per (step, layer), sinks
excluded, exactly as `topm_recall` does for recorded traces. Nothing here is timed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sparkv.executor.model.decode import _check_family, calibrate_projections, prefill_keys
from sparkv.executor.model.models import LoadedModel
from sparkv.policies.decode.base import top_groups


@dataclass
class DecodeCapture:
    """Keys of a context and of the decoded tokens, and per (step, layer) the layer's input and query."""

    context_tokens: int
    keys: list[Tensor]  # [KV, T + steps, hd] per layer, post-RoPE, rounded to fp16 as the KV cache holds them
    inputs: list[list[Tensor]]  # [steps][layers] hidden state [D] entering the layer
    queries: list[list[Tensor]]  # [steps][layers] true post-RoPE query [H, hd]
    exact: list[list[Tensor]]  # [steps][layers] attention mass per token [T + step]
    tokens: list[int]


@torch.inference_mode()
def capture_decode(loaded: LoadedModel, ids: Tensor, steps: int) -> DecodeCapture:
    """Prefill `ids`, then `steps` greedy tokens with full attention, capturing what scoring needs."""
    math = _check_family(loaded)
    spec = loaded.spec
    total = int(ids.shape[0])
    ks, vs, last = prefill_keys(loaded, ids)
    keys = [torch.cat([k, torch.zeros(k.shape[0], steps, k.shape[2])], dim=1) for k in ks]
    vals = [torch.cat([v, torch.zeros(v.shape[0], steps, v.shape[2])], dim=1) for v in vs]
    token = int(math.head(last[None])[0].argmax())
    inputs, queries, exact, tokens = [], [], [], [token]
    group = spec.num_attention_heads // spec.num_kv_heads
    for step in range(steps):
        pos = total + step
        x = math.embed(torch.tensor([token]), pos)
        xs, qs, ms = [], [], []
        for layer in range(spec.num_layers):
            xs.append(x[0].clone())
            q, k, v = math.qkv(layer, x, pos)  # [H, 1, hd], [KV, 1, hd]
            keys[layer][:, pos] = k[:, 0]
            vals[layer][:, pos] = v[:, 0]
            kk, vv = keys[layer][:, : pos + 1], vals[layer][:, : pos + 1]
            qs.append(q[:, 0].clone())
            logits = (kk[:, :pos].half().float().repeat_interleave(group, 0) @ q[:, 0, :, None])[..., 0]
            ms.append(torch.softmax(logits * math.scaling(layer), dim=-1).sum(0))
            out = F.scaled_dot_product_attention(q[None], kk[None], vv[None], scale=math.scaling(layer),
                                                 enable_gqa=group > 1)  # fmt: skip
            x = math.finish(layer, x, out[0].transpose(0, 1).reshape(1, -1))
        token = int(math.head(x)[0].argmax())
        tokens.append(token)
        inputs.append(xs)
        queries.append(qs)
        exact.append(ms)
    return DecodeCapture(total, [k.half().float() for k in keys], inputs, queries, exact, tokens)


@dataclass(frozen=True)
class ScoreVariant:
    """How a token's score is predicted. The KVSwap artifact's default: `query="previous"` (layer l's W_q on
    the hidden state entering layer l-1), `heads="mean-linear"` (the query averaged per GQA group, one linear
    score summed over KV heads), `group="max"`."""

    name: str
    query: str = "previous"  # "previous" (one layer ahead) | "current" (the layer's true query: no lookahead)
    heads: str = "mean-linear"  # "mean-linear" | "softmax-sum" (per query head, softmax, summed) | "exact-keys"
    group: str = "max"  # "max" over a group's token scores | "sum" (meaningful for softmax scores)


def variant_tokens(loaded: LoadedModel, cap: DecodeCapture, projections: list[Tensor], v: ScoreVariant,
                   step: int, layer: int) -> Tensor:  # fmt: skip
    """Per-token predicted scores [T + step] at (step, layer) under variant `v` (metadata Z = K U)."""
    math = _check_family(loaded)
    spec = loaded.spec
    heads, kvh, hd = spec.num_attention_heads, spec.num_kv_heads, spec.head_dim
    pos, tokens = cap.context_tokens + step, cap.context_tokens + step
    if v.query == "current":
        q = cap.queries[step][layer]
    else:
        x = cap.inputs[step][max(layer - 1, 0)][None]
        if layer == 0:
            x = math.embed(torch.tensor([cap.tokens[step]]), pos)
        q = math.query(layer, x, pos)[:, 0]  # [H, hd]
    k = cap.keys[layer][:, :tokens]  # [KV, T, hd]
    if v.heads == "exact-keys":
        approx = k
    else:
        u = projections[layer]  # [KV*hd, r]
        z = k.transpose(0, 1).reshape(tokens, -1) @ u  # [T, r]
        if v.heads == "mean-linear":
            qm = q.view(kvh, heads // kvh, hd).mean(dim=1).reshape(-1)
            return z @ (u.T @ qm)
        approx = (z @ u.T).view(tokens, kvh, hd).transpose(0, 1)  # [KV, T, hd]
    logits = (approx.repeat_interleave(heads // kvh, 0) @ q[:, :, None])[..., 0] * math.scaling(layer)
    return torch.softmax(logits, dim=-1).sum(0)


def variant_recall(loaded: LoadedModel, cap: DecodeCapture, projections: list[Tensor], v: ScoreVariant,
                   group_tokens: int, select_tokens: int, sink_tokens: int) -> dict[str, float]:  # fmt: skip
    """Recall of the exact top M/G groups (mean, p10, min over (step, layer)) and the attention mass ratio."""
    g = group_tokens
    sinks, select = -(-sink_tokens // g), select_tokens // g
    recalls, mass = [], []
    with torch.inference_mode():
        for step in range(len(cap.inputs)):
            full = (cap.context_tokens + step) // g
            for layer in range(len(cap.keys)):
                exact = cap.exact[step][layer][: full * g].view(full, g).sum(1).numpy()
                pred_t = variant_tokens(loaded, cap, projections, v, step, layer)[: full * g].view(full, g)
                pred = (pred_t.amax(1) if v.group == "max" else pred_t.sum(1)).numpy()
                want = set(top_groups(exact, sinks, select))
                got = top_groups(pred, sinks, select)
                recalls.append(len(want.intersection(got)) / len(want))
                mass.append(float(exact[list(got)].sum()) / float(exact[sorted(want)].sum()))
    arr = np.asarray(recalls)
    return {"recall_mean": float(arr.mean()), "recall_p10": float(np.quantile(arr, 0.1)),
            "recall_min": float(arr.min()), "mass_ratio_mean": float(np.mean(mass))}  # fmt: skip


def projections_for(loaded: LoadedModel, calib_ids: list[Tensor], rank: int) -> list[Tensor]:
    """U per layer calibrated on the keys of several texts (concatenated per layer)."""
    per_text = [prefill_keys(loaded, ids)[0] for ids in calib_ids]
    keys = [torch.cat([t[layer] for t in per_text], dim=1) for layer in range(len(per_text[0]))]
    return calibrate_projections(keys, rank)
