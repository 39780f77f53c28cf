"""The API's building blocks: scenarios from flat fields, traces, policies (the oracle with its future), tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.analysis.tables import order_columns
from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.errors import UserError
from sparkv.policies import NO_DISK_LANE, POLICIES, Policy
from sparkv.policies import make_policy as _make_registered
from sparkv.sim import World
from sparkv.traces import Trace, get_trace

if TYPE_CHECKING:
    import pandas as pd


class TraceLoopWarning(UserWarning):
    """A request ran longer than its trace, which then replayed from its start (as mahimahi does)."""


def scenario(base: Scenario | None = None, **fields: Any) -> Scenario:
    """A `Scenario` from flat keyword fields: scenario fields (model, context_tokens, chunk_tokens, trace,
    device, codec, ...), link fields by their own names (rtt_s, bandwidth_scale, radio, ...), or rtt_ms.
    A `Path` trace is taken as its string; unknown names raise UserError naming them."""
    if "rtt_ms" in fields:
        fields["rtt_s"] = float(fields.pop("rtt_ms")) / 1e3
    if isinstance(fields.get("trace"), Path):
        fields["trace"] = str(fields["trace"])
    known = set(Scenario.__dataclass_fields__) | set(LinkConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown scenario field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
    try:
        return (base or Scenario()).with_(**fields)
    except (TypeError, ValueError) as exc:
        raise UserError(f"scenario: {exc}") from exc


def load_trace(spec: str | Path) -> Trace:
    """A trace from a file (with `?key=value` loader options) or a synthetic spec; bytes/s over seconds."""
    return get_trace(str(spec))


def policy_names() -> list[str]:
    """The registered policy names."""
    return list(POLICIES)


def make_policy(name: str | Path, world: World | None = None, **options: Any) -> Policy:
    """A fresh policy: a registered name or a policy config JSON (as `sparkv tune` writes).

    The oracle plans on the future bandwidth, so it needs `world` (whose trace, link arithmetic and device
    availability it is given) or an explicit `forecast=`; without either it is refused.
    """
    registered, configured = resolve_policy(str(name))
    if registered in NO_DISK_LANE and world is not None and world.costs.local is not None:
        raise UserError(f"the {registered} policy is not available when some KV is on local disk (it does not "
                        "model the disk lane, so it would not be a bound); run it on the scenario without local "
                        "chunks")
    merged = {**configured, **options}
    if registered == "oracle" and "forecast" not in merged and "foresight" not in merged:
        if world is None:
            raise UserError("the oracle plans on the future bandwidth: pass world=sparkv.build_world(scenario) "
                            "(or forecast=TRACE); without it it would know only the mean")  # fmt: skip
        from sparkv.policies.oracle import oracle_options

        merged = {**oracle_options(world), **merged}
    return _make_registered(registered, **merged)


def resolve_policy(name: str) -> tuple[str, dict[str, Any]]:
    """(registered name, options) of a policy name or a policy config JSON file, either with an objective
    after it in brackets (`sparkv[energy]`, `tuned.json[weighted:0.5]`)."""
    from sparkv.policies.config_file import resolve_policy as resolve

    return resolve(name)


def policy_label(name: str) -> str:
    from sparkv.policies.objective import split_policy_objective

    base, objective = split_policy_objective(name)
    label = base if not base.endswith(".json") else f"{resolve_policy(base)[0]}:{Path(base).stem}"
    return label if objective is None else f"{label}[{objective}]"


def frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame of table rows, configuration columns first (the order of the CSV files)."""
    import pandas as pd

    listed = [dict(r) for r in rows]
    return pd.DataFrame(listed, columns=order_columns(listed) if listed else None)


def read_table(path: str | Path) -> pd.DataFrame:
    """A saved table as a DataFrame: a sweep/evaluate/validate CSV, a folder holding one, or Result JSONs."""
    from sparkv.analysis.tables import load_rows

    return frame(load_rows(Path(path)))
