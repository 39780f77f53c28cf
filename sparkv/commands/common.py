"""Options shared by the sub-commands that take a scenario (simulate, run, evaluate, validate)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.policies import Policy, make_policy

if TYPE_CHECKING:
    from sparkv.engine.world import World


def add_scenario_args(p: argparse.ArgumentParser, defaults: Scenario | None = None) -> None:
    d = defaults or Scenario()
    p.add_argument("--config", type=Path, help="scenario JSON (as saved in a result's config); flags override it")
    p.add_argument("--trace", help=f"trace file or synthetic spec such as lte:seed=1 (default {d.trace})")
    p.add_argument("--model", help=f"built-in model spec or Hugging Face model directory (default {d.model})")
    p.add_argument("--device", help=f"device profile name or JSON path (default {d.device})")
    p.add_argument("--codec", help=f"KV codec on the wire (default {d.codec})")
    p.add_argument("--context-tokens", type=int, help=f"context length (default {d.context_tokens})")
    p.add_argument("--query-tokens", type=int, help=f"query length (default {d.query_tokens})")
    p.add_argument("--chunk-tokens", type=int, help=f"tokens per chunk (default {d.chunk_tokens})")
    p.add_argument("--bandwidth-scale", type=float, help="multiply the trace's bandwidth (default 1)")
    p.add_argument("--trace-offset", type=float, dest="trace_offset_s", help="start time in the trace, s")
    p.add_argument("--rtt-ms", type=float, help=f"round trip per transfer, ms (default {d.link.rtt_s * 1e3:g})")
    p.add_argument("--radio", help=f"radio power model: lte, wifi, 3g (default {d.link.radio})")
    p.add_argument("--seed", type=int, help="random seed (default 0)")


def scenario_from_args(args: argparse.Namespace, defaults: Scenario | None = None) -> Scenario:
    """The scenario named by `--config` (or the defaults), with any flags applied on top."""
    base = defaults or Scenario()
    if getattr(args, "config", None):
        try:
            data: dict[str, Any] = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read scenario {args.config}: {exc}") from exc
        data = data.get("scenario", data.get("config", {}).get("scenario", data))
        try:
            base = Scenario.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise UserError(f"scenario {args.config} is malformed: {exc}") from exc
    changes: dict[str, Any] = {}
    for name in ("trace", "model", "device", "codec", "context_tokens", "query_tokens", "chunk_tokens", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    for name in ("bandwidth_scale", "trace_offset_s", "radio"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "rtt_ms", None) is not None:
        changes["rtt_s"] = args.rtt_ms / 1e3
    for name in ("context_tokens", "query_tokens", "chunk_tokens"):
        if name in changes and changes[name] <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {changes[name]}")
    try:
        return base.with_(**changes)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; columns are (key, header with unit, format spec)."""
    header = [h for _, h, _ in columns]
    body = [[format(row[k], f) if isinstance(row[k], int | float) else str(row[k]) for k, _, f in columns]
            for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def add_policy_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy-config", type=Path,
                   help="a policy config JSON (as `sparkv tune` writes) for the policy it names")  # fmt: skip


def policy_maker(args: argparse.Namespace) -> Callable[[str], Policy]:
    """make_policy, with the options of `--policy-config` for the policy that file names."""
    path = getattr(args, "policy_config", None)
    if path is None:
        return make_policy
    from sparkv.analysis.tune import load_policy_config

    configured = load_policy_config(path)

    def make(name: str) -> Policy:
        return make_policy(name, **configured.options) if name == configured.policy else make_policy(name)

    return make


def make_for_world(make: Callable[[str], Policy], name: str, world: World) -> Policy:
    """`make(name)`, except that the oracle is handed the world's future (its trace, link arithmetic and
    device availability): without them it would plan on the mean bandwidth like any other policy."""
    if name != "oracle":
        return make(name)
    from sparkv.policies.oracle import oracle_options

    return make_policy(name, **oracle_options(world))
