"""HillInfer (arXiv 2602.18750): a hot pool in DRAM, a cold pool on a SmartSSD that scores importance in storage.

Per layer (groups of G tokens):
- the **hot pool** is what stays resident (`keep`): the sinks, the **pinned** recent alpha*N tokens, and
  groups promoted for being important; its size is fixed by the memory budget, leaving room for the K
  tokens fetched per step;
- every other full group is **scored** at INT8/INT4 over its keys (`predicted` in `ScoresReady`): the hot
  ones by the host from memory, the cold ones split between the host (which reads their quantised keys
  over the link) and the drive, by the latency model M_c = M a_s / (a_c + a_s), a = 1/f + alpha/B
  (f tokens scored per second, alpha quantised key bytes per token, B the bandwidth each side reads at);
- the top K/G groups by score are attended with the sinks and the pinned window; the cold ones among them
  are read at fp16 (the only KV that crosses the link) and dropped after the layer unless promoted;
- a **hit-rate table** (uint16 per group and layer: 2 bytes per group, HillInfer's 2N bytes per token at
  G=1) counts how often each group was in the top K; a fetched cold group whose count beats the least-hit
  unpinned hot group's by `margin` is promoted, and that hot group demoted: equal volume both ways, so the
  pool's size (and the I/O) does not swing. A group leaving the pinned window joins the pool, which then
  demotes its least-hit group.
Planned one layer ahead (layer l's query from layer l-1's input, as KVSwap's): the scores arrive while the
previous layer computes. Demotion writes nothing: the cold file holds every group already.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkv.core.decode import DecodeEvent, GroupAppended, LayerPlan, ScoresReady
from sparkv.core.errors import UserError
from sparkv.core.keyplane import key_record_bytes, span_bytes
from sparkv.policies.decode.base import DecodeContext, DecodePolicyBase
from sparkv.policies.decode.storage_scoring import ScoreSplit

RESULT_BYTES_PER_GROUP = 8  # a candidate the drive returns: group id (int32) and score (fp32)
COUNT_MAX = np.iinfo(np.uint16).max


def split_cpu_share(total: int, a_cpu: float, a_ssd: float, host_busy: float = 0.0) -> int:
    """The latency model's host share: both sides finish together, M_c a_c + W = (M - M_c) a_s, so
    M_c = (M a_s - W) / (a_c + a_s), clipped to [0, M]; W is work the host has anyway (the hot pool's scores),
    and with W = 0 this is HillInfer's M_c = M a_s / (a_c + a_s). Whole units."""
    if total <= 0:
        return 0
    if a_cpu < 0 or a_ssd < 0 or a_cpu + a_ssd <= 0:
        raise ValueError(f"the latency model needs non-negative costs, one positive; got {a_cpu}, {a_ssd}")
    return min(total, max(0, round((total * a_ssd - host_busy) / (a_cpu + a_ssd))))


@dataclass(frozen=True)
class HillInferSettings:
    select_tokens: int = 0  # K: tokens attended by importance per layer; 0: the scenario's M, capped by the budget
    recent_fraction: float = 0.1  # alpha: the newest alpha*N tokens are pinned hot (at most half the pool)
    bits: int = 8  # key precision of the scoring kernel: 8 or 4
    margin: int = 1  # a cold group is promoted when its hit count is at least the victim's + margin
    key_width: int = 0  # d, key values per token (KV heads x head dim); 0: from the geometry (fp16 K and V)
    cpu_tokens_per_s: float = 2.0e6  # f_c: host scoring kernel, tokens/s (measured by `sparkv decode --real`)
    host_bps: float = 3.0e8  # B_c: the host's reads of quantised keys from the cold file, bytes/s
    ssd_tokens_per_s: float = 1.0e9  # f_s: the drive's kernel, tokens/s (modelled profile / MACs per token)
    ssd_internal_bps: float = 3.2e9  # B_s: flash -> FPGA inside the drive, bytes/s (modelled profile)
    cpu_share: float = -1.0  # a fixed host share of the cold scoring work in [0, 1]; < 0: the latency model


class HillInfer(DecodePolicyBase):
    name = "hillinfer"
    score_kind = "predicted"
    lookahead_layers = 1
    bounded = True

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        try:
            s = HillInferSettings(**settings)
        except TypeError as exc:
            raise UserError(f"hillinfer: {exc}") from exc
        if s.select_tokens < 0 or not 0.0 <= s.recent_fraction < 1.0 or s.bits not in (4, 8) or s.margin < 0:
            raise ValueError(f"hillinfer: bad settings {s}")
        if min(s.cpu_tokens_per_s, s.host_bps, s.ssd_tokens_per_s, s.ssd_internal_bps) <= 0 or s.cpu_share > 1:
            raise ValueError(f"hillinfer: speeds must be positive and cpu_share <= 1, got {s}")
        self.settings = s
        self.hot: list[set[int]] = []
        self.counts: list[np.ndarray] = []
        self.capacity = 0  # hot groups per layer beyond the sinks (pinned window included)
        self.pinned = 0  # groups of the pinned recent window
        self.record_bytes = 0
        self._splits: dict[int, ScoreSplit] = {}
        self.stats: dict[str, int] = {}

    # ---- start ----

    def begin(self, ctx: DecodeContext) -> None:
        """Size the hot pool from the budget: free groups minus the K/G fetched per step (K at most half the
        free groups) and one of slack for the group a step appends before the next plan demotes; pin alpha*N
        tokens, at most half the pool."""
        super().begin(ctx)
        geo, s = ctx.geometry, self.settings
        self._select = k = min(self._select, (geo.free_groups - 1) // 2)  # K/G: at most half the free groups
        self.capacity = geo.free_groups - k - 1
        if k < 1 or self.capacity < 2:
            raise UserError(f"hillinfer: a budget of {geo.budget_bytes} bytes leaves {geo.free_groups} free groups "
                            f"per layer, too few for K/G = {k} fetched groups plus a hot pool of 2")  # fmt: skip
        want = -(-int(s.recent_fraction * geo.context_groups * geo.group_tokens) // geo.group_tokens)
        self.pinned = max(1, min(want, self.capacity // 2))
        width = s.key_width or geo.token_bytes // 4
        self.record_bytes = key_record_bytes(geo.group_tokens, width, s.bits)
        size = geo.context_groups + 64
        self.counts = [np.zeros(size, np.uint16) for _ in range(geo.num_layers)]
        self.hot = [set() for _ in range(geo.num_layers)]
        self._splits = {}
        self.stats = {k: 0 for k in ("topk_selected", "topk_hits", "promoted", "demoted", "cold_groups_scored",
                                     "cpu_groups", "storage_groups", "hot_groups_scored", "key_link_bytes",
                                     "storage_internal_bytes", "result_bytes", "cold_keys_fp16_bytes",
                                     "cold_kv_bytes_read")}  # fmt: skip

    def initial_resident(self, layer: int) -> tuple[int, ...]:
        """The sinks and the newest `capacity` groups: what the pool holds when decoding starts."""
        sinks = self.sinks()
        lo = max(len(sinks), self.full_groups - self.capacity)
        self.hot[layer] = set(range(lo, self.full_groups))
        groups = sinks + tuple(range(lo, self.full_groups))
        self.resident[layer] = set(groups)
        return groups

    # ---- the split (asked by a driver before it scores) ----

    def _window_start(self, full_groups: int) -> int:
        return max(len(self.sinks()), full_groups - self.pinned)

    def split(self, step: int, layer: int, full_groups: int) -> ScoreSplit:
        """Which groups each side scores: hot from memory; the cold ones by the latency model, the host taking
        the newest (fewest, longest runs to read)."""
        s = self.settings
        lo, hi = len(self.sinks()), self._window_start(full_groups)
        hot = self.hot[layer]
        mask = np.zeros(max(hi, lo), bool)
        if hot:
            mask[[g for g in hot if g < hi]] = True
        scored = np.arange(lo, hi)
        is_hot = mask[lo:hi]
        hot_g, cold_g = scored[is_hot], scored[~is_hot]
        m = int(cold_g.shape[0])
        if s.cpu_share >= 0:
            n_cpu = round(m * s.cpu_share)
        else:
            per_token = self.record_bytes / self.geometry.group_tokens
            a_cpu = 1.0 / s.cpu_tokens_per_s + per_token / s.host_bps
            a_ssd = 1.0 / s.ssd_tokens_per_s + per_token / s.ssd_internal_bps
            hot_tokens = int(hot_g.shape[0]) * self.geometry.group_tokens
            n_cpu = split_cpu_share(m, a_cpu * self.geometry.group_tokens, a_ssd * self.geometry.group_tokens,
                                    hot_tokens / s.cpu_tokens_per_s)  # fmt: skip
        storage, cpu = cold_g[: m - n_cpu], cold_g[m - n_cpu :]
        result = RESULT_BYTES_PER_GROUP * min(len(storage), self.select_groups())
        out = ScoreSplit(step, layer, tuple(hot_g.tolist()), tuple(cpu.tolist()), tuple(storage.tolist()),
                         s.bits, self.record_bytes, result)  # fmt: skip
        self._splits[layer] = out
        return out

    # ---- the plan ----

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """Top K/G of the scored groups, attended with sinks and the pinned window; misses read at fp16;
        hit counts updated; promotions and demotions of equal volume; the new hot pool kept."""
        if scores.predicted is None:
            raise ValueError(f"{self.name} needs predicted scores for step {scores.step} layer {scores.layer}")
        layer, full = scores.layer, scores.full_groups
        sp = self._splits.pop(layer, None)
        if sp is None or sp.step != scores.step:  # a driver without the split hook: no scoring costs charged
            sp = self.split(scores.step, layer, full)
            self._splits.pop(layer)
        cand = np.asarray(sp.hot + sp.cpu + sp.storage, dtype=np.int64)
        k = self.select_groups()
        if cand.shape[0] > k:
            vals = np.asarray(scores.predicted, dtype=np.float32)[cand]
            idx = np.argpartition(-vals, k - 1)[:k]
            chosen = np.sort(cand[idx])
        else:
            chosen = np.sort(cand)
        counts = self._counts(layer, full)
        counts[chosen] = np.minimum(counts[chosen].astype(np.int64) + 1, COUNT_MAX).astype(np.uint16)
        hot = self.hot[layer]
        chosen_t = tuple(chosen.tolist())
        misses = [g for g in chosen_t if g not in hot]
        st = self.stats
        st["topk_selected"] += len(chosen_t)
        st["topk_hits"] += len(chosen_t) - len(misses)
        st["cold_groups_scored"] += len(sp.cpu) + len(sp.storage)
        st["cpu_groups"] += len(sp.cpu)
        st["storage_groups"] += len(sp.storage)
        st["hot_groups_scored"] += len(sp.hot)
        st["key_link_bytes"] += span_bytes(sp.cpu, sp.record_bytes)
        st["storage_internal_bytes"] += span_bytes(sp.storage, sp.record_bytes)
        st["result_bytes"] += sp.result_bytes
        geo = self.geometry
        st["cold_keys_fp16_bytes"] += (len(sp.cpu) + len(sp.storage)) * geo.group_bytes // 2
        st["cold_kv_bytes_read"] += len(misses) * geo.slot_bytes
        self._rebalance(layer, full, misses)
        sinks = self.sinks()
        window = tuple(range(self._window_start(full), full))
        attend = sinks + tuple(sorted(set(chosen_t).union(window)))
        keep = sinks + tuple(sorted(self.hot[layer]))
        return self.make_plan(scores.step, layer, attend=attend, keep=keep)

    def _counts(self, layer: int, full: int) -> np.ndarray:
        arr = self.counts[layer]
        if arr.shape[0] < full:
            arr = np.concatenate([arr, np.zeros(max(full - arr.shape[0], 64), np.uint16)])
            self.counts[layer] = arr
        return arr

    def _rebalance(self, layer: int, full: int, misses: list[int]) -> None:
        """Promote fetched cold groups over the least-hit unpinned hot ones (one out per one in); shrink a pool
        over capacity (a group left the window) and fill one under it."""
        hot, counts, margin = self.hot[layer], self.counts[layer], self.settings.margin
        start = self._window_start(full)
        victims = [(int(counts[g]), g) for g in hot if g < start]
        heapq.heapify(victims)
        while len(hot) > self.capacity and victims:  # over capacity: demote without promoting
            _, g = heapq.heappop(victims)
            hot.discard(g)
            self.stats["demoted"] += 1
        ranked = sorted(misses, key=lambda g: (-int(counts[g]), g))
        for g in ranked:
            if len(hot) < self.capacity:  # room left (a short context): promote without demoting
                hot.add(g)
                self.stats["promoted"] += 1
                continue
            if not victims or int(counts[g]) < victims[0][0] + margin:
                break
            _, v = heapq.heappop(victims)
            hot.discard(v)
            hot.add(g)
            self.stats["promoted"] += 1
            self.stats["demoted"] += 1

    def update(self, event: DecodeEvent) -> None:
        """An appended group is resident and hot (it enters the pinned window) in every layer."""
        super().update(event)
        if isinstance(event, GroupAppended):
            for hot in self.hot:
                hot.add(event.group)

    def run_stats(self) -> dict[str, Any]:
        """Hit rate of the top K in the hot pool, promotions/demotions, the split, and bytes by path (the
        drive's internal bytes and result are modelled: no SmartSSD here)."""
        st = dict(self.stats)
        sel = st["topk_selected"]
        link = st["key_link_bytes"] + st["result_bytes"] + st["cold_kv_bytes_read"]
        cold = st["cold_groups_scored"]
        return {
            **st,
            "topk_hit_rate": st["topk_hits"] / sel if sel else 1.0,
            "cpu_share": st["cpu_groups"] / cold if cold else 0.0,
            "host_link_bytes": link,
            "link_reduction_vs_cold_keys": st["cold_keys_fp16_bytes"] / link if link else float("inf"),
            "hot_capacity_groups": self.capacity,
            "pinned_groups": self.pinned,
            "hit_table_bytes": 2 * sum(int(c.shape[0]) for c in self.counts),
            "storage_scoring": "modelled",
        }
