"""Options shared by the sub-commands that take a scenario (simulate, run, evaluate, validate)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparkv.commands.values import nonneg_float, nonneg_int, pos_int
from sparkv.core.config import LinkConfig, LocalKV, Scenario
from sparkv.core.errors import UserError
from sparkv.policies import Policy, make_policy


def deprecated_alias(new_flag: str, base: type[argparse.Action] = argparse._StoreAction) -> type[argparse.Action]:
    """An argparse action for an old flag name: it does what `new_flag` does and prints a one-line note."""

    class Deprecated(base):  # type: ignore[valid-type,misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:  # fmt: skip
            print(f"sparkv: note: {option_string} is deprecated; use {new_flag}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return Deprecated


def add_scenario_args(p: argparse.ArgumentParser, defaults: Scenario | None = None, trace: bool = True) -> None:
    """The scenario flags; `trace=False` leaves `--trace` to the command (validate takes several)."""
    d = defaults or Scenario()
    p.add_argument("--config", type=Path, help="scenario TOML or JSON (a result's config works too); flags override it")
    if trace:
        p.add_argument("--trace", help=f"trace file[?options] or synthetic spec such as lte:seed=1 (default "
                       f"{d.trace}); options as in PATH?carrier=tmobile&gaps=outage (sparkv/traces/options.py)")
    p.add_argument("--model", help=f"built-in model spec or Hugging Face model directory (default {d.model})")
    p.add_argument("--device", help=f"device profile name or JSON path (default {d.device})")
    p.add_argument("--codec", help=f"KV codec on the wire (default {d.codec})")
    p.add_argument("--attention", help="attention of locally computed chunks: dense or block-sparse:tau=0.9,block=64 "
                   f"(default {d.attention})")
    p.add_argument("--context-tokens", type=pos_int, help=f"context length (default {d.context_tokens})")
    p.add_argument("--query-tokens", type=pos_int, help=f"query length (default {d.query_tokens})")
    p.add_argument("--chunk-tokens", type=pos_int, help=f"tokens per chunk (default {d.chunk_tokens})")
    p.add_argument("--bandwidth-scale", type=nonneg_float, help="multiply the trace's bandwidth (default 1)")
    p.add_argument("--trace-offset", type=nonneg_float, dest="trace_offset_s", help="start time in the trace, s")
    p.add_argument("--rtt-ms", type=nonneg_float, help=f"round trip per transfer, ms (default {d.link.rtt_s * 1e3:g})")
    p.add_argument("--radio", help=f"radio power model: lte, 5g, wifi, 3g (default {d.link.radio})")
    p.add_argument("--seed", type=nonneg_int, help="random seed (default 0)")


def add_local_args(p: argparse.ArgumentParser) -> None:
    """The flags of KV kept on local disk (a third source for loading)."""
    p.add_argument("--local-chunks", metavar="N|P%|A,B,...",
                   help="chunks whose KV an earlier session kept on local disk (every layer): the first N, the "
                        "first P%% of the context's chunks, or a comma list of chunk indices (default none)")
    p.add_argument("--local-storage", metavar="NAME|JSON",
                   help="storage profile of that disk: this-vm (measured here), jetson-orin-nvme, jetson-orin-emmc, "
                        "phone-ufs31, or a JSON path (default this-vm)")
    p.add_argument("--local-queue-depth", type=pos_int, help="reads in flight on the local disk (default 1)")


def parse_local_chunks(spec: str, num_chunks: int) -> int | tuple[int, ...]:
    """`--local-chunks`: "N" (the first N), "P%" (the first P percent, rounded down) or "A,B,..." (these)."""
    text = spec.strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100:
                raise ValueError
            return int(pct / 100 * num_chunks)
        if "," in text:
            return tuple(int(x) for x in text.split(",") if x.strip())
        return int(text)
    except ValueError:
        raise UserError(f"--local-chunks: expected N, P% or A,B,..., got {spec!r}") from None


def read_scenario_file(path: Path) -> dict[str, Any]:
    """Scenario fields from a TOML or JSON file: the fields themselves, or a `scenario` table inside (as a
    sweep spec's or a saved Result's `config` holds it). TOML if the name ends in .toml, else JSON."""
    try:
        text = Path(path).read_text()
        if Path(path).suffix.lower() == ".toml":
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read scenario {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"scenario {path}: expected a table of scenario fields")
    config = data.get("config")
    found = data.get("scenario", config.get("scenario", data) if isinstance(config, dict) else data)
    if not isinstance(found, dict):
        raise UserError(f"scenario {path}: 'scenario' must be a table of fields")
    return nest_link_fields(found)


def nest_link_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Scenario fields with link fields (rtt_s, radio, ...; rtt_ms too) given flat moved under `link`."""
    out = dict(data)
    link = dict(out.pop("link", None) or {})
    if "rtt_ms" in out:
        link["rtt_s"] = float(out.pop("rtt_ms")) / 1e3
    for name in LinkConfig.__dataclass_fields__:
        if name in out:
            link[name] = out.pop(name)
    return {**out, "link": link} if link else out


def scenario_from_args(args: argparse.Namespace, defaults: Scenario | None = None) -> Scenario:
    """The scenario named by `--config` (or the defaults), with any flags applied on top."""
    base = defaults or Scenario()
    if getattr(args, "config", None):
        data = read_scenario_file(args.config)
        try:
            base = Scenario.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise UserError(f"scenario {args.config} is malformed: {exc}") from exc
    changes: dict[str, Any] = {}
    names = ("trace", "model", "device", "codec", "attention", "context_tokens", "query_tokens", "chunk_tokens", "seed")
    for name in names:
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
        scenario = base.with_(**changes)
        return _with_local(scenario, args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _with_local(scenario: Scenario, args: argparse.Namespace) -> Scenario:
    """`scenario` with the `--local-*` flags applied (where the command has them)."""
    spec, storage, depth = (getattr(args, f"local_{n}", None) for n in ("chunks", "storage", "queue_depth"))
    if spec is None and storage is None and depth is None:
        return scenario
    base = scenario.local or LocalKV()
    chunks = base.chunks
    if spec is not None:
        num_chunks = -(-scenario.context_tokens // scenario.chunk_tokens)
        chunks = parse_local_chunks(spec, num_chunks)
    local = LocalKV(chunks, storage if storage is not None else base.storage,
                    depth if depth is not None else base.queue_depth)  # fmt: skip
    return scenario.with_(local=local if local.chunks else None)


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
    add_objective_arg(p)


OBJECTIVE_HELP = ("what the sparkv policy's plans minimise: ttft (default), energy (least energy; the fastest "
                  "within 1 %% of it), weighted:LAMBDA ((1-LAMBDA) x TTFT + LAMBDA x energy, each relative to "
                  "the fastest plan's; 0..1) or budget:SECONDS (least energy with TTFT within SECONDS)")


def add_objective_arg(p: argparse.ArgumentParser, repeatable: bool = False, extra: str = "") -> None:
    """`--objective`, the same flag on every command that runs the sparkv policy; `repeatable`: a list (one
    run of the policy per objective, rows `sparkv[OBJECTIVE]`; ttft keeps the row `sparkv`)."""
    if repeatable:
        p.add_argument("--objective", action="append", type=objective_arg, default=None,
                       help=OBJECTIVE_HELP + "; repeatable: the sparkv policy once per objective, rows "
                       "sparkv[OBJECTIVE]" + extra)  # fmt: skip
    else:
        p.add_argument("--objective", type=objective_arg, default=None, help=OBJECTIVE_HELP + extra)


def objective_arg(text: str) -> str:
    """`--objective`: checked by `parse_objective`, kept as its canonical text."""
    from sparkv.policies.objective import parse_objective

    try:
        return parse_objective(text).spec()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _with_objective(options: dict[str, dict[str, Any]], objective: str | None) -> dict[str, dict[str, Any]]:
    """`options` with the sparkv policy's objective set (in its config, if a file gave one)."""
    from sparkv.policies.objective import with_objective

    if objective is None:
        return options
    return {**options, "sparkv": with_objective(options.get("sparkv", {}), objective)}


def policy_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{policy name: options} from `--policy-config` (for the policy that file names), or {}."""
    path = getattr(args, "policy_config", None)
    objective = getattr(args, "objective", None)
    if path is None:
        return _with_objective({}, objective)
    from sparkv.policies.config_file import load_policy_config

    configured = load_policy_config(path)
    return _with_objective({configured.policy: dict(configured.options)}, objective)


def policy_maker(args: argparse.Namespace) -> Callable[[str], Policy]:
    """make_policy, with the options of `--policy-config` for the policy that file names."""
    options = policy_options(args)
    if not options:
        return make_policy

    def make(name: str) -> Policy:
        return make_policy(name, **options[name]) if name in options else make_policy(name)

    return make


def floats(text: str) -> list[float]:
    """Comma-separated numbers, e.g. "0.5,1,2"."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {text!r}") from None


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows of plain data as CSV, columns in order of first appearance."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
