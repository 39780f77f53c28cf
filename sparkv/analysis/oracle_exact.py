"""How far the oracle's schedule is from the best any policy could do, on requests small enough to search.

`exact_ttft_s` searches every decision a policy without ticks can make. At each event (the start, a
transfer or a compute command done, a query layer done), once the driver has started the query's next
layer if it can, the policy may start on each idle lane any command the rules allow, or leave the lane
idle until the next event:

- compute: one chunk from its computed prefix up to any layer whose cells are all missing and whose
  earlier chunks' cells are present (recomputing a cell already present is left out);
- fetch: any rectangle of missing cells (a chunk range x a layer range).

Timing is the simulator's arithmetic, through the oracle's replay (`Replayer.transfer_end_s`,
`Replayer.duration_s`, the receive slowdown's rule), so the optimum is exact for what the simulator
models. Depth-first with branch and bound (the compute lane must still run the remaining query layers
and the first token), the oracle's own TTFT the first incumbent; a node budget makes it give up (and
say so) rather than run long. Instances (`tiny_instance`) draw costs like `planner_exact.random_instance`
on a synthetic trace, with and without receive contention. Not searched: ticks (a policy acting between
events), a server shared with other clients (no instance has one), compute noise (none).
"""

from __future__ import annotations

import heapq
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkv.core.costs import CostTable
from sparkv.policies.foresight import Foresight
from sparkv.policies.oracle import OraclePolicy
from sparkv.policies.oracle_replay import Replayer
from sparkv.traces import get_trace

_QUERY, _COMPUTE, _TRANSFER = 0, 1, 2


@dataclass(frozen=True)
class TinyInstance:
    costs: CostTable
    foresight: Foresight
    label: str


def tiny_instance(rng: np.random.Generator, chunks: int, layers: int) -> TinyInstance:
    """A request of `chunks` x `layers` cells: compute growing with position, uneven bytes, a synthetic
    trace (steady or stepped) scaled so stream-only is within 4x of local prefill, contention sometimes."""
    cell = 0.05
    slope = rng.uniform(0.0, 0.5)
    per_chunk = cell * (1 + slope * np.arange(chunks)) * rng.lognormal(0.0, 0.25, chunks)
    compute = per_chunk[:, None] * rng.lognormal(0.0, 0.1, (chunks, layers))
    size = rng.uniform(0.7, 1.3, chunks)
    nbytes = np.round(100_000 * size[:, None] * np.ones((1, layers))).astype(np.int64)
    launch, query = rng.uniform(0.0, 0.2) * cell, np.full(layers, rng.uniform(0.05, 0.3) * cell)
    rtt, service, install_fixed = rng.uniform(0.0, 1.0) * cell, rng.uniform(0.0, 0.2) * cell, 0.01 * cell
    local = compute.sum() + launch * chunks + query.sum()
    ratio = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))  # stream-only / local-only
    goodput = nbytes.sum() / max(ratio * local - layers * rtt, 0.1 * ratio * local)
    stepped = rng.random() < 0.5
    spec = f"steps:{rng.uniform(0.1, 1.0):.3f}s@1.6B/s,{rng.uniform(0.1, 1.0):.3f}s@0.4B/s" if stepped else "const:1B/s"
    trace = get_trace(spec).scale(goodput)
    slowdown = float(rng.choice([1.0, 1.06, 1.3, -1.0]))  # -1: a slowdown that grows with the rate
    curve = ((0.5 * goodput, 1.05), (1.5 * goodput, 1.4)) if slowdown < 0 else ()
    costs = CostTable(compute, launch, nbytes, rtt + service + install_fixed, 0.0, query, 0.2 * cell, goodput)
    fs = Foresight(trace, efficiency=1.0, service_s=service, rtt_s=rtt, install_fixed_s=install_fixed,
                   receive_slowdown=max(slowdown, 1.0), receive_curve=curve)  # fmt: skip
    slow = "curve" if curve else f"{slowdown:g}"
    return TinyInstance(costs, fs, f"{chunks}x{layers} {'stepped' if stepped else 'steady'} slow={slow}")


@dataclass
class _State:
    now: float
    present: list[int]  # per layer: chunk bits present
    busy: list[int]  # per layer: chunk bits fetching or computing
    prefix: list[int]  # per chunk: layers computed or computing
    q: int  # query layers done
    computing: bool
    in_flight: bool
    heap: list[tuple[float, int, int, tuple[int, int, int, int] | None]]
    seq: int
    turn: int
    path: tuple[tuple[float, str, tuple[int, int, int, int]], ...] = ()  # (time, "compute"/"fetch", block)

    def copy(self) -> _State:
        return _State(self.now, self.present[:], self.busy[:], self.prefix[:], self.q, self.computing,
                      self.in_flight, self.heap[:], self.seq, self.turn, self.path)  # fmt: skip


class ExactSearch:
    """Branch and bound over a policy's decisions at every event (see the module docstring)."""

    def __init__(self, costs: CostTable, foresight: Foresight, max_nodes: int = 2_000_000) -> None:
        if foresight.contended or foresight.compute_noise > 0:
            raise ValueError("the exact search covers an idle server and noise-free compute only")
        self.costs, self.fs, self.rep = costs, foresight, Replayer(costs, foresight)
        self.C, self.L = costs.num_chunks, costs.num_layers
        self.full = (1 << self.C) - 1
        self.query_s = costs.query_layer_s.tolist()
        self.tail = [sum(self.query_s[q:]) + costs.first_token_s for q in range(self.L + 1)]
        self.last_query_s = self.query_s[-1] + costs.first_token_s
        # per layer, per chunk: (full-speed seconds, wire bytes) of the cell
        self.cells = [[(float(costs.compute_cell_s[c, layer]), float(costs.cell_bytes[c, layer]))
                       for c in range(self.C)] for layer in range(self.L)]  # fmt: skip
        self.peak_bps = float(np.max(getattr(foresight.forecast, "rates_bps", [math.inf]))) * foresight.efficiency
        self.max_nodes, self.nodes = max_nodes, 0
        self.best = math.inf
        self.best_path: tuple[tuple[float, str, tuple[int, int, int, int]], ...] = ()  # the decisions reaching it
        self.complete = True  # false once the node budget cut the search short

    def run(self, incumbent_s: float = math.inf) -> float:
        """The least TTFT (s) found (exact when `complete`); `incumbent_s`, a known achievable one, prunes."""
        self.best = incumbent_s * (1 + 1e-12)
        start = _State(0.0, [0] * self.L, [0] * self.L, [0] * self.C, 0, False, False, [], 0, 0)
        self._dispatch(start)
        return self.best

    def _push(self, st: _State, end: float, kind: int, block: tuple[int, int, int, int] | None) -> None:
        heapq.heappush(st.heap, (end, st.seq, kind, block))
        st.seq += 1

    def _dispatch(self, st: _State) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            self.complete = False
            return
        fs, now = self.fs, st.now
        if not st.computing and st.q < self.L and st.present[st.q] == self.full:  # the driver's query layer
            work = self.query_s[st.q] * (fs.slowdown_at(now) if st.in_flight else 1.0)
            self._push(st, now + self.rep.duration_s(work, now, st.turn), _QUERY, None)
            st.turn += 1
            st.computing = True
        if self._bound(st) >= self.best:
            return  # no way on from here finishes sooner
        computes = [None, *self._computes(st)] if not st.computing else [None]
        fetches = [None, *self._fetches(st)] if not st.in_flight else [None]
        for comp in computes:
            for fetch in fetches:
                if comp is None and fetch is None and not st.heap:
                    continue  # nothing would ever happen again
                child = st.copy()
                if comp is not None:
                    self._start_compute(child, comp, receiving=child.in_flight or fetch is not None)
                    child.path += ((now, "compute", comp),)
                if fetch is not None:
                    self._start_fetch(child, fetch)
                    child.path += ((now, "fetch", fetch),)
                self._advance(child)

    def _bound(self, st: _State) -> float:
        """A lower bound on the TTFT of any way on from `st`: the missing cells split between the lanes as
        a fractional knapsack (compute: full speed, no launch cost; link: the trace's peak rate from when
        it is free, one round trip), the compute lane also running the rest of the query, every cell
        landing before the last query layer."""
        compute_free, link_free, running_query = st.now, st.now, False
        for end, _, kind, _ in st.heap:
            if kind == _TRANSFER:
                link_free = end
            else:
                compute_free, running_query = end, kind == _QUERY
        tail = self.tail[st.q + int(running_query)]
        cells = [(w, b) for layer in range(self.L) for c, (w, b) in enumerate(self.cells[layer])
                 if not (st.busy[layer] | st.present[layer]) >> c & 1]  # fmt: skip
        if not cells:
            return compute_free + tail
        cells.sort(key=lambda x: x[0] / x[1])
        link_from = link_free + self.fs.first_byte_s + self.last_query_s

        def feasible(t: float) -> bool:
            budget, left = t - compute_free - tail, sum(b for _, b in cells)
            for w, b in cells:
                if budget <= 0:
                    break
                take = min(1.0, budget / w)
                budget -= take * w
                left -= take * b
            return budget >= 0 and (left <= 1e-9 or left <= (t - link_from) * self.peak_bps)

        lo, hi = compute_free + tail, compute_free + tail + sum(w for w, _ in cells)
        if feasible(lo):
            return lo
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
        return lo

    def _computes(self, st: _State) -> list[tuple[int, int, int, int]]:
        out = []
        for c in range(self.C):
            p, bit, earlier = st.prefix[c], 1 << c, (1 << c) - 1
            for hi in range(p + 1, self.L + 1):
                layer = hi - 1
                if (st.busy[layer] | st.present[layer]) & bit or st.present[layer] & earlier != earlier:
                    break
                out.append((c, c + 1, p, hi))
        return out

    def _fetches(self, st: _State) -> list[tuple[int, int, int, int]]:
        out = []
        for c0 in range(self.C):
            for c1 in range(c0 + 1, self.C + 1):
                mask = ((1 << c1) - 1) ^ ((1 << c0) - 1)
                for l0 in range(self.L):
                    for l1 in range(l0 + 1, self.L + 1):
                        if (st.busy[l1 - 1] | st.present[l1 - 1]) & mask:
                            break
                        out.append((c0, c1, l0, l1))
        return out

    def _start_compute(self, st: _State, block: tuple[int, int, int, int], receiving: bool) -> None:
        c, _, lo, hi = block
        for layer in range(lo, hi):
            st.busy[layer] |= 1 << c
        st.prefix[c] = hi
        cells = self.costs.compute_cell_s[c : c + 1, lo:hi]
        work = float(cells.sum()) + self.costs.compute_launch_s  # `CostTable.compute_s`, as the simulator reads it
        if receiving:
            work *= self.fs.slowdown_at(st.now)
        self._push(st, st.now + self.rep.duration_s(work, st.now, st.turn), _COMPUTE, block)
        st.turn += 1
        st.computing = True

    def _start_fetch(self, st: _State, block: tuple[int, int, int, int]) -> None:
        c0, c1, l0, l1 = block
        mask = ((1 << c1) - 1) ^ ((1 << c0) - 1)
        for layer in range(l0, l1):
            st.busy[layer] |= mask
        n = float(self.costs.cell_bytes[c0:c1, l0:l1].sum())
        self._push(st, self.rep.transfer_end_s(st.now, n, None), _TRANSFER, block)
        st.in_flight = True

    def _advance(self, st: _State) -> None:
        end, _, kind, block = heapq.heappop(st.heap)
        if math.isinf(end):
            return
        st.now = end
        if kind == _QUERY:
            st.q += 1
            st.computing = False
            if st.q == self.L:
                ttft = end + self.rep.duration_s(self.costs.first_token_s, end, st.turn)
                if ttft < self.best:
                    self.best, self.best_path = ttft, st.path
                return
        else:
            assert block is not None
            c0, c1, l0, l1 = block
            mask = ((1 << c1) - 1) ^ ((1 << c0) - 1)
            for layer in range(l0, l1):
                st.present[layer] |= mask
                st.busy[layer] &= ~mask
            if kind == _COMPUTE:
                st.computing = False
            else:
                st.in_flight = False
        self._dispatch(st)


def oracle_gap_study(
    instances: int = 10, seed: int = 0, shapes: tuple[tuple[int, int], ...] = ((3, 2), (4, 2), (2, 3), (3, 3)),
    max_nodes: int = 100_000,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per request shape (chunks x layers): the oracle's TTFT over the exact optimum on random tiny requests.

    A row holds the instances searched to the end (`complete`; the others hit `max_nodes` and count only
    for `oracle_worse_than_found`), the ratio's median, p90 and max, the share within 0.1 %, how often the
    optimum beat the oracle by more than 0.1 % with and without receive contention, and the median
    milliseconds of the oracle's plan and seconds of the exact search on this machine."""
    rng = np.random.default_rng(seed)
    out = []
    for chunks, layers in shapes:
        ratios, contended, found_better, plan_ms, exact_s = [], [], 0, [], []
        for _ in range(instances):
            inst = tiny_instance(rng, chunks, layers)
            t0 = time.perf_counter()
            oracle = OraclePolicy(foresight=inst.foresight).best_schedule(inst.costs, inst.foresight).replayed.ttft_s
            t1 = time.perf_counter()
            search = ExactSearch(inst.costs, inst.foresight, max_nodes)
            best = search.run(oracle)
            exact_s.append(time.perf_counter() - t1)
            plan_ms.append((t1 - t0) * 1e3)
            found_better += best < oracle * (1 - 1e-3)
            if search.complete:
                ratios.append(oracle / best)
                contended.append(not inst.foresight.contention.neutral)
        gaps = [r for r in ratios if r > 1 + 1e-3]
        out.append({
            "shape": f"{chunks}x{layers}", "instances": instances, "complete": len(ratios),
            "median_ratio": statistics.median(ratios) if ratios else math.nan,
            "p90_ratio": sorted(ratios)[int(0.9 * (len(ratios) - 1))] if ratios else math.nan,
            "worst_ratio": max(ratios, default=math.nan),
            "within_0_1pct": sum(r <= 1 + 1e-3 for r in ratios) / max(len(ratios), 1),
            "gap_with_contention": sum(1 for r, c in zip(ratios, contended, strict=True) if c and r > 1 + 1e-3),
            "gap_without_contention": sum(1 for r, c in zip(ratios, contended, strict=True) if not c and r > 1 + 1e-3),
            "oracle_worse_than_found": found_better, "gaps": len(gaps),
            "oracle_ms_median": statistics.median(plan_ms), "exact_s_median": statistics.median(exact_s),
            "max_nodes": max_nodes,
        })  # fmt: skip
    return out
