"""SparKV: plan the compute/stream split per layer group, then keep re-planning as the request runs.

At the start the planner (`planner.Planner`) picks k_c for every chunk under the cost table's
predictions. Then every event feeds the controller's estimates (goodput from bandwidth samples, device
speed from compute timings), and every `schedule` call checks, on the exact predicted timeline,
whether the two paths' finish times have drifted apart; if so it re-plans from the request's current
state (moving unstarted cells between paths, within the migration cap) and adopts the new plan when
it predicts a lower TTFT. A transfer that has carried no bytes for `stall_s` is cancelled when
computing its cells is predicted to finish sooner. Link failures fall back to computing
(`TrackingPolicy`). Pure: time comes only from events, so a log replays to the same commands.

KV kept on local disk (`CostTable.local`) is a third lane: its cells are read layer by layer (one read per
run of local chunks), in the order the query and the compute of later chunks need them, and never planned
for streaming or computing; every plan knows when each read is predicted to land (`Snapshot.disk`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from sparkv.core.events import (
    BandwidthSample,
    Compute,
    ComputeDone,
    Event,
    Fetch,
    QueryLayerDone,
    QueryLayerStarted,
    ReadLocal,
    Resource,
    TransferCancelled,
    TransferDone,
    TransferFailed,
)
from sparkv.core.events import Command as Cmd
from sparkv.core.progress import CellState
from sparkv.core.request import CellBlock
from sparkv.policies.base import RequestContext
from sparkv.policies.controller import Controller, SparKVConfig
from sparkv.policies.planner_model import Prediction, Snapshot
from sparkv.policies.tracking import TrackingPolicy


class SparKVPolicy(TrackingPolicy):
    name = "sparkv"

    def __init__(self, config: SparKVConfig | dict[str, Any] | str | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = SparKVConfig()
        elif isinstance(config, dict):
            config = SparKVConfig.from_dict(config)
        elif isinstance(config, str):
            config = SparKVConfig.load(config)
        self.cfg = config.with_(**overrides) if overrides else config
        self.tick_s = self.cfg.tick_s  # the driver sends Tick events at this period
        self.ctl: Controller | None = None
        self.k: list[int] = []
        self.compute_q: deque[CellBlock] = deque()
        self.link_q: deque[CellBlock] = deque()
        self.disk_q: deque[CellBlock] = deque()  # reads from local disk still to issue, in order
        self.read_start_s = 0.0  # when the read in progress was issued
        self._stats: dict[str, Any] = {}

    # ---- events ----

    def on_begin(self, ctx: RequestContext) -> None:
        self.ctl = Controller(ctx.costs, self.cfg, ctx.speed_hint, ctx.energy)
        self.fetch_start_s = self.compute_start_s = ctx.start_s
        self.fetch_got = 0  # payload bytes of the in-flight transfer reported so far
        self.sample_t = ctx.start_s  # end of its last sample (or when its payload should start)
        self.query_since: float | None = None
        self.dirty = False  # cells went missing again: re-plan before the next command
        self.cancelling = False
        self.abandoned = self.probing = False
        self.link_idle_since = ctx.start_s
        self.last_replan_s = self.last_cancel_check_s = ctx.start_s
        self.next_check_s = ctx.start_s  # the next drift check no earlier than this (`check_fraction`)...
        self.checked_at = (self.ctl.bw.estimate(), self.ctl.speed.scale)  # ...unless these estimates move
        local = ctx.costs.local
        runs = local.runs() if local is not None else []
        self.disk_q = deque(CellBlock(a, b, layer, layer + 1) for layer in range(ctx.model.num_layers) for a, b in runs)
        snap = self._with_disk(Snapshot.fresh(ctx.request.num_chunks, ctx.model.num_layers, ctx.start_s))
        plan = self.ctl.plan(snap)
        self._stats = {"plan_k": list(plan.k), "predicted_ttft_s": plan.prediction.ttft_s, "replans": 0,
                      "cancels": 0, "probes": 0}  # fmt: skip
        if self.ctl.objective.needs_energy:
            self._stats["predicted_energy_j"] = plan.prediction.energy_j
        self._adopt(list(plan.k), snap, plan.prediction)

    def on_event(self, event: Event) -> None:
        ctl = self._ctl()
        if isinstance(event, BandwidthSample):
            ctl.bw.add(event.t_s, event.bytes, event.duration_s)
            self.fetch_got += event.bytes
            self.sample_t = event.t_s
            self.abandoned = self.abandoned and event.bytes == 0
        elif isinstance(event, TransferDone):
            self.link_idle_since = event.t_s
        elif isinstance(event, TransferCancelled | TransferFailed):
            self.dirty, self.cancelling, self.link_idle_since = True, False, event.t_s
            self.abandoned = True  # until bytes flow again, probe the link now and then
        elif isinstance(event, ComputeDone):
            ctl.speed.add(event.duration_s, self._context().costs.compute_s(event.block))
        elif isinstance(event, QueryLayerStarted):
            self.query_since = event.t_s
        elif isinstance(event, QueryLayerDone):
            ctl.speed.add(event.duration_s, float(self._context().costs.query_layer_s[event.layer]))
            self.query_since = None

    # ---- decisions ----

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Cmd, ...]:
        if not self.link_dead:
            self._control(now_s, idle)
        commands = super().schedule(now_s, idle)
        for cmd in commands:
            if isinstance(cmd, Fetch):
                self.fetch_start_s, self.fetch_got, self.sample_t = now_s, 0, now_s + self._ctl().costs.transfer_fixed_s
                self.probing = self.abandoned
                self._ctl().link_used = True
            elif isinstance(cmd, Compute):
                self.compute_start_s = now_s
            elif isinstance(cmd, ReadLocal):
                self.read_start_s = now_s
        return commands

    def _control(self, now_s: float, idle: frozenset[Resource]) -> None:
        ctl = self._ctl()
        # the snapshot and the current plan's timeline, built only when a decision reads them (most calls
        # need neither)
        due = now_s - self.last_replan_s >= ctl.cfg.tick_s and (now_s >= self.next_check_s or self._moved())
        snap = self._snapshot(now_s) if due or self.dirty else None
        current = ctl.predict(self.k, snap) if due and snap is not None else None
        if current is not None and ctl.cfg.check_fraction > 0:
            left = current.ttft_s - now_s if math.isfinite(current.ttft_s) else 0.0
            self.next_check_s = now_s + ctl.cfg.check_fraction * max(left, 0.0)
            self.checked_at = (ctl.bw.estimate(), ctl.speed.scale)
        drifted = current is not None and (ctl.drifted(current, now_s) or self._starving(idle))
        if self.dirty or drifted:
            assert snap is not None
            self.last_replan_s = now_s
            plan = ctl.plan(snap, self.k, quick=not self.dirty)
            if self.dirty or ctl.gains(plan.prediction, _known(current), ctl.cfg.min_gain):
                self._stats["replans"] += 1
                self._adopt(list(plan.k), snap, plan.prediction)
            else:
                ctl.adopt(_known(current))  # keep the plan; measure further drift from here
            self.dirty = False
        if self.in_flight is not None and not self.cancelling:
            self._weigh_cancel(now_s, snap, self._starving(idle))
        elif Resource.LINK in idle and self.in_flight is None and not self.link_q:
            self._probe(now_s, snap, current)

    def _moved(self) -> bool:
        """The estimates have moved by more than `check_change` (relative) since the last drift check."""
        ctl = self._ctl()
        bw, scale = self.checked_at
        limit = ctl.cfg.check_change
        return abs(ctl.bw.estimate() - bw) > limit * bw or abs(ctl.speed.scale - scale) > limit * scale

    def _starving(self, idle: frozenset[Resource]) -> bool:
        """The compute lane is idle with nothing it may start while the link still has work: the plan
        leaves compute waiting, so it is weighed again at once (not only when the lanes' ends drift)."""
        if not self.cfg.starvation_check or Resource.COMPUTE not in idle or self.query_since is not None:
            return False
        if self.compute_q and self._progress().can_compute(self.compute_q[0]):
            return False
        return self.in_flight is not None or bool(self.link_q)

    def _weigh_cancel(self, now_s: float, snap: Snapshot | None, starving: bool = False) -> None:
        ctl = self._ctl()
        wait = ctl.cfg.tick_s if starving else max(ctl.cfg.tick_s, ctl.cfg.stall_s)
        if now_s - self.last_cancel_check_s < wait:
            return
        stalled = ctl.bw.silent_s(now_s, self.fetch_start_s + ctl.costs.transfer_fixed_s) >= ctl.cfg.stall_s
        link_free = snap.link_free_s if snap is not None else self._link_free(now_s)
        slow = link_free - now_s >= 2 * ctl.cfg.transfer_target_s and not self.probing
        if not (stalled or slow or starving):
            return
        if snap is None:
            snap = self._snapshot(now_s)
        self.last_cancel_check_s = now_s
        keep = ctl.plan(snap, self.k, quick=True)
        block = self.in_flight
        assert block is not None
        state = [list(row) for row in snap.state]
        for c in range(block.chunk_lo, block.chunk_hi):
            state[c][block.layer_lo : block.layer_hi] = [int(CellState.MISSING)] * (block.layer_hi - block.layer_lo)
        dropped = Snapshot(now_s, snap.prefix, state, now_s, None, snap.compute_free_s, snap.query_next,
                           disk=snap.disk)
        drop = ctl.plan(dropped, self.k, quick=True)
        if ctl.gains(drop.prediction, keep.prediction, ctl.cfg.cancel_gain):
            self.cancelling = True
            self._stats["cancels"] += 1

    def _probe(self, now_s: float, snap: Snapshot | None, current: Prediction | None) -> None:
        """After an abandoned transfer, no link work planned, much compute left: move one cell to the link."""
        wait = self._ctl().cfg.probe_after_s
        if not self.abandoned or now_s - self.link_idle_since < wait:
            return
        if snap is None:
            snap = self._snapshot(now_s)
        if current is None:  # not predicted yet
            current = self._ctl().predict(self.k, snap)
        if current.compute_end_s - now_s < 2 * wait:
            return
        lo, hi = snap.k_bounds()
        for c in range(len(self.k) - 1, -1, -1):
            if self.k[c] > lo[c] and self.k[c] - 1 < hi[c]:
                k = list(self.k)
                k[c] -= 1
                self._stats["probes"] += 1
                self._adopt(k, snap, self._ctl().predict(k, snap))
                self.link_idle_since = now_s
                return

    def maybe_cancel(self, now_s: float) -> CellBlock | None:
        if self.cancelling and self.in_flight is not None:
            return self.in_flight
        return None

    def next_compute(self, now_s: float) -> CellBlock | None:
        if self.compute_q and self._progress().can_compute(self.compute_q[0]):
            return self.compute_q.popleft()
        return None

    def next_read(self, now_s: float) -> CellBlock | None:
        return self.disk_q.popleft() if self.disk_q else None

    def next_fetch(self, now_s: float) -> CellBlock | None:
        if self.cancelling:
            return None
        if self.link_q:
            return self.link_q.popleft()
        return None

    # ---- helpers ----

    def _adopt(self, k: list[int], snap: Snapshot, pred: Prediction) -> None:
        ctl = self._ctl()
        self.k = k
        comp, link = ctl.blocks(k, snap)
        self.compute_q, self.link_q = deque(comp), deque(link)
        ctl.adopt(pred)

    def _link_free(self, now_s: float) -> float:
        """When the link is predicted to be free for the next transfer."""
        ctl = self._ctl()
        costs = ctl.costs
        link_free = now_s
        if self.in_flight is None and self.abandoned:  # a dead link is expected to stay dead as long again
            link_free = now_s + ctl.bw.dead_for_s(now_s)
        if self.in_flight is not None:
            n = costs.block_bytes(self.in_flight)
            # from the last sample on at the estimated rate; a transfer silent for s seconds is expected
            # to stay silent about s seconds more
            silent = ctl.bw.silent_s(now_s, self.fetch_start_s + costs.transfer_fixed_s)
            remaining = max(n - self.fetch_got, 0) / ctl.planning_bps()
            resume = now_s + silent if silent > 0 else self.sample_t
            link_free = max(now_s, resume + remaining + n * costs.install_s_per_byte)
        return link_free

    def _snapshot(self, now_s: float) -> Snapshot:
        ctl, progress = self._ctl(), self._progress()
        costs = ctl.costs
        link_free = self._link_free(now_s)
        scale = ctl.speed.scale
        compute_free = now_s
        if self.computing is not None:
            compute_free = max(now_s, self.compute_start_s + costs.compute_s(self.computing) * scale)
        running = self.query_since is not None
        q = progress.query_layers_done
        if running and self.query_since is not None and q < progress.num_layers:
            compute_free = max(now_s, self.query_since + float(costs.query_layer_s[q]) * scale)
        snap = Snapshot.of(progress, now_s, link_free, self.in_flight, compute_free, q + int(running))
        return self._with_disk(snap) if self.local_chunks else snap

    def _with_disk(self, snap: Snapshot) -> Snapshot:
        """`snap` with the disk lane: every local cell shown as not missing (no plan streams or computes it),
        and when each read still to land is predicted to (back to back from the one in progress)."""
        local = self._context().costs.local
        if local is None:
            return snap
        state = [list(row) for row in snap.state]
        for c in local.chunks:
            state[c] = [max(int(x), int(CellState.FETCHING)) for x in state[c]]
        t, reads = snap.now_s, []
        if self.reading is not None:
            t = max(t, self.read_start_s + local.read_s(self.reading))
            reads.append((*self.reading.key, t))
        for block in self.disk_q:
            t += local.read_s(block)
            reads.append((*block.key, t))
        snap.state, snap.disk = state, tuple(reads)
        return snap

    def _ctl(self) -> Controller:
        if self.ctl is None:
            raise RuntimeError("sparkv policy used before begin")
        return self.ctl

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.cfg.to_dict()}

    def stats(self) -> dict[str, Any]:
        plans = {"plans": self.ctl.plans} if self.ctl is not None else {}
        return {**self._stats, **plans}


def _known(pred: Prediction | None) -> Prediction:
    """A prediction `_control` made (it predicts whenever a drift check can pass)."""
    if pred is None:
        raise RuntimeError("sparkv policy: no prediction of the current plan")
    return pred
