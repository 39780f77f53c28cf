"""Tuning a policy's config on training traces and judging it on held-out ones, from Python: `tune`.

The search is `sparkv.analysis.tune.Tuner` (differential evolution over the policy's config dataclass,
seeded with the defaults, so the tuned config is never worse on the training runs); this module picks the
scenarios, runs the default and the tuned config on both sets, and returns the runs as tables.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparkv.analysis.tune import STALL_PENALTY_S, Param, Tuner, parse_param, search_space
from sparkv.api.basics import frame
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.policies.config_file import config_class, config_to_dict
from sparkv.traces.expand import expand_traces

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class TuneRun:
    """A tuned config beside the default, with every training and held-out run of both."""

    policy: str
    default: dict[str, Any]  # config fields
    tuned: dict[str, Any]
    space: list[Param]
    scenarios: dict[str, list[Scenario]]  # "train" / "test" -> scenarios
    values: dict[str, np.ndarray]  # "train" / "test" -> [2 (default, tuned), scenarios, 2 (TTFT s, energy J)]
    energy_weight_s_per_j: float
    stat: str
    info: dict[str, Any] = field(default_factory=dict)  # the optimiser's record

    @property
    def table(self) -> pd.DataFrame:
        """One row per (set, scenario, config): trace, bandwidth scale, TTFT s (inf: stalled), energy J."""
        rows = []
        for name, scenarios in self.scenarios.items():
            for j, sc in enumerate(scenarios):
                for i, config in enumerate(("default", "tuned")):
                    ttft, energy = self.values[name][i, j]
                    rows.append({"set": name, "trace": sc.trace, "bandwidth_scale": sc.link.bandwidth_scale,
                                 "config": config, "ttft_s": float(ttft), "energy_j": float(energy)})  # fmt: skip
        return frame(rows)

    def summary(self) -> pd.DataFrame:
        """Per set: runs, the objective (s) of the default and the tuned config, their ratio, and on how many
        runs the tuned config's TTFT is lower."""
        rows = []
        for name, values in self.values.items():
            if values.shape[1] == 0:
                continue
            weighted = values[..., 0] + self.energy_weight_s_per_j * values[..., 1]
            per_run = np.where(np.isfinite(values[..., 0]), weighted, STALL_PENALTY_S)
            agg = np.median if self.stat == "median" else np.mean
            default, tuned = (float(agg(per_run[k])) for k in (0, 1))
            rows.append({"set": name, "runs": values.shape[1], f"default_{self.stat}_objective_s": default,
                         f"tuned_{self.stat}_objective_s": tuned, "default_over_tuned": default / tuned,
                         "tuned_faster_runs": int(np.sum(per_run[1] < per_run[0]))})  # fmt: skip
        return frame(rows)

    def save(self, path: str | Path) -> Path:
        """The tuned config as JSON, loadable as a policy (`sparkv.simulate(sc, [path])`, `--policy-config`)."""
        out = Path(path)
        doc = {"kind": "tuned_policy_config", "policy": {"name": self.policy, **self.tuned},
               "default_policy": {"name": self.policy, **self.default}, "space": [p.to_dict() for p in self.space],
               "objective": {"stat": self.stat, "per_run": "ttft_s + energy_weight_s_per_j * energy_j",
                             "energy_weight_s_per_j": self.energy_weight_s_per_j, "stall_penalty_s": STALL_PENALTY_S},
               "training": {"train_traces": sorted({s.trace for s in self.scenarios["train"]}),
                            "test_traces": sorted({s.trace for s in self.scenarios["test"]}),
                            "scenario": {**self.scenarios["train"][0].to_dict(), "trace": None},
                            "optimizer": self.info},
               "results": self.summary().to_dict(orient="records")}  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str))
        return out


def tune(
    base: Scenario | None = None,
    train: Sequence[str | Path] = ("lte:seed=1",),
    test: Sequence[str | Path] = (),
    *,
    policy: str = "sparkv",
    budget: int = 100,
    popsize: int = 3,
    bandwidth_scales: Sequence[float] = (1.0,),
    energy_weight_s_per_j: float = 0.0,
    stat: str = "median",
    params: Sequence[str] = (),
    fixed: Mapping[str, Any] | None = None,
    seed: int = 0,
    jobs: int = 1,
    backend: str = "local",
) -> TuneRun:
    """Tune `policy`'s config on the `train` traces (x `bandwidth_scales`) and run default and tuned on `test`.

    `budget` is about how many configs are evaluated; the objective per run is TTFT s + energy_weight x J,
    its `stat` (median or mean) over the training runs is minimised. `params` replace a field's range
    (`NAME=LOW:HIGH[:log]`, `NAME=a|b`, `NAME=bool`); `fixed` holds fields at a value. Traces take the full
    trace grammar (files with options, folders, globs, specs).
    """
    from sparkv.analysis.backends import make_backend

    if stat not in ("median", "mean"):
        raise UserError(f"stat must be median or mean, got {stat!r}")
    if budget < 1 or jobs < 1 or not bandwidth_scales or min(bandwidth_scales) <= 0:
        raise UserError(f"budget and jobs must be >= 1 and bandwidth scales positive, got {budget}, {jobs}, "
                        f"{list(bandwidth_scales)}")  # fmt: skip
    sc = base or Scenario()
    cls = config_class(policy)
    default = config_to_dict(cls())
    default.pop("name", None)
    held = dict(fixed or {})
    unknown = set(held) - set(default)
    if unknown:
        raise UserError(f"{policy} config has no field(s) {sorted(unknown)}; fields: {', '.join(default)}")
    default.update(held)
    space = [p for p in search_space(policy, [parse_param(t, cls) for t in params]) if p.name not in held]
    sets = {name: [sc.with_(trace=t, bandwidth_scale=k) for t in expand_traces([str(x) for x in traces])
                   for k in bandwidth_scales] if traces else []
            for name, traces in (("train", train), ("test", test))}  # fmt: skip
    if not sets["train"]:
        raise UserError("tune needs at least one training trace")
    runner = make_backend(backend, jobs, preload=["sparkv.analysis.tune"])
    try:
        tuner = Tuner(policy, space, sets["train"], default, energy_weight_s_per_j, stat, runner)
        best, info = tuner.optimise(budget, seed, popsize)
        values = {name: tuner.run_values([default, best], scenarios) if scenarios else np.zeros((2, 0, 2))
                  for name, scenarios in sets.items()}  # fmt: skip
    finally:
        runner.close()
    return TuneRun(policy, default, best, space, sets, values, energy_weight_s_per_j, stat, info)
