"""Decode validation under a drifting machine: compute probes around the calibration and the measured runs.

The loading validation (`validate._probed_run`) probes the device before and after each real run and predicts
the run at the probed speed; this is the same for decode. A policy's calibration run is bracketed by two
probes (their geometric mean is the speed its compute fit holds for); each measured run is bracketed by two
more, and a run whose two probes differ by more than a tolerance is measured again (bounded attempts, the
last kept either way). The simulated compute is then scaled by (run's probes) / (calibration's probes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def geomean(a: float, b: float) -> float:
    if not (a > 0 and b > 0):
        raise ValueError(f"probe seconds must be > 0, got {a!r} and {b!r}")
    return math.sqrt(a * b)


@dataclass(frozen=True)
class Bracket:
    """Two probes around one run (seconds each), and whether they agree within `tolerance`."""

    before_s: float
    after_s: float
    tolerance: float

    @property
    def seconds(self) -> float:
        """The speed the run most likely saw: the geometric mean of the two probes."""
        return geomean(self.before_s, self.after_s)

    @property
    def change(self) -> float:
        """after / before - 1: how much slower the machine was after the run than before it."""
        return self.after_s / self.before_s - 1.0

    @property
    def steady(self) -> bool:
        return abs(self.change) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"before_s": self.before_s, "after_s": self.after_s, "seconds": self.seconds,
                "change": self.change, "steady": self.steady, "tolerance": self.tolerance}  # fmt: skip


@dataclass
class ProbedRun(Generic[T]):
    """The kept run of `probed_run`, its bracket, and every attempt's bracket (the kept one last)."""

    value: T
    bracket: Bracket
    attempts: list[Bracket] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The attempts (the kept bracket is the last of them)."""
        return {"attempts": len(self.attempts), "attempt_brackets": [b.to_dict() for b in self.attempts]}


def probed_run(run: Callable[[], T], probe: Callable[[], float], tolerance: float, attempts: int) -> ProbedRun[T]:
    """`run()` between two `probe()`s (seconds), again while the two differ by more than `tolerance`
    (|after / before - 1|), up to `attempts` runs in all; the last attempt is kept either way."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    tried: list[Bracket] = []
    while True:
        before = probe()
        value = run()
        bracket = Bracket(before, probe(), tolerance)
        tried.append(bracket)
        if bracket.steady or len(tried) == attempts:
            return ProbedRun(value, bracket, tried)


@dataclass(frozen=True)
class SpeedScale:
    """The factor a policy's simulated compute is scaled by: the measured run's probes over its calibration
    run's (1.2: the machine took 20 % longer for the same probe during the measured run)."""

    calibration: Bracket
    run: Bracket
    attempts: int

    @property
    def factor(self) -> float:
        return self.run.seconds / self.calibration.seconds

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "calibration": self.calibration.to_dict(), "run": self.run.to_dict(),
                "attempts": self.attempts}  # fmt: skip


def describe_scale(name: str, scale: SpeedScale, shape: dict[str, Any]) -> str:
    """One printed line: the probes (ms), their changes (%), the factor and the attempts."""
    c, r = scale.calibration, scale.run
    note = "" if r.steady else f", probes still differ by more than {100 * r.tolerance:.0f} %"
    return (f"{name} compute probe ({shape['layers']} layers x {shape['attended_groups']} groups, scoring "
            f"{shape['scoring']}): calibration {1e3 * c.before_s:.2f} / {1e3 * c.after_s:.2f} ms, measured run "
            f"{1e3 * r.before_s:.2f} / {1e3 * r.after_s:.2f} ms ({100 * r.change:+.1f} %), attempt "
            f"{scale.attempts}{note}; simulated compute x{scale.factor:.3f}")  # fmt: skip
