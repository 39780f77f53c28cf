"""What the SparKV planner optimises: TTFT (the default), energy, a weighted mix, or energy under a TTFT budget.

Every objective compares candidate plans by their predicted TTFT (s) and predicted energy (J, modelled: see
`planner_energy`):

- `ttft`: least TTFT (the planner's own search; energy is not predicted at all);
- `energy`: least energy; among the plans within `energy_slack` (1 %) of it, the fastest;
- `weighted:LAMBDA` (0 <= LAMBDA <= 1): least (1 - LAMBDA) x TTFT / TTFT_ref + LAMBDA x energy / energy_ref,
  the references being the least-TTFT plan's (0 is `ttft`, 1 is pure least energy);
- `budget:SECONDS`: least energy among the plans whose TTFT (from the request's start) is within SECONDS; the
  fastest plan when none is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KINDS = ("ttft", "energy", "weighted", "budget")
ENERGY_SLACK = 0.01  # `energy`: accept this fraction more energy for a faster plan


@dataclass(frozen=True)
class Objective:
    kind: str = "ttft"
    weight: float = 0.0  # `weighted`: LAMBDA, the share of energy
    budget_s: float = math.inf  # `budget`: the most TTFT allowed, s from the request's start
    energy_slack: float = ENERGY_SLACK

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"objective must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weighted objective: LAMBDA must be in [0, 1], got {self.weight}")
        if self.kind == "budget" and not (0.0 < self.budget_s < math.inf):
            raise ValueError(f"budget objective: SECONDS must be finite and > 0, got {self.budget_s}")
        if not 0.0 <= self.energy_slack < 1.0:
            raise ValueError(f"energy_slack must be in [0, 1), got {self.energy_slack}")

    @property
    def needs_energy(self) -> bool:
        return self.kind != "ttft" and not (self.kind == "weighted" and self.weight == 0.0)

    def spec(self) -> str:
        """The text `parse_objective` reads back."""
        if self.kind == "weighted":
            return f"weighted:{self.weight:g}"
        if self.kind == "budget":
            return f"budget:{self.budget_s:g}"
        return self.kind

    def choose(self, points: Sequence[tuple[float, float]], ref: int = 0) -> int:
        """Index of the best of `points` (TTFT s, energy J); `ref` is the least-TTFT one (the references of
        `weighted`). Ties go to the earlier point."""
        if not points:
            raise ValueError("no plans to choose from")
        finite = [i for i, (t, e) in enumerate(points) if math.isfinite(t) and math.isfinite(e)]
        if self.kind == "ttft" or not finite:
            return min(range(len(points)), key=lambda i: points[i][0])
        if self.kind == "energy":
            least = min(points[i][1] for i in finite)
            near = [i for i in finite if points[i][1] <= least * (1.0 + self.energy_slack) + 1e-12]
            return min(near, key=lambda i: points[i][0])
        if self.kind == "budget":
            within = [i for i in finite if points[i][0] <= self.budget_s]
            if not within:
                return min(finite, key=lambda i: points[i][0])
            return min(within, key=lambda i: (points[i][1], points[i][0]))
        t_ref, e_ref = points[ref] if ref in finite else points[finite[0]]
        lam = self.weight

        def score(i: int) -> float:
            t, e = points[i]
            return (1.0 - lam) * t / max(t_ref, 1e-9) + lam * e / max(e_ref, 1e-9)

        return min(finite, key=score)

    def gains(self, new: tuple[float, float], old: tuple[float, float], fraction: float) -> bool:
        """`new` (TTFT s, energy J; energy from now on) beats `old` by more than `fraction` of the quantity
        the choice between the two turns on."""
        (tn, en), (to, eo) = new, old
        if not (math.isfinite(tn) and math.isfinite(en)):
            return False
        if not (math.isfinite(to) and math.isfinite(eo)):
            return True
        if self.choose([old, new]) != 1:
            return False
        if self.kind == "weighted":
            lam = self.weight
            return (1 - lam) * tn / max(to, 1e-9) + lam * en / max(eo, 1e-9) < 1.0 - fraction
        if self.kind == "budget" and to > self.budget_s:
            return tn < to - fraction * max(to, 1e-9)
        if self.kind == "energy" and en > eo * (1.0 - fraction):  # chosen for its speed, within the slack
            return tn < to - fraction * max(to, 1e-9)
        return en < eo - fraction * max(eo, 1e-9)


def parse_objective(text: str | Objective | None) -> Objective:
    """`ttft`, `energy`, `weighted:LAMBDA` or `budget:SECONDS`; ValueError with what is accepted otherwise."""
    if text is None:
        return Objective()
    if isinstance(text, Objective):
        return text
    raw = str(text).strip().lower()
    kind, sep, arg = raw.partition(":")
    usage = "expected ttft, energy, weighted:LAMBDA (0..1) or budget:SECONDS"
    if kind in ("ttft", "energy"):
        if sep:
            raise ValueError(f"objective {text!r}: {kind} takes no value; {usage}")
        return Objective(kind)
    if kind in ("weighted", "budget"):
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"objective {text!r}: {kind} needs a number after ':'; {usage}") from None
        if not math.isfinite(value):
            raise ValueError(f"objective {text!r}: the value must be finite; {usage}")
        try:
            return Objective("weighted", weight=value) if kind == "weighted" else Objective("budget", budget_s=value)
        except ValueError as exc:
            raise ValueError(f"objective {text!r}: {exc}") from None
    raise ValueError(f"unknown objective {text!r}; {usage}")


def split_policy_objective(name: str) -> tuple[str, str | None]:
    """A policy name with an objective, `NAME[OBJECTIVE]` (how evaluate and sweep label the sparkv policy's
    rows: `sparkv[energy]`), as (NAME, canonical objective); a plain name as (name, None)."""
    text = str(name)
    if not text.endswith("]") or "[" not in text:
        return text, None
    base, _, rest = text.partition("[")
    return base, parse_objective(rest[:-1]).spec()


def with_objective(options: dict[str, Any], objective: str | None) -> dict[str, Any]:
    """One policy's `make_policy` options with its objective set (inside its config, if options carry one)."""
    if objective is None:
        return dict(options)
    out = dict(options)
    config = out.get("config")
    if config is not None:
        out["config"] = config.with_(objective=objective)
    else:
        out["objective"] = objective
    return out


def objective_name(name: str, objective: str | None) -> str:
    """`name` labelled with `objective` (`sparkv[energy]`); the plain name for None or ttft."""
    spec = None if objective is None else parse_objective(objective).spec()
    return name if spec in (None, "ttft") else f"{name}[{spec}]"
