"""What a plan does, predicted exactly as the simulator would run it.

A plan is a vector k: chunk c computes layers [0, k_c) and streams [k_c, L). The order rule is fixed
("meet in the middle" at layer granularity):

- compute: chunks in ascending order, each chunk's layers ascending, one command per layer group;
- link: chunks in descending order, each chunk's missing layers [k_c, L) top first, split into
  transfers of at most `target_bytes` (whole chunks of the same layer range merge while they fit);
  a transfer lost half-way so never strands the layers below it (computing them needs no recompute);
- the query's prefill runs layer by layer with priority whenever the compute lane frees up and its
  next layer is complete; a compute command waits until the cells it depends on are present;
- cells read from local disk land when the snapshot says (`Snapshot.disk`): a third lane the plan does not
  choose, only waits for.

`Evaluator.predict` replays exactly that on two serial lanes (link: fixed cost + payload at the link
model's rate + install; compute: launch + cell times at the compute model's speed), starting from a
`Snapshot` of a request in progress, so the same code serves the first plan and every re-plan.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock
from sparkv.policies.planner_types import (
    ComputeSpeed,
    ConstantLink,
    ForecastLink,
    LinkModel,
    Prediction,
    Snapshot,
)

__all__ = [
    "ComputeSpeed", "ConstantLink", "Evaluator", "ForecastLink", "LinkModel", "Prediction", "Snapshot", "TimelineBound",
]

_INF = math.inf
_MISSING = 0


class Evaluator:
    """Predicts a plan's timeline from a snapshot; holds the request's per-cell costs as prefix sums."""

    def __init__(self, costs: CostTable, group_layers: int, top_down: bool = True, max_chunks: int = 0) -> None:
        if group_layers <= 0:
            raise ValueError(f"group_layers must be positive, got {group_layers}")
        self.C, self.L = costs.num_chunks, costs.num_layers
        self.group = group_layers
        self.top_down = top_down  # a chunk's streamed layers top first: a lost transfer never strands computed ones
        self.max_chunks = max_chunks  # most chunks one transfer merges (0: as many as fit the target bytes)
        self.launch_s = costs.compute_launch_s
        self.query_s = [float(x) for x in costs.query_layer_s]
        self.first_token_s = costs.first_token_s
        self.cum_s = [[0.0, *row] for row in costs.compute_cell_s.cumsum(axis=1).tolist()]  # [C][L+1]
        self.bytes = [[int(x) for x in row] for row in costs.cell_bytes]  # [C][L]
        self.cum_bytes = [[0, *row] for row in costs.cell_bytes.cumsum(axis=1).tolist()]
        self.fixed_s = costs.transfer_fixed_s
        self.install_s_per_byte = costs.install_s_per_byte
        self.bounds = [*range(0, self.L, group_layers), self.L]  # layer-group boundaries

    # ---- the order rule ----

    def compute_blocks(self, k: list[int], snap: Snapshot) -> list[tuple[int, int, int]]:
        """(chunk, layer_lo, layer_hi) commands, chunks ascending, cut at layer-group boundaries."""
        g, out = self.group, []
        for c in range(self.C):
            lo, hi = snap.prefix[c], k[c]
            while lo < hi:
                nxt = min((lo // g + 1) * g, hi)
                out.append((c, lo, nxt))
                lo = nxt
        return out

    def link_blocks(self, k: list[int], snap: Snapshot, target_bytes: float) -> list[tuple[int, int, int, int, int]]:
        """(chunk_lo, chunk_hi, layer_lo, layer_hi, bytes) transfers, chunks descending, layers ascending."""
        out: list[tuple[int, int, int, int, int]] = []
        table, max_chunks = snap.piece_table(target_bytes, self.C, self.L), self.max_chunks
        have, c0, c1, l0, l1, n0 = False, 0, 0, 0, 0, 0  # the transfer being merged into
        for c in range(self.C - 1, -1, -1):
            pieces = table[c][k[c]]
            if pieces is None:
                pieces = self._pieces(c, k[c], snap, target_bytes)
            for lo, hi, n in pieces:
                if have and c0 == c + 1 and l0 == lo and l1 == hi and n0 + n <= target_bytes and (
                    not max_chunks or c1 - c <= max_chunks
                ):
                    c0, n0 = c, n0 + n
                    continue
                if have:
                    out.append((c0, c1, l0, l1, n0))
                have, c0, c1, l0, l1, n0 = True, c, c + 1, lo, hi, n
        if have:
            out.append((c0, c1, l0, l1, n0))
        return out

    def _pieces(self, c: int, kc: int, snap: Snapshot, target_bytes: float) -> list[tuple[int, int, int]]:
        """Chunk c's missing layers from kc on, as (layer_lo, layer_hi, bytes) transfers, cut greedily bottom
        up at `target_bytes` and at cells not missing (cached per snapshot; the list is shared, read only).

        The cut from kc is the first piece from kc and then the cut from where it ends, so every kc of a
        chunk is built from the ones above it in one pass of its layers."""
        row = snap.piece_table(target_bytes, self.C, self.L)[c]
        got = row[kc]
        if got is not None:
            return got
        state, cum = snap.state[c], self.cum_bytes[c]
        path: list[tuple[int, int]] = []  # (layer, where its cut goes on) still to build, bottom up
        x = kc
        while row[x] is None:  # row[L] is []
            nxt = x + 1 if state[x] != _MISSING else self._piece_end(c, x, snap, target_bytes)
            path.append((x, nxt))
            x = nxt
        for x, nxt in reversed(path):
            rest = row[nxt]
            assert rest is not None
            if state[x] != _MISSING:
                row[x] = rest
            else:
                piece = (x, nxt, cum[nxt] - cum[x])
                row[x] = [*rest, piece] if self.top_down else [piece, *rest]
        got = row[kc]
        assert got is not None
        return got

    def _piece_end(self, c: int, kc: int, snap: Snapshot, target_bytes: float) -> int:
        """Where the piece of chunk c that starts at its missing layer kc ends."""
        cum = self.cum_bytes[c]
        hi = bisect_right(cum, cum[kc] + target_bytes) - 1
        if hi < kc + 1:
            hi = kc + 1
        stop = snap.stops()[c][kc]
        return stop if stop < hi else hi

    def blocks(self, k: list[int], snap: Snapshot, target_bytes: float) -> tuple[list[CellBlock], list[CellBlock]]:
        comp = [_block(c, c + 1, lo, hi) for c, lo, hi in self.compute_blocks(k, snap)]
        link = [_block(c0, c1, lo, hi) for c0, c1, lo, hi, _ in self.link_blocks(k, snap, target_bytes)]
        return comp, link

    # ---- a bound on the timeline ----

    def lower_bound(
        self, snap: Snapshot, link: LinkModel, speed: ComputeSpeed, target_bytes: float
    ) -> TimelineBound | None:
        """A bound below `predict(k, ...).ttft_s` for every k, or None where the models are not ones it
        bounds (a device shared over time, compute faster while receiving)."""
        if speed.availability is not None or speed.receive_slowdown < 1.0:
            return None
        g, launch, L = self.group, self.launch_s, self.L
        work: list[list[float]] = []
        for c in range(self.C):
            p, cum = snap.prefix[c], self.cum_s[c]
            work.append([((x - 1) // g - p // g + 1) * launch + cum[x] - cum[p] if x > p else 0.0
                         for x in range(L + 1)])  # fmt: skip
        missing: list[list[int]] | None = None
        fixed = per_byte = 0.0
        if isinstance(link, ConstantLink):
            fixed, per_byte = link.fixed_s, 1.0 / max(link.bandwidth_bps, 1e-9) + link.install_s_per_byte
            missing = []
            for c, row in enumerate(snap.state):
                out, acc, b = [0] * (L + 1), 0, self.bytes[c]
                for layer in range(L - 1, -1, -1):
                    if row[layer] == _MISSING:
                        acc += b[layer]
                    out[layer] = acc
                missing.append(out)
        tail = sum(self.query_s[snap.query_next :]) + self.first_token_s
        return TimelineBound(work, missing, snap.compute_free_s, tail, speed.scale, snap.link_free_s, fixed,
                             per_byte, self.first_token_s * speed.scale)  # fmt: skip

    # ---- the timeline ----

    def predict(
        self, k: list[int], snap: Snapshot, link: LinkModel, speed: ComputeSpeed, target_bytes: float
    ) -> Prediction:
        L, C, g = self.L, self.C, self.group
        ready = [-_INF] * L  # per layer: when its last streamed cell lands
        t = snap.link_free_s
        fetched = []
        f = snap.fetching
        if f is not None:
            ready[f.layer_lo : f.layer_hi] = [t] * (f.layer_hi - f.layer_lo)
            fetched.append((f.chunk_lo, f.chunk_hi, f.layer_lo, f.layer_hi, t))
        const = isinstance(link, ConstantLink)
        if const:
            assert isinstance(link, ConstantLink)
            fixed, per_byte = link.fixed_s, 1.0 / max(link.bandwidth_bps, 1e-9) + link.install_s_per_byte
        for c0, c1, lo, hi, n in self.link_blocks(k, snap, target_bytes):
            t = t + fixed + n * per_byte if const else link.transfer_end(t, n)
            ready[lo:hi] = [t] * (hi - lo)
            fetched.append((c0, c1, lo, hi, t))
        link_end = t
        # the link is busy, back to back, over [busy_lo, busy_hi): work started then runs slower
        busy_lo = snap.now_s if f is not None else snap.link_free_s
        busy_hi = link_end if fetched else -_INF
        slow = speed.receive_slowdown
        lane = _Lane(speed, busy_lo, busy_hi) if slow != 1.0 and fetched else None
        prefix = snap.prefix
        last = _last_computing(prefix, k, L)
        done = [-_INF] * L  # per layer: when its last computed cell is done
        for c0, c1, lo, hi, t_read in snap.disk:  # local reads land as predicted
            for layer in range(lo, hi):
                if t_read > ready[layer]:
                    ready[layer] = t_read
            fetched.append((c0, c1, lo, hi, t_read))
        fetched.sort(key=_first_chunk)
        dep = [-_INF] * L  # per layer: when streamed cells of the chunks before c have landed
        fi = 0
        t, q, min_k = snap.compute_free_s, snap.query_next, L
        scale, plain, launch, qs = speed.scale, speed.availability is None, self.launch_s, self.query_s
        for c in range(C):
            lo, hi, cum = prefix[c], k[c], self.cum_s[c]
            # run the query layers that are ready before this chunk's commands
            while q < L and last[q] < c and max(ready[q], done[q]) <= t:
                if lane is not None:
                    t = lane.query(t, qs[q], False)
                else:
                    t = t + qs[q] * scale if plain else speed.end(t, qs[q])
                q += 1
            if lo < hi:
                n_cmds = (hi - 1) // g - lo // g + 1
                whole = t + (n_cmds * launch + cum[hi] - cum[lo]) * scale
                if lane is not None and t < busy_hi:  # some commands start while the link is busy
                    whole = -_INF  # unless every one does, and each is slowed
                    if t >= busy_lo:
                        slowed = t + (n_cmds * launch + cum[hi] - cum[lo]) * scale * slow
                        final = launch + cum[hi] - cum[max(lo, (hi - 1) // g * g)]  # the last command's work
                        if slowed - final * scale * slow < busy_hi:
                            whole = slowed
                quiet = q >= L or last[q] > c or (last[q] < c and max(ready[q], done[q]) > whole)
                if plain and min_k >= hi and quiet and whole > -_INF:
                    t = whole  # nothing can interleave: the chunk's commands back to back
                    done[lo:hi] = [t] * (hi - lo)
                else:
                    while fi < len(fetched) and fetched[fi][0] < c:
                        _, _, a, b, ft = fetched[fi]
                        for layer in range(a, b):
                            if ft > dep[layer]:
                                dep[layer] = ft
                        fi += 1
                    t, q = self._chunk(c, lo, hi, t, q, ready, done, last, dep if min_k < hi else None, speed, lane)
                    if t == _INF:
                        return Prediction(_INF, link_end, _INF)
            if k[c] < min_k:
                min_k = k[c]
        compute_end = t
        while q < L:  # the rest of the query as its layers land
            rq = max(ready[q], done[q])
            landed = rq > t  # it waits for a transfer: it starts as that transfer ends
            t = max(t, rq)
            if lane is not None:
                t = lane.query(t, qs[q], landed)
            else:
                t = t + qs[q] * scale if plain else speed.end(t, qs[q])
            q += 1
        ttft = t + self.first_token_s * scale if plain else speed.end(t, self.first_token_s)
        return Prediction(ttft, link_end, compute_end)

    def _chunk(
        self, c: int, lo: int, hi: int, t: float, q: int, ready: list[float], done: list[float],
        last: list[int], dep: list[float] | None, speed: ComputeSpeed, lane: _Lane | None,
    ) -> tuple[float, int]:  # fmt: skip
        """Chunk c's commands one by one, with query layers and waits for streamed cells in between."""
        g, L, cum, qs, launch = self.group, self.L, self.cum_s[c], self.query_s, self.launch_s
        plain, scale = speed.availability is None, speed.scale
        cur = lo
        landed = False  # t is the end of a transfer this lane waited for
        while cur < hi:
            nxt = (cur // g + 1) * g
            if nxt > hi:
                nxt = hi
            rq = _INF
            if q < L and (last[q] < c or (last[q] == c and q < cur)):
                rq = ready[q] if ready[q] > done[q] else done[q]
                if rq <= t:
                    if lane is not None:
                        t = lane.query(t, qs[q], landed)
                    else:
                        t = t + qs[q] * scale if plain else speed.end(t, qs[q])
                    q += 1
                    landed = False
                    continue
            wait = max(dep[cur:nxt]) if dep is not None else -_INF
            if wait <= t:
                work = launch + cum[nxt] - cum[cur]
                if lane is not None:  # the link is busy: some commands are slowed
                    t = lane.compute(t, work)
                elif plain:
                    t = t + work * scale
                else:
                    t = speed.end(t, work)
                done[cur:nxt] = [t] * (nxt - cur)
                cur = nxt
                landed = False
                continue
            t = wait if wait < rq else rq
            landed = True
            if t == _INF:
                break
        return t, q


@dataclass(frozen=True)
class TimelineBound:
    """A lower bound on a plan's predicted TTFT that costs a sum over chunks, not a timeline.

    The compute lane at best runs every planned command and every remaining query layer back to back
    from when it frees up; the link at best sends every missing byte at its rate with one fixed cost,
    and the first token follows the last byte. A planner skips the timeline of a candidate whose bound
    already loses (`Planner.plan`)."""

    work: list[list[float]]  # [C][L+1]: compute seconds (as profiled) of a chunk's layers [prefix, x)
    missing: list[list[int]] | None  # [C][L+1]: bytes of a chunk's missing cells at layers >= x (a constant link)
    compute_free_s: float
    tail_s: float  # remaining query layers and the first token, as profiled
    scale: float  # measured / profiled compute time
    link_free_s: float
    fixed_s: float  # per transfer
    per_byte_s: float
    first_token_s: float  # scaled

    def of_sums(self, work_s: float, n_bytes: int) -> float:
        """The bound for a plan whose compute work sums to `work_s` and which streams `n_bytes`."""
        lb = self.compute_free_s + (work_s + self.tail_s) * self.scale
        if self.missing is not None and n_bytes > 0:
            lb = max(lb, self.link_free_s + self.fixed_s + n_bytes * self.per_byte_s + self.first_token_s)
        return lb - 1e-9 * abs(lb)  # below any rounding of the timeline's own sums

    def __call__(self, k: list[int]) -> float:
        work = sum(row[x] for row, x in zip(self.work, k, strict=True))
        missing = self.missing
        return self.of_sums(work, sum(row[x] for row, x in zip(missing, k, strict=True)) if missing else 0)


class _Lane:
    """Compute-lane timing while the link is busy over [busy_lo, busy_hi), as the simulator applies the
    receive slowdown: a compute command started then is slowed (one started as a transfer ends is too,
    if the next transfer starts with it); a query layer only when a transfer is already in flight, so
    not one that starts because the transfer it waited for has just landed."""

    __slots__ = ("busy_hi", "busy_lo", "plain", "scale", "slow", "speed")

    def __init__(self, speed: ComputeSpeed, busy_lo: float, busy_hi: float) -> None:
        self.speed, self.busy_lo, self.busy_hi, self.slow = speed, busy_lo, busy_hi, speed.receive_slowdown
        self.plain, self.scale = speed.availability is None, speed.scale

    def compute(self, t_s: float, work_s: float) -> float:
        if self.busy_lo <= t_s < self.busy_hi:
            work_s *= self.slow
        return t_s + work_s * self.scale if self.plain else self.speed.end(t_s, work_s)

    def query(self, t_s: float, work_s: float, landed: bool) -> float:
        if not landed and self.busy_lo <= t_s < self.busy_hi:
            work_s *= self.slow
        return t_s + work_s * self.scale if self.plain else self.speed.end(t_s, work_s)


def _last_computing(prefix: list[int], k: list[int], L: int) -> list[int]:
    """Per layer, the last chunk whose planned commands cover it (-1 if none)."""
    last = [-1] * L
    a = b = 0  # layers [a, b) are filled (one interval while the ranges overlap)
    for c in range(len(k) - 1, -1, -1):
        lo, hi = prefix[c], k[c]
        if lo >= hi:
            continue
        if a == b or (lo <= b and hi >= a):
            if a == b:
                a, b = lo, lo
            if lo < a:
                last[lo:a] = [c] * (a - lo)
            if hi > b:
                last[b:hi] = [c] * (hi - b)
            a, b = min(a, lo), max(b, hi)
        else:
            for layer in range(lo, hi):
                if last[layer] < 0:
                    last[layer] = c
    return last


@lru_cache(maxsize=65536)
def _block(chunk_lo: int, chunk_hi: int, layer_lo: int, layer_hi: int) -> CellBlock:
    """A shared `CellBlock` (immutable): the oracle turns many candidate plans into blocks."""
    return CellBlock(chunk_lo, chunk_hi, layer_lo, layer_hi)


def _first_chunk(block: tuple[int, int, int, int, float]) -> int:
    return block[0]
