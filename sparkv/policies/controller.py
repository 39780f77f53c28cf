"""The run-time controller of SparKV: estimates, drift detection, re-planning and cancel decisions.

Every decision is a comparison of predicted timelines (`planner_model.Evaluator`) under the current
estimates: the link's goodput (`estimators.BandwidthEstimator`) and the device's speed relative to
the cost table (`estimators.SpeedEstimator`). All knobs live in one frozen `SparKVConfig`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock
from sparkv.policies.estimators import ESTIMATORS, BandwidthEstimator, SpeedEstimator
from sparkv.policies.objective import parse_objective
from sparkv.policies.planner import Plan, Planner, available_layers, feasible_k
from sparkv.policies.planner_energy import EnergyRates, candidates, predict_energy
from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, Prediction, Snapshot


@dataclass(frozen=True)
class SparKVConfig:
    """Every parameter of the SparKV policy; saved beside each result."""

    estimator: str = "ewma"  # bandwidth estimator: ewma, harmonic, mean, quantile
    window_s: float = 4.0  # seconds of samples the window estimators use
    ewma_alpha: float = 0.3  # EWMA weight of one second of samples
    quantile: float = 0.3  # the quantile estimator's quantile
    bandwidth_margin: float = 0.0  # plan with (1 - margin) x the estimate
    compute_alpha: float = 0.3  # EWMA weight of each command's measured / predicted time
    drift_threshold: float = 0.04  # re-plan when the paths' predicted ends drift by this x time left...
    drift_min_s: float = 0.2  # ...and by at least this many seconds
    min_gain: float = 0.003  # adopt a re-plan only if it predicts TTFT lower by this fraction
    migration_cap_cells: int = 0  # most cells moved between the paths per re-plan (0: no cap)
    group_layers: int = 3  # planning granularity: k_c in multiples of it, one compute command per group
    transfer_target_s: float = 2.0  # transfer size: about this many seconds at the estimated goodput
    max_transfer_chunks: int = 0  # most whole chunks one transfer carries (0: no limit): its cells are locked
    first_transfer_s: float = 0.5  # ...and this many while no sample has come (the prior may be far off)
    tick_s: float = 0.25  # driver tick period (ticks carry in-flight bandwidth samples)
    stall_s: float = 0.75  # seconds of an in-flight transfer without bytes before a cancel is weighed
    cancel_gain: float = 0.02  # cancel a transfer when that predicts TTFT lower by this fraction
    probe_after_s: float = 2.0  # with no link work planned, probe the link after this long idle
    search_window: int = 3  # chunks either side of the cut in local search
    local_search: bool = True
    quick_dp: bool = True  # run-time re-plans also take the separable model's seeds (`planner_dp`)
    check_fraction: float = 0.05  # drift checks at most every max(tick_s, this x predicted time left)...
    check_change: float = 0.2  # ...unless the goodput or speed estimate has moved by this fraction since the last
    speed_hint: float | None = None  # start the speed estimate here (measured / profiled s) unless the request's
    # context brings a measured one
    feasible_splits: bool = True  # no compute command may wait for a streamed cell (`planner.feasible_k`)
    starvation_check: bool = True  # an idle compute lane with link work left re-plans (and weighs a cancel) at once
    prior_weight_s: float = 0.5  # the bandwidth prior counts as this many seconds of samples (inf: plain EWMA)
    ttft_drift: bool = True  # a rise of the predicted TTFT since the plan also counts as drift
    objective: str = "ttft"  # what plans are chosen by: ttft, energy, weighted:LAMBDA, budget:SECONDS (`objective`)

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        for name in ("window_s", "ewma_alpha", "group_layers", "transfer_target_s", "first_transfer_s", "tick_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SparKVConfig.{name} must be positive, got {getattr(self, name)}")
        if not (self.check_fraction >= 0 and self.check_change >= 0):
            raise ValueError(f"SparKVConfig.check_fraction and check_change must be >= 0, got "
                             f"{self.check_fraction}, {self.check_change}")
        for name in ("bandwidth_margin", "quantile", "compute_alpha"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SparKVConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.speed_hint is not None and not (0 < self.speed_hint < math.inf):
            raise ValueError(f"SparKVConfig.speed_hint must be finite and > 0, got {self.speed_hint!r}")
        if not self.prior_weight_s >= 0:
            raise ValueError(f"SparKVConfig.prior_weight_s must be >= 0, got {self.prior_weight_s}")
        try:
            parse_objective(self.objective)
        except ValueError as exc:
            raise ValueError(f"SparKVConfig.objective: {exc}") from None
        if self.migration_cap_cells < 0 or self.search_window < 0:
            raise ValueError(f"caps must be >= 0: {self.migration_cap_cells}, {self.search_window}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparKVConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"name", "stats"}  # result files written before stats() carry "stats"
        if unknown:
            raise ValueError(f"unknown SparKVConfig keys {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> SparKVConfig:
        """From a JSON file: the config itself, or a saved result/evaluation holding it under "policy"."""
        data = json.loads(Path(path).read_text())
        for key in ("sparkv", "policy"):
            if isinstance(data.get(key), dict):
                data = data[key]
        return cls.from_dict(data)

    def with_(self, **changes: Any) -> SparKVConfig:
        return replace(self, **changes)


class Controller:
    """Estimates and predictions for one request; the policy asks it when to re-plan or cancel."""

    def __init__(self, costs: CostTable, config: SparKVConfig, speed_hint: float | None = None,
                 energy: EnergyRates | None = None) -> None:  # fmt: skip
        self.cfg = config
        self.objective = parse_objective(config.objective)
        if self.objective.needs_energy and energy is None:
            raise ValueError(f"objective {self.objective.spec()} needs the request's power models "
                             "(RequestContext.energy)")  # fmt: skip
        self.energy = energy
        self.link_used = False  # a transfer has been issued (the radio's promotion and tail are paid)
        self.costs = costs
        self.ev = Evaluator(costs, config.group_layers, max_chunks=config.max_transfer_chunks)
        self.planner = Planner(self.ev, window=config.search_window, feasible=config.feasible_splits,
                               quick_dp=config.quick_dp)
        self.bw = BandwidthEstimator(
            config.estimator, costs.bandwidth_prior_bps, config.window_s, config.ewma_alpha, config.quantile,
            config.prior_weight_s,
        )
        hint = speed_hint if speed_hint is not None else config.speed_hint
        self.speed = SpeedEstimator(config.compute_alpha, 1.0 if hint is None else hint)
        self.drift_at_plan = 0.0  # link end - compute end when the current plan was made
        self.ttft_at_plan = math.inf  # its predicted TTFT
        self.plans = 0  # searches run (adopted or not)

    # ---- models under the current estimates ----

    def planning_bps(self) -> float:
        return self.bw.estimate() * (1.0 - self.cfg.bandwidth_margin)

    def link(self) -> ConstantLink:
        return ConstantLink(self.planning_bps(), self.costs.transfer_fixed_s, self.costs.install_s_per_byte)

    def compute(self) -> ComputeSpeed:
        return ComputeSpeed(self.speed.scale)

    def target_bytes(self) -> float:
        target_s = self.cfg.transfer_target_s if self.bw.count else self.cfg.first_transfer_s
        return max(target_s * self.planning_bps(), 1.0)

    def predict(self, k: list[int], snap: Snapshot) -> Prediction:
        link, speed, target = self.link(), self.compute(), self.target_bytes()
        pred = self.ev.predict(k, snap, link, speed, target)
        return self._with_energy(k, snap, pred, link, speed, target)

    def _with_energy(self, k: list[int], snap: Snapshot, pred: Prediction, link: ConstantLink, speed: ComputeSpeed,
                     target: float) -> Prediction:  # fmt: skip
        if not self.objective.needs_energy or self.energy is None:
            return pred
        joules = predict_energy(self.ev, k, snap, link, speed, target, pred, self.energy, self.link_used)
        return replace(pred, energy_j=joules)

    def plan(self, snap: Snapshot, current: list[int] | None = None, quick: bool = False) -> Plan:
        """The planner's best k under the current estimates; `quick` for a re-plan near `current`. With an
        objective other than TTFT, the least-TTFT plan and its variants (`planner_energy.candidates`) are
        weighed by predicted TTFT and energy."""
        self.plans += 1
        cap = self.cfg.migration_cap_cells or None
        link, speed, target = self.link(), self.compute(), self.target_bytes()
        plan = self.planner.plan(snap, link, speed, target, current, cap, self.cfg.local_search, quick)
        if not self.objective.needs_energy:
            return plan
        lo, hi = snap.k_bounds()
        avail = available_layers(snap) if self.cfg.feasible_splits else None
        ks, preds, seen = [], [], set()
        for k in candidates(self.ev, snap, list(plan.k), current, quick):
            if avail is not None:
                k = feasible_k(k, lo, hi, avail)
            moved = sum(abs(a - b) for a, b in zip(k, current, strict=True)) if current is not None else 0
            if cap is not None and moved > cap:
                continue
            if tuple(k) in seen:
                continue
            seen.add(tuple(k))
            pred = plan.prediction if tuple(k) == plan.k else self.ev.predict(k, snap, link, speed, target)
            ks.append(k)
            preds.append(self._with_energy(k, snap, pred, link, speed, target))
        best = self.objective.choose([(p.ttft_s, p.energy_j) for p in preds], 0)
        return Plan(tuple(ks[best]), preds[best], plan.evaluations + len(ks))

    def blocks(self, k: list[int], snap: Snapshot) -> tuple[list[CellBlock], list[CellBlock]]:
        return self.ev.blocks(k, snap, self.target_bytes())

    # ---- decisions ----

    def adopt(self, pred: Prediction) -> None:
        self.drift_at_plan = _gap(pred)
        self.ttft_at_plan = pred.ttft_s

    def drifted(self, pred: Prediction, now_s: float) -> bool:
        """The paths' predicted ends have moved apart (or together) since the plan was made, or (with
        `ttft_drift`) the predicted TTFT has risen: a compute lane waiting on the link moves both ends
        together, so only the TTFT shows it."""
        left = max(pred.link_end_s, pred.compute_end_s) - now_s
        rise = pred.ttft_s - self.ttft_at_plan
        finite = math.isfinite(pred.ttft_s) and math.isfinite(self.ttft_at_plan)
        if self.cfg.ttft_drift and finite and rise > max(self.cfg.drift_min_s, self.cfg.drift_threshold * left):
            return True
        gap = _gap(pred)
        if math.isinf(gap) or math.isinf(self.drift_at_plan):
            return math.isinf(gap) != math.isinf(self.drift_at_plan)
        change = abs(gap - self.drift_at_plan)
        return change > max(self.cfg.drift_min_s, self.cfg.drift_threshold * left)

    def gains(self, new: Prediction, old: Prediction, fraction: float) -> bool:
        """`new` is better than `old` by more than `fraction` (of TTFT; with an objective weighing energy, of
        what it turns on: `Objective.gains`)."""
        if self.objective.needs_energy and not (math.isnan(new.energy_j) or math.isnan(old.energy_j)):
            return self.objective.gains((new.ttft_s, new.energy_j), (old.ttft_s, old.energy_j), fraction)
        return new.ttft_s < old.ttft_s - fraction * max(old.ttft_s, 1e-9)


def _gap(pred: Prediction) -> float:
    if pred.link_end_s == float("inf") or pred.compute_end_s == float("inf"):
        return float("inf")
    return pred.link_end_s - pred.compute_end_s
