"""The real world of per-head eviction (Kelle's AERP, H2O): a real Llama decoding with each KV head attending
only the tokens its policy keeps, the attention it gives delivered back to the policy after each layer.

`prefill_heads` prefills the context in chunks with explicit attention, accumulating for every layer and KV
head the attention each token received from all prefill queries (the importance AERP and H2O start from).
`KelleStore` holds the KV (fp16, addressed by token position) and, where the recompute rule can save memory,
each token's layer input x (the normalised hidden state entering W_K / W_V). Entries no head keeps any more,
and the K/V of tokens stored as x, are overwritten with NaN, so attending them by mistake poisons the output:
the executor attends exactly what the policy keeps. `BitErrors` injects eDRAM retention failures (a stored 1
reads 0) into the stored fp16 bits at the rate the modelled refresh bucket of each entry implies for its
simulated lifetime. With `teacher` tokens the run is teacher-forced and scores each next token (perplexity).
Shapes: KV key/value heads, H query heads, hd head dim, T tokens, D hidden; batch 1 is left out.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparkv.core.decode import DecodeGeometry, DecodeScenario, HeadAttention, LayerPlan, decode_geometry
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.cost_models.kelle import RefreshPlan, RetentionModel
from sparkv.engine.decode import DecodeEngine
from sparkv.executor.model.gcpause import frozen_gc
from sparkv.executor.model.models import LoadedModel
from sparkv.executor.model.prefill_layers import LLAMA_LIKE, LlamaMath, rotate_half
from sparkv.policies.decode.base import DecodeContext
from sparkv.policies.decode.kelle import HeadBudget, HeadPrefill, RecomputeRule

PREFILL_CHUNK = 256
PREFILL_FILE = "kelle-prefill.pt"  # in the KV folder: the per-head prefill of the last context, tagged


def _math(loaded: LoadedModel) -> LlamaMath:
    if loaded.model_type not in LLAMA_LIKE:
        raise UserError(f"per-head decode supports {', '.join(LLAMA_LIKE)} models, not {loaded.model_type!r}")
    return LlamaMath(loaded.model)


def _heads(t: Tensor, hd: int) -> Tensor:
    return t.view(t.shape[0], -1, hd).transpose(0, 1)


def project(math: LlamaMath, layer: int, h: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised input h [N, D] at `positions` [N] -> q [H, N, hd], k [KV, N, hd], v [KV, N, hd] (RoPE applied);
    the same arithmetic as the model's own attention, for any (non-contiguous) positions: recomputation."""
    attn = math.layers[layer].self_attn
    hd = math.head_dim
    q, k, v = _heads(attn.q_proj(h), hd), _heads(attn.k_proj(h), hd), _heads(attn.v_proj(h), hd)
    cos, sin = math.base.rotary_emb(h, positions[None])
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


@dataclass(eq=False)
class KelleStore:
    """The KV cache (fp16, by token position) and the stored inputs x, per layer."""

    k: list[Tensor]  # [KV, capacity, hd] float16
    v: list[Tensor]
    x: list[Tensor] | None  # [capacity, D] float16, only where the recompute rule can save memory

    def copy(self) -> KelleStore:
        return KelleStore([t.clone() for t in self.k], [t.clone() for t in self.v],
                          [t.clone() for t in self.x] if self.x is not None else None)  # fmt: skip


@dataclass(eq=False)
class KelleSetup:
    """A context prefilled once (KV, inputs, per-head importance), shared by several policy runs."""

    loaded: LoadedModel
    scenario: DecodeScenario
    geometry: DecodeGeometry
    prefill: HeadPrefill
    store: KelleStore
    first_token: int
    build_s: float
    reused: bool = False  # the prefill was read from the KV folder, not computed
    path: Path | None = None  # the prefill file in the KV folder (None: kept in memory only)


@dataclass(eq=False)
class _Prefilled:
    """What the explicit-attention prefill of a context gives: its K/V and inputs, importance, first token."""

    k: list[Tensor]  # [KV, T, hd] float16 per layer
    v: list[Tensor]
    x: list[Tensor] | None  # [T, D] float16 per layer, only where the recompute rule can save memory
    importance: list[Tensor]  # [KV, T] float64 per layer
    first_token: int


@torch.inference_mode()
def _prefill(loaded: LoadedModel, ids: Tensor) -> _Prefilled:
    """Prefill `ids` in chunks with explicit attention, accumulating each token's received attention per head."""
    math = _math(loaded)
    spec = loaded.spec
    rule = RecomputeRule(spec.hidden_size, spec.num_kv_heads, spec.head_dim)
    total = int(ids.shape[0])
    kvh, hd, heads = spec.num_kv_heads, spec.head_dim, spec.num_attention_heads
    xs = [torch.empty((total, spec.hidden_size), dtype=torch.float16)
          for _ in range(spec.num_layers)] if rule.ever_saves else None  # fmt: skip
    imp = [torch.zeros(kvh, total, dtype=torch.float64) for _ in range(spec.num_layers)]
    kf = [torch.zeros(kvh, total, hd) for _ in range(spec.num_layers)]
    vf = [torch.zeros(kvh, total, hd) for _ in range(spec.num_layers)]
    group = heads // kvh
    last = torch.zeros(spec.hidden_size)
    for start in range(0, total, PREFILL_CHUNK):
        x = math.embed(ids[start : start + PREFILL_CHUNK], start)
        n = x.shape[0]
        end = start + n
        pos = torch.arange(start, end)
        mask = torch.arange(end)[None, :] > pos[:, None]  # [n, end]: future keys
        for layer in range(spec.num_layers):
            h = math.layers[layer].input_layernorm(x)
            q, k, v = project(math, layer, h, pos)
            kf[layer][:, start:end], vf[layer][:, start:end] = k, v
            if xs is not None:
                xs[layer][start:end] = h.to(torch.float16)
            kk = kf[layer][:, :end].repeat_interleave(group, dim=0)  # [H, end, hd]
            logits = (q @ kk.transpose(1, 2)) * math.scaling(layer)  # [H, n, end]
            probs = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1)
            imp[layer][:, :end] += probs.view(kvh, group, n, end).sum(dim=(1, 2)).double()
            out = probs @ vf[layer][:, :end].repeat_interleave(group, dim=0)  # [H, n, hd]
            x = math.finish(layer, x, out.transpose(0, 1).reshape(n, -1))
        last = x[-1]
    first = int(math.head(last[None])[0].argmax())
    return _Prefilled([t.to(torch.float16) for t in kf], [t.to(torch.float16) for t in vf], xs, imp, first)


def prefill_tag(loaded: LoadedModel, ids: Tensor) -> str:
    """What a per-head prefill depends on: the model (weights and dtype, via its id) and the context's tokens."""
    h = hashlib.sha256(f"kelle-prefill|{loaded.model_id}".encode())
    h.update(ids.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def _load_prefill(path: Path, tag: str) -> _Prefilled | None:
    """The prefill saved at `path` if it was built from the same model and context (its tag), else None."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError):
        return None
    if not isinstance(data, dict) or data.get("tag") != tag:
        return None
    return _Prefilled(data["k"], data["v"], data["x"], data["importance"], int(data["first_token"]))


def _save_prefill(path: Path, tag: str, pre: _Prefilled) -> None:
    """Write the prefill beside the other KV files (one per folder; a partial write never replaces a good one)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"tag": tag, "k": pre.k, "v": pre.v, "x": pre.x, "importance": pre.importance,
                    "first_token": pre.first_token}, tmp)  # fmt: skip
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"KV folder {path.parent} is not writable: {exc.strerror}") from exc


@torch.inference_mode()
def prepare_kelle(loaded: LoadedModel, ids: Tensor, scenario: DecodeScenario, folder: Path | None = None) -> KelleSetup:
    """Prefill `ids` with explicit attention; KV and (where useful) inputs stored with room for the steps. With
    `folder` (the KV folder, `--kv-dir`) the prefill is saved there as `PREFILL_FILE` and reused by a later
    setup of the same model and context instead of being computed again."""
    if scenario.group_tokens != 1:
        raise UserError("per-head decode (aerp, h2o) works per token: use -G 1")
    if int(ids.shape[0]) != scenario.context_tokens:
        raise UserError(f"the context has {int(ids.shape[0])} tokens, the scenario {scenario.context_tokens}")
    t0 = time.perf_counter()
    spec = loaded.spec
    path = Path(folder) / PREFILL_FILE if folder is not None else None
    tag = prefill_tag(loaded, ids)
    pre = _load_prefill(path, tag) if path is not None else None
    reused = pre is not None
    if pre is None:
        pre = _prefill(loaded, ids)
        if path is not None:
            _save_prefill(path, tag, pre)
    total, cap = int(ids.shape[0]), int(ids.shape[0]) + scenario.steps + 1
    kvh, hd = spec.num_kv_heads, spec.head_dim
    ks = [torch.full((kvh, cap, hd), float("nan"), dtype=torch.float16) for _ in range(spec.num_layers)]
    vs = [torch.full((kvh, cap, hd), float("nan"), dtype=torch.float16) for _ in range(spec.num_layers)]
    xs = [torch.full((cap, spec.hidden_size), float("nan"), dtype=torch.float16)
          for _ in range(spec.num_layers)] if pre.x is not None else None  # fmt: skip
    for layer in range(spec.num_layers):
        ks[layer][:, :total] = pre.k[layer]
        vs[layer][:, :total] = pre.v[layer]
        if xs is not None and pre.x is not None:
            xs[layer][:total] = pre.x[layer]
    how = f"read from {path}" if reused else "real prefill"
    prefill = HeadPrefill(kvh, hd, spec.hidden_size, 2, [t.numpy() for t in pre.importance],
                          source=f"{how} of {total} tokens, {loaded.model_id}")  # fmt: skip
    geo = decode_geometry(spec_fp16(loaded), scenario)
    return KelleSetup(loaded, scenario, geo, prefill, KelleStore(ks, vs, xs), pre.first_token,
                      time.perf_counter() - t0, reused, path)  # fmt: skip


def spec_fp16(loaded: LoadedModel) -> Any:
    from dataclasses import replace

    return replace(loaded.spec, dtype="float16")


class BitErrors:
    """eDRAM retention failures in the stored fp16 KV and x (modelled): each kept entry's bits 15-8 and 7-0
    fail at the refresh plan's rate for its bucket (importance: at or above its head's median score is high),
    for the entry's simulated lifetime at `step_s` per decode step; a failed cell holding 1 reads 0."""

    def __init__(self, retention: RetentionModel, plan: RefreshPlan, step_s: float, seed: int = 0) -> None:
        self.retention, self.plan, self.step_s = retention, plan, step_s
        self.rng = np.random.default_rng(seed)
        self.cells = 0  # cells exposed (bits of every stored entry, counted once per entry)
        self.failed = 0  # cells that failed (drawn)
        self.flipped = 0  # bits that changed (failed cells that held a 1)

    def _fail(self, bucket: tuple[str, str], age_s: np.ndarray) -> np.ndarray:
        wait = np.minimum(np.asarray(age_s, dtype=np.float64), self.plan.intervals_s[bucket])
        return -np.expm1(-((wait / self.retention.tau_s) ** self.retention.beta))

    def _hazard(self, bucket: tuple[str, str], age_s: np.ndarray) -> np.ndarray:
        """Probability that a cell fails during the last step of its life, given it had not failed before."""
        now, before = self._fail(bucket, age_s), self._fail(bucket, np.maximum(age_s - self.step_s, 0.0))
        return np.clip((now - before) / np.maximum(1.0 - before, 1e-300), 0.0, 1.0)

    def _strike(self, rows: np.ndarray, width: int, q: np.ndarray, high_half: bool, age_s: np.ndarray) -> None:
        """Fail cells of the 8-bit half of every value in rows [n, width] (uint16 view) with probability q per row;
        cells are counted as exposed once, in the first step of their data's life."""
        if rows.size == 0:
            return
        cells = 8 * width
        counts = self.rng.binomial(cells, q)
        self.cells += cells * int(np.count_nonzero(age_s <= self.step_s))
        total = int(counts.sum())
        if not total:
            return
        self.failed += total
        entry = np.repeat(np.arange(len(q)), counts)
        value = self.rng.integers(0, width, total)
        bit = self.rng.integers(0, 8, total) + (8 if high_half else 0)
        mask = (1 << bit).astype(np.uint16)
        before = rows[entry, value]
        self.flipped += int(np.count_nonzero(before & mask))
        np.bitwise_and.at(rows, (entry, value), ~mask)

    def inject(self, store: KelleStore, layer: int, policy: HeadBudget, plan: LayerPlan, step: int,
               context_tokens: int) -> None:  # fmt: skip
        """Retention failures of one layer's kept entries during the last step (KV per head, x per token)."""
        xs = set(plan.recompute)
        state = policy.head_state(layer)
        high_tokens: set[int] = set()
        k16 = store.k[layer].numpy().view(np.uint16)  # [KV, cap, hd], shares memory with the tensor
        v16 = store.v[layer].numpy().view(np.uint16)
        for h, (tokens, scores) in enumerate(state):
            if not tokens.size:
                continue
            high = scores >= np.median(scores)
            high_tokens.update(tokens[high].tolist())
            keep = ~np.isin(tokens, list(xs)) if xs else np.ones(tokens.size, bool)
            tok = tokens[keep]
            written = np.where(tok < context_tokens, -1, tok - context_tokens)
            age = (step - written) * self.step_s
            for imp_name, sel in (("high", high[keep]), ("low", ~high[keep])):
                t = tok[sel]
                for half in ("msb", "lsb"):
                    q = self._hazard((imp_name, half), age[sel])
                    for arr in (k16, v16):
                        rows = arr[h, t]
                        self._strike(rows, arr.shape[2], q, half == "msb", age[sel])
                        arr[h, t] = rows
        if xs and store.x is not None:
            x16 = store.x[layer].numpy().view(np.uint16)
            tok = np.asarray(sorted(xs))
            written = np.where(tok < context_tokens, -1, tok - context_tokens)
            age = (step - written) * self.step_s
            hi = np.isin(tok, list(high_tokens))
            for imp_name, sel in (("high", hi), ("low", ~hi)):
                for half in ("msb", "lsb"):
                    rows = x16[tok[sel]]
                    q = self._hazard((imp_name, half), age[sel])
                    self._strike(rows, x16.shape[1], q, half == "msb", age[sel])
                    x16[tok[sel]] = rows

    def stats(self) -> dict[str, Any]:
        return {"refresh": self.plan.name, "step_s": self.step_s, "cells": self.cells, "failed_cells": self.failed,
                "flipped_bits": self.flipped, "failure_rate": self.failed / self.cells if self.cells else 0.0,
                "bit_error_rate": self.flipped / self.cells if self.cells else 0.0,
                "modelled": True}  # fmt: skip


class HeadDecoder:
    """One token through every layer, each KV head attending its own kept tokens (+ the current token)."""

    def __init__(self, loaded: LoadedModel, store: KelleStore) -> None:
        self.math = _math(loaded)
        spec = loaded.spec
        self.kv_heads, self.group = spec.num_kv_heads, spec.num_attention_heads // spec.num_kv_heads
        self.store = store
        self._held: list[tuple[tuple[int, ...], ...]] = [() for _ in range(spec.num_layers)]
        self._xs: list[frozenset[int]] = [frozenset() for _ in range(spec.num_layers)]

    def apply_plan(self, layer: int, plan: LayerPlan, newest: int) -> None:
        """Poison what no head keeps any more (per head), K/V of tokens now stored as x, x no longer needed."""
        st = self.store
        xs = frozenset(plan.recompute)
        for h, (before, now) in enumerate(zip(self._held[layer] or ((),) * self.kv_heads, plan.heads, strict=True)):
            gone = set(before).difference(now)
            if gone:
                st.k[layer][h, list(gone)] = float("nan")
                st.v[layer][h, list(gone)] = float("nan")
        if st.x is not None:
            freed = self._xs[layer].difference(xs)
            if freed:
                st.x[layer][list(freed)] = float("nan")
            if newest in plan.attend and newest not in self._xs[layer]:
                if newest in xs:
                    st.k[layer][:, newest] = float("nan")
                    st.v[layer][:, newest] = float("nan")
                else:
                    st.x[layer][newest] = float("nan")
        self._held[layer], self._xs[layer] = plan.heads, xs

    def layer(self, layer: int, x: Tensor, pos: int, plan: LayerPlan) -> tuple[Tensor, tuple[np.ndarray, ...]]:
        """x [1, D] through `layer`; returns x after it and the per-KV-head attention weights for the policy."""
        math, st = self.math, self.store
        h = math.layers[layer].input_layernorm(x)
        q, k, v = project(math, layer, h, torch.tensor([pos]))
        st.k[layer][:, pos] = k[:, 0].to(torch.float16)
        st.v[layer][:, pos] = v[:, 0].to(torch.float16)
        if st.x is not None:
            st.x[layer][pos] = h[0].to(torch.float16)
        rec = np.asarray(plan.recompute, dtype=np.int64)
        kr = vr = None
        if rec.size and st.x is not None:
            hx = st.x[layer][torch.from_numpy(rec)].float()
            _, kr, vr = project(math, layer, hx, torch.from_numpy(rec))  # [KV, n, hd]
        scale = math.scaling(layer)
        outs, weights = [], []
        for j in range(self.kv_heads):
            toks = np.asarray(plan.heads[j] if plan.heads else plan.attend, dtype=np.int64)
            idx = torch.from_numpy(np.append(toks, pos))
            kj, vj = st.k[layer][j, idx].float(), st.v[layer][j, idx].float()  # [n+1, hd]
            if kr is not None and vr is not None:
                inx = np.isin(toks, rec)
                if inx.any():
                    rows = torch.from_numpy(np.searchsorted(rec, toks[inx]))
                    where = torch.from_numpy(np.flatnonzero(inx))
                    kj[where], vj[where] = kr[j, rows], vr[j, rows]
            qj = q[j * self.group : (j + 1) * self.group, 0]  # [G, hd]
            p = torch.softmax((qj @ kj.T) * scale, dim=-1)  # [G, n+1]
            outs.append(p @ vj)  # [G, hd]
            weights.append(p.sum(dim=0).double().numpy())
        attn = torch.cat(outs, dim=0).reshape(1, -1)  # [1, H*hd]
        return math.finish(layer, x, attn), tuple(weights)

    def logits(self, x: Tensor) -> Tensor:
        return self.math.head(x)[0]


@dataclass
class KelleRun:
    result: Result
    engine: DecodeEngine
    attention: dict[tuple[int, int], tuple[np.ndarray, ...]]  # (step, layer) -> the weights delivered
    tokens: list[int]
    nll: list[float]  # teacher-forced: -log p(next token) per step


def run_kelle_real(
    setup: KelleSetup,
    policy: HeadBudget,
    errors: BitErrors | None = None,
    teacher: list[int] | None = None,
    log: bool = False,
) -> KelleRun:
    """One decode run of a per-head policy on the real model (times measured); `teacher` forces the tokens fed
    (teacher[s] at step s) and scores teacher[s+1]."""
    sc, geo = setup.scenario, setup.geometry
    if teacher is not None and len(teacher) < sc.steps + 1:
        raise UserError(f"teacher forcing needs {sc.steps + 1} tokens, got {len(teacher)}")
    ctx = DecodeContext(geometry=geo, model=setup.loaded.spec.name, tiers=("edram",), prefill=setup.prefill)
    engine = DecodeEngine(ctx, policy, sc.max_request_bytes, record_spans=True, record_log=log)
    store = setup.store.copy()
    decoder = HeadDecoder(setup.loaded, store)
    attention: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
    tokens = [teacher[0] if teacher is not None else setup.first_token]
    nll: list[float] = []
    origin = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - origin

    with torch.inference_mode(), frozen_gc():
        for step in range(sc.steps):
            engine.step_begin(step, now())
            pos = sc.context_tokens + step
            x = decoder.math.embed(torch.tensor([tokens[-1]]), pos)
            for layer in range(geo.num_layers):  # a layer's span: its plan, its compute, the policy's update
                c0 = now()
                plan, _ = engine.plan(engine.scores_for(step, layer, c0))
                decoder.apply_plan(layer, plan, engine.full_groups - 1)
                if errors is not None:
                    errors.inject(store, layer, policy, plan, step, sc.context_tokens)
                x, weights = decoder.layer(layer, x, pos, plan)
                attention[(step, layer)] = weights
                engine.head_attention(HeadAttention(now(), step, layer, weights))
                engine.layer_done(step, layer, c0, now())
            logits = decoder.logits(x)
            if teacher is not None:
                nll.append(float(-torch.log_softmax(logits.double(), dim=-1)[teacher[step + 1]]))
                tokens.append(teacher[step + 1])
            else:
                tokens.append(int(logits.argmax()))
            engine.step_end(step, now())
    summary = engine.summary()
    extra: dict[str, Any] = {"tokens": tokens}
    if errors is not None:
        extra["bit_errors"] = errors.stats()
    if nll:
        extra["nll"] = nll
    result = Result(world="real", policy=policy.name, ttft_s=0.0, energy_j={}, spans=[],
                    config={"decode_scenario": sc.to_dict(), "model_spec": setup.loaded.spec.to_dict(),
                            "geometry": geo.to_dict(), "model_id": setup.loaded.model_id,
                            "policy": {"name": policy.name, **policy.config()},
                            "prefill": setup.prefill.source},
                    decode=summary.to_dict(), extra=extra)  # fmt: skip
    return KelleRun(result, engine, attention, tokens, nll)
