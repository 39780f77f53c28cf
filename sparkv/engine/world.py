"""Assemble a simulated world from a `Scenario`: request, model spec, trace, device profile, costs.

The executor builds the same `CostTable` from the same scenario, so a policy sees identical
predictions in both worlds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sparkv.core.config import Scenario
from sparkv.core.costs import CostTable
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec, resolve_model_spec
from sparkv.core.request import Request
from sparkv.cost_models.energy import RadioModel, get_radio
from sparkv.cost_models.profiles import DeviceProfile, load_profile
from sparkv.cost_models.table import build_cost_table
from sparkv.traces import Trace, get_trace


@dataclass(frozen=True, eq=False)
class World:
    """Everything a simulated (or real) request needs, built once from a scenario."""

    scenario: Scenario
    request: Request
    spec: ModelSpec
    trace: Trace  # the rate the device receives at, bytes/s: `link_trace` limited by the receive path
    profile: DeviceProfile
    costs: CostTable
    radio: RadioModel
    availability: Trace | None  # fraction of the device available to the request, 0..1
    unlimited_trace: Trace | None = None  # before the receive limit (None: the same as `trace`)

    @property
    def link_trace(self) -> Trace:
        """The trace scaled by the scenario's bandwidth scale, before the receive limit: what a real link plays."""
        return self.unlimited_trace if self.unlimited_trace is not None else self.trace

    def scenario_dict(self) -> dict[str, Any]:
        """`scenario.to_dict()`, a fresh copy each call (every result keeps its own)."""
        return _copy_json(self._scenario_json)

    def costs_dict(self) -> dict[str, Any]:
        """`costs.to_dict()`, a fresh copy each call."""
        return _copy_json(self._costs_json)

    @cached_property
    def _scenario_json(self) -> dict[str, Any]:
        return self.scenario.to_dict()

    @cached_property
    def _costs_json(self) -> dict[str, Any]:
        return self.costs.to_dict()


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-like data whose lists hold one kind of item (as `to_dict` writes them)."""
    if isinstance(value, dict):  # scalars are shared, not copied: no call per scalar
        return {k: _copy_json(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        head = value[0] if value else None
        if isinstance(head, list) and not (head and isinstance(head[0], dict | list)):
            return [row[:] for row in value]  # a matrix of scalars
        if isinstance(head, dict | list):
            return [_copy_json(v) for v in value]
        return value[:]  # scalars: a slice copies them at C speed
    return value


def build_world(scenario: Scenario, trace: Trace | None = None, spec: ModelSpec | None = None) -> World:
    """Resolve every name in `scenario`; pass `trace`/`spec` to reuse objects already loaded."""
    try:
        request = Request(scenario.context_tokens, scenario.query_tokens, scenario.chunk_tokens)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    spec = spec or resolve_model_spec(scenario.model)
    base = trace if trace is not None else get_trace(scenario.trace)
    scaled = base.scale(scenario.link.bandwidth_scale) if scenario.link.bandwidth_scale != 1.0 else base
    if scaled.loop_bytes <= 0:
        raise UserError(f"trace {base.name!r} carries no bytes at all: nothing can be streamed over it (a "
                        f"world needs a link that can carry something; for a device with no network, run "
                        f"--policy local over any trace, which it never uses)")
    profile = load_profile(scenario.device)
    received = receive_limited(scaled, scenario.link.efficiency, scenario.link.receive_s_per_byte)
    prior = received.mean_bps
    costs = build_cost_table(request, spec, profile, scenario.link, scenario.codec, prior, scenario.attention,
                             scenario.seed, scenario.local)
    availability = get_trace(scenario.availability) if scenario.availability else None
    if availability is not None and availability.loop_bytes <= 0:
        raise UserError(f"availability trace {scenario.availability!r} is zero throughout")
    radio = get_radio(scenario.link.radio)
    return World(scenario, request, spec, received, profile, costs, radio, availability,
                 scaled if received is not scaled else None)


def receive_limited(trace: Trace, efficiency: float, s_per_byte: float) -> Trace:
    """`trace` with every rate r lowered to r / (1 + r x efficiency x s_per_byte).

    A receive path that spends `s_per_byte` seconds on each byte after the wire, serial with it, takes
    1 / (r x efficiency) + s_per_byte seconds per byte at rate r; the link model charges bytes / (rate x
    efficiency), so this rate makes it charge exactly that. Applied to the world's trace, the simulator, the
    oracle and the planners' foresight all see it; the real link still plays the unlimited trace.
    """
    if s_per_byte <= 0:
        return trace
    rates = trace.rates_bps / (1.0 + trace.rates_bps * efficiency * s_per_byte)
    return trace.with_rates(rates, f"(receive {s_per_byte * 1e9:.2f} ns/B)")
