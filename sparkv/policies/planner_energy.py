"""Predicted energy of a candidate plan, and the plans an energy-aware objective chooses among.

The energy of what is left of a request (joules, modelled as `cost_models.energy` models a finished one)
from a plan's predicted timeline (`planner_model.Evaluator`):

- compute: active power while the lane works (the planned commands, the remaining query layers and the
  first token, at the compute model's speed), idle power for the rest of the time to the first token;
- radio: while the link streams, the active power (base + per Mbit/s of goodput: base x seconds + per-Mbit
  x Mbit); before the request's first transfer, idle and then the promotion; after its last, the whole
  tail; a request that never streams keeps the radio idle throughout.

Receive contention and a shared device's availability are not in this estimate (the timeline's TTFT
includes them; the busy seconds here are the profiled work x the speed scale).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from sparkv.policies.planner_model import ComputeSpeed, Evaluator, LinkModel, Prediction, Snapshot


@dataclass(frozen=True)
class EnergyRates:
    """The power models a plan's energy is predicted with: watts, seconds, joules, W per Mbit/s."""

    radio_promotion_s: float
    radio_promotion_w: float
    radio_active_base_w: float
    radio_active_w_per_mbps: float
    radio_tail_j: float  # the whole tail (both tails of 3G)
    radio_idle_w: float
    compute_active_w: float
    compute_idle_w: float

    @classmethod
    def of(cls, radio: Any, power: Any) -> EnergyRates:
        """From a `cost_models.energy.RadioModel` and `ComputePower` (read by attribute: policies stay pure)."""
        return cls(radio.promotion_s, radio.promotion_w, radio.active_base_w, radio.active_w_per_mbps,
                   radio.full_tail_j, radio.idle_w, power.active_w, power.idle_w)  # fmt: skip

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnergyRates:
        return cls(**{k: float(v) for k, v in data.items()})


def predict_energy(
    ev: Evaluator, k: list[int], snap: Snapshot, link: LinkModel, speed: ComputeSpeed, target_bytes: float,
    pred: Prediction, rates: EnergyRates, link_used: bool,
) -> float:
    """Joules from `snap.now_s` to `pred.ttft_s` of plan `k` (whose timeline is `pred`); `link_used`: the
    request has already had a transfer (its promotion and tail are paid whatever is planned now)."""
    ttft = pred.ttft_s
    if not math.isfinite(ttft):
        return math.inf
    now, scale = snap.now_s, speed.scale
    busy = max(0.0, snap.compute_free_s - now)
    for c, lo, hi in ev.compute_blocks(k, snap):
        busy += (ev.launch_s + ev.cum_s[c][hi] - ev.cum_s[c][lo]) * scale
    busy += (sum(ev.query_s[snap.query_next :]) + ev.first_token_s) * scale
    left = max(0.0, ttft - now)
    busy = min(busy, left)
    compute = busy * rates.compute_active_w + (left - busy) * rates.compute_idle_w
    blocks = ev.link_blocks(k, snap, target_bytes)
    active = max(0.0, snap.link_free_s - now) if snap.fetching is not None else 0.0
    n_bytes = 0
    t = snap.link_free_s
    for *_, n in blocks:
        end = link.transfer_end(t, n)
        active += end - t
        n_bytes += n
        t = end
    radio = active * rates.radio_active_base_w + rates.radio_active_w_per_mbps * n_bytes * 8 / 1e6
    if not link_used and snap.fetching is None:
        if blocks:
            first = max(0.0, snap.link_free_s - now)
            radio += (rates.radio_promotion_s * rates.radio_promotion_w
                      + rates.radio_idle_w * max(0.0, first - rates.radio_promotion_s) + rates.radio_tail_j)
        else:
            radio = rates.radio_idle_w * left
    return compute + radio


def candidates(
    ev: Evaluator, snap: Snapshot, best: list[int], current: list[int] | None, near: bool
) -> list[list[int]]:
    """Plans an energy-aware objective weighs beside the least-TTFT one (`best`, first): the current plan; the
    stream-only and compute-only ends; `best` with 1, 2, ... layer groups fewer (or more) computed in every
    chunk; the cut family (whole chunks computed from the front, as cake splits; its cuts inside a chunk only
    near `best`'s cut when `near`), every whole-chunk cut (so a re-plan can always pick what cake or a static
    split would run from here) and the layer family (the same layers of every chunk). Clipped to what the
    snapshot allows, duplicates dropped."""
    lo, hi = snap.k_bounds()
    bounds, L, C = ev.bounds, ev.L, ev.C
    groups = len(bounds) - 1
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()

    def add(k: list[int]) -> None:
        k = [min(max(x, a), b) for x, a, b in zip(k, lo, hi, strict=True)]
        key = tuple(k)
        if key not in seen:
            seen.add(key)
            out.append(k)

    add(list(best))
    if current is not None:
        add(list(current))
    add(list(lo))
    add(list(hi))
    for d in range(1, groups + 1):
        add([bounds[max(0, _group_of(bounds, x) - d)] for x in best])
        add([bounds[min(groups, _group_of(bounds, x) + d)] for x in best])
    m = next((c for c in range(C) if best[c] < L), C)
    p0 = m * groups
    span = range(max(0, p0 - 3 * groups), min(C * groups, p0 + groups) + 1) if near else range(C * groups + 1)
    for p in span:
        q, r = divmod(p, groups)
        add([L if c < q else (bounds[r] if c == q else 0) for c in range(C)])
    for q in range(C + 1):  # every whole-chunk cut, re-plans too: what cake or a static split would do
        add([L] * q + [0] * (C - q))
    for j in range(groups + 1):
        add([bounds[j]] * C)
    return out


def _group_of(bounds: list[int], x: int) -> int:
    """Index of the largest group boundary <= x."""
    g = 0
    while g + 1 < len(bounds) and bounds[g + 1] <= x:
        g += 1
    return g
