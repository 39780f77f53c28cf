"""Record every call a driver makes on a policy, and replay a record through a fresh policy.

Same events in, same commands out: replaying a run's log must reproduce its decisions exactly.
"""

from __future__ import annotations

from typing import Any, Protocol

from sparkv.core import events as ev
from sparkv.core.events import Command, Event, Resource


class _PolicyLike(Protocol):
    def update(self, event: Event) -> None: ...

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]: ...


class PolicyRecorder:
    """Wraps a policy; forwards `update`/`schedule` and appends each call to `log` as plain data."""

    def __init__(self, policy: _PolicyLike) -> None:
        self.policy = policy
        self.log: list[dict[str, Any]] = []

    def update(self, event: Event) -> None:
        self.log.append({"call": "update", "event": ev.to_dict(event)})
        self.policy.update(event)

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        commands = self.policy.schedule(now_s, idle)
        self.log.append(
            {
                "call": "schedule",
                "now_s": now_s,
                "idle": sorted(r.value for r in idle),
                "commands": [ev.to_dict(c) for c in commands],
            }
        )
        return commands


def replay(policy: _PolicyLike, log: list[dict[str, Any]]) -> list[str]:
    """Feed `log` to `policy` (already begun with the run's context); return the mismatches."""
    mismatches: list[str] = []
    for i, entry in enumerate(log):
        if entry["call"] == "update":
            policy.update(ev.from_dict(entry["event"]))
        elif entry["call"] == "schedule":
            idle = frozenset(Resource(r) for r in entry["idle"])
            got = [ev.to_dict(c) for c in policy.schedule(float(entry["now_s"]), idle)]
            if got != entry["commands"]:
                mismatches.append(f"call {i} at t={entry['now_s']:.6f} s: logged {entry['commands']}, got {got}")
        else:
            raise ValueError(f"log entry {i} has unknown call {entry.get('call')!r}")
    return mismatches
