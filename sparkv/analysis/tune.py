"""Tune a policy's config dataclass in the simulator with differential evolution (scipy), in parallel.

The objective of one config is a statistic (median by default) over the training scenarios of
`ttft_s + energy_weight * energy_j`; a run that stalls counts as `STALL_PENALTY_S`. Every parameter is
mapped to [0, 1] (log scale where asked; ints rounded; bools at 0.5; enums by equal bins), and the
default config seeds the population, so the tuned config is never worse than the default on the
training set. Identical decoded configs are evaluated once.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkv.analysis.backends import Backend, SerialBackend
from sparkv.analysis.inputs import cached_spec, cached_trace
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.policies import Policy, make_policy
from sparkv.policies.config_file import (  # re-exported: tune's loader is everyone's
    config_class,
    config_from_dict,
)

STALL_PENALTY_S = 7200.0  # objective of a run that never reaches the first token (2x the sim's deadline)
KINDS = ("float", "int", "bool", "enum")


@dataclass(frozen=True)
class Param:
    """One tuned field and its range."""

    name: str
    kind: str  # one of KINDS
    low: float = 0.0  # float/int bounds, inclusive
    high: float = 1.0
    log: bool = False  # search log(value) uniformly (low > 0)
    choices: tuple[Any, ...] = ()  # enum values

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"parameter {self.name}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind in ("float", "int") and not self.low <= self.high:
            raise UserError(f"parameter {self.name}: low {self.low} > high {self.high}")
        if self.log and self.low <= 0:
            raise UserError(f"parameter {self.name}: a log-scale range needs low > 0, got {self.low}")
        if self.kind == "enum" and not self.choices:
            raise UserError(f"parameter {self.name}: an enum needs choices")

    def decode(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        if self.kind == "bool":
            return u >= 0.5
        if self.kind == "enum":
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        x = lo + u * (hi - lo)
        x = math.exp(x) if self.log else x
        return round(x) if self.kind == "int" else x

    def encode(self, value: Any) -> float:
        if self.kind == "bool":
            return 0.75 if value else 0.25
        if self.kind == "enum":
            return (self.choices.index(value) + 0.5) / len(self.choices) if value in self.choices else 0.5
        lo, hi = (math.log(self.low), math.log(self.high)) if self.log else (self.low, self.high)
        x = math.log(value) if self.log and value > 0 else float(value)
        return 0.5 if hi == lo else min(max((x - lo) / (hi - lo), 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "bool":
            return {"name": self.name, "kind": self.kind}
        if self.kind == "enum":
            return {"name": self.name, "kind": self.kind, "choices": list(self.choices)}
        return {"name": self.name, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


# Declared search spaces per policy: only these fields are tuned (others keep their values). Policies
# without one get every bool and positive number of their config, over [default/4, default*4] (log).
# SparKV: bounds a factor of ~4-10 around the defaults, inside the config's own validity checks. Not
# tuned: tick_s, search_window, check_fraction, check_change and quick_dp (the simulator does not charge the
# policy's own CPU time, so the optimiser would just drive checks and searches up) and migration_cap_cells
# (0 = no cap).
SPACES: dict[str, dict[str, Param]] = {
    "sparkv": {p.name: p for p in (
        Param("estimator", "enum", choices=("ewma", "harmonic", "mean", "quantile")),
        Param("window_s", "float", 0.5, 16.0, log=True),
        Param("ewma_alpha", "float", 0.05, 0.9),
        Param("quantile", "float", 0.05, 0.7),
        Param("bandwidth_margin", "float", 0.0, 0.5),
        Param("compute_alpha", "float", 0.05, 0.9),
        Param("drift_threshold", "float", 0.005, 0.3, log=True),
        Param("drift_min_s", "float", 0.02, 2.0, log=True),
        Param("min_gain", "float", 0.0005, 0.05, log=True),
        Param("group_layers", "int", 1, 6),
        Param("transfer_target_s", "float", 0.25, 8.0, log=True),
        Param("stall_s", "float", 0.1, 3.0, log=True),
        Param("cancel_gain", "float", 0.001, 0.2, log=True),
        Param("probe_after_s", "float", 0.25, 8.0, log=True),
        Param("local_search", "bool"),
    )},
}  # fmt: skip


def parse_param(text: str, cls: type) -> Param:
    """`NAME=LOW:HIGH[:log]`, `NAME=a|b|c` (enum; JSON values where they parse) or `NAME=bool`."""
    name, eq, body = (t.strip() for t in text.partition("="))
    hints = typing.get_type_hints(cls)
    if not eq or name not in hints:
        raise UserError(f"--param {text!r}: expected NAME=LOW:HIGH[:log], NAME=a|b|c or NAME=bool with NAME a field "
                        f"of {cls.__name__} ({', '.join(hints)})")  # fmt: skip
    if body == "bool":
        return Param(name, "bool")
    if "|" in body:
        return Param(name, "enum", choices=tuple(_json_or_text(v) for v in body.split("|")))
    parts = body.split(":")
    try:
        low, high = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise UserError(f"--param {text!r}: expected LOW:HIGH numbers") from None
    return Param(name, "int" if hints[name] is int else "float", low, high, log=parts[2:] == ["log"])


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def search_space(policy: str, overrides: Sequence[Param] = ()) -> list[Param]:
    """The policy's declared space (or the default one), with `overrides` replacing or adding fields."""
    cls = config_class(policy)
    extra = {p.name: p for p in overrides}
    if policy in SPACES:
        declared = {**SPACES[policy], **extra}
        names = [f.name for f in dataclasses.fields(cls)]
        return [declared[n] for n in names if n in declared]
    return default_space(cls, extra)


def default_space(cls: type, declared: dict[str, Param] | None = None) -> list[Param]:
    """Declared params, plus bools and positive numbers of `cls` (numbers over [default/4, default*4], log)."""
    declared = declared or {}
    space = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default
        if f.name in declared:
            space.append(declared[f.name])
        elif hints.get(f.name) is bool and isinstance(default, bool):
            space.append(Param(f.name, "bool"))
        elif hints.get(f.name) in (int, float) and isinstance(default, int | float) and default > 0:
            kind = "int" if hints[f.name] is int else "float"
            lo, hi = default / 4, default * 4
            space.append(Param(f.name, kind, max(1, math.floor(lo)) if kind == "int" else lo, hi, log=True))
    return space


@dataclass
class Tuner:
    """Evaluates configs of `policy` over `scenarios` (memoised), and runs the optimiser."""

    policy: str
    space: list[Param]
    scenarios: list[Scenario]
    base_config: dict[str, Any]  # fields not in the space keep these values
    energy_weight: float = 0.0  # seconds per joule added to the objective
    stat: str = "median"  # "median" or "mean" over scenarios
    backend: Backend = dataclasses.field(default_factory=SerialBackend)
    cache: dict[str, float] = dataclasses.field(default_factory=dict)
    _start: float = dataclasses.field(default=0.0, init=False, repr=False)
    progress: Callable[[int], None] | None = None  # called with the number of new runs done
    log: Callable[[str], None] | None = None  # one line per optimiser generation

    def decode(self, u: Sequence[float]) -> dict[str, Any]:
        return {**self.base_config, **{p.name: p.decode(x) for p, x in zip(self.space, u, strict=True)}}

    def encode(self, config: dict[str, Any]) -> np.ndarray:
        return np.array([p.encode(config[p.name]) for p in self.space])

    def run_values(self, configs: list[dict[str, Any]], scenarios: list[Scenario]) -> np.ndarray:
        """[configs, scenarios, 2] of (TTFT s, energy J); a stalled run is (inf, nan)."""
        pairs = [(i, j) for i in range(len(configs)) for j in range(len(scenarios))]
        size = max(1, math.ceil(len(pairs) / (4 * self.backend.workers)))
        cls = config_class(self.policy)
        tasks = [{"policy": self.policy, "cls": cls,
                  "runs": [(i, j, configs[i], scenarios[j].to_dict()) for i, j in pairs[k : k + size]]}
                 for k in range(0, len(pairs), size)]  # fmt: skip
        out = np.full((len(configs), len(scenarios), 2), np.nan)
        for _, values in self.backend.imap(run_configs, tasks):
            for i, j, ttft, energy in values:
                out[i, j] = (ttft, energy)
            if self.progress:
                self.progress(len(values))
        return out

    def objective_of(self, values: np.ndarray) -> np.ndarray:
        """Per config: the statistic over scenarios of TTFT + weight x energy (stalls penalised)."""
        per_run = np.where(np.isfinite(values[..., 0]), values[..., 0] + self.energy_weight * values[..., 1],
                           STALL_PENALTY_S)  # fmt: skip
        agg = np.median if self.stat == "median" else np.mean
        return np.asarray(agg(per_run, axis=1), dtype=float)

    def evaluate(self, configs: list[dict[str, Any]]) -> list[float]:
        keys = [json.dumps(c, sort_keys=True, default=str) for c in configs]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            values = self.run_values([json.loads(k) for k in todo], self.scenarios)
            self.cache.update(zip(todo, self.objective_of(values).tolist(), strict=True))
        return [self.cache[k] for k in keys]

    def optimise(self, budget: int, seed: int = 0, popsize: int = 3) -> tuple[dict[str, Any], dict[str, Any]]:
        """(best config, optimiser info) after about `budget` config evaluations."""
        from scipy.optimize import differential_evolution

        if not self.space:
            return dict(self.base_config), {"method": "none (empty space)", "evaluations": 0}
        members = popsize * len(self.space)
        maxiter = max(1, budget // members - 1)

        def batch_map(_func: Any, population: Any) -> list[float]:
            return self.evaluate([self.decode(u) for u in population])

        start = self._start = time.perf_counter()
        seeding = {"rng" if "rng" in inspect.signature(differential_evolution).parameters else "seed": seed}
        res = differential_evolution(
            _unused, [(0.0, 1.0)] * len(self.space), maxiter=maxiter, popsize=popsize, x0=self.encode(self.base_config),
            polish=False, updating="deferred", workers=batch_map, tol=1e-3, callback=self._generation, **seeding,
        )  # fmt: skip
        info = {"method": "scipy.optimize.differential_evolution", "budget": budget, "popsize": popsize,
                "maxiter": maxiter, "generations": int(res.nit), "evaluations": int(res.nfev),
                "distinct_configs": len(self.cache), "objective": float(res.fun), "wall_s": time.perf_counter() - start,
                "message": str(res.message)}  # fmt: skip
        return self.decode(res.x), info


    def _generation(self, *_args: Any, **_kwargs: Any) -> None:
        if self.log:
            elapsed = time.perf_counter() - self._start
            best = min(self.cache.values(), default=math.nan)
            self.log(f"{len(self.cache)} configs evaluated in {elapsed:.0f} s, best objective {best:.3f} s")


def _unused(_u: Any) -> float:  # differential_evolution needs a callable; `batch_map` does the work
    raise AssertionError("not called")


@typing.no_type_check
def run_configs(task: dict[str, Any]) -> list[tuple[int, int, float, float]]:
    """Worker entry: simulate (config, scenario) pairs; stalls give (inf, nan)."""
    from sparkv.sim import SimulationStalled, build_world, simulate

    out, worlds = [], {}
    for i, j, config, scen in task["runs"]:
        key = json.dumps(scen, sort_keys=True)
        if key not in worlds:
            s = Scenario.from_dict(scen)
            worlds[key] = build_world(s, cached_trace(s.trace), cached_spec(s.model))
        policy: Policy = make_policy(task["policy"], config=config_from_dict(task["cls"], config))
        try:
            r = simulate(worlds[key], policy, record=False)
            out.append((i, j, r.ttft_s, r.energy_total_j))
        except SimulationStalled:
            out.append((i, j, math.inf, math.nan))
    return out


