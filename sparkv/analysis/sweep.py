"""What-if sweeps in the simulator: a grid (or list) of scenarios x policies, run in parallel, one table out.

An axis is a scenario or link field (`trace`, `bandwidth_scale`, `context_tokens`, `codec`, ...), `rtt_ms`
(sets `rtt_s`), or `policy` (a registered name, or a policy config JSON such as `sparkv tune` writes).
`grid` runs the cartesian product; `list` runs the i-th value of every axis together (one-value axes
broadcast). Trace values may be files, folders (every trace file in them; README/LICENSE files and
mahimahi `.up` files beside a `.down` twin are skipped), globs, or synthetic specs. A run that stalls
becomes a row with status `stalled` and the reason; it does not stop the sweep.

Every point carries its job key (`sweep_store.job_key`: a hash of the run's full configuration). Given a
`RunStore`, `run_sweep` takes the rows already stored under those keys and runs only the others, storing
each finished batch's rows (and kept Result JSONs) as it arrives: an interrupted sweep resumes where it
stopped. Workers return everything they produce; only the parent writes files, so the same code serves a
Ray cluster whose workers do not share this machine's disk.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from sparkv.analysis.backends import Backend, SerialBackend
from sparkv.analysis.inputs import cached_spec, cached_trace
from sparkv.analysis.sweep_store import RunStore, job_key
from sparkv.analysis.tables import result_row, scenario_columns
from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.errors import UserError
from sparkv.core.model import resolve_model_spec
from sparkv.policies import Policy, make_policy
from sparkv.traces.expand import expand_traces

LINK_FIELDS = tuple(f.name for f in fields(LinkConfig))
SCENARIO_FIELDS = tuple(f.name for f in fields(Scenario) if f.name != "link") + LINK_FIELDS
AXES = (*SCENARIO_FIELDS, "rtt_ms", "policy")
MODES = ("grid", "list")


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: base scenario fields, axes of values, and how to combine them."""

    axes: dict[str, list[Any]]  # axis name -> values (traces unexpanded)
    mode: str = "grid"  # "grid" (cartesian product) or "list" (zip; one-value axes broadcast)
    base: dict[str, Any] = field(default_factory=dict)  # scenario fields every point starts from

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"sweep mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name, values in self.axes.items():
            if name not in AXES:
                raise UserError(f"unknown sweep axis {name!r}; axes: {', '.join(AXES)}")
            if not isinstance(values, list) or not values:
                raise UserError(f"sweep axis {name!r} needs a non-empty list of values, got {values!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "base": self.base, "axes": self.axes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        unknown = set(data) - {"mode", "base", "axes"}
        if unknown:
            raise UserError(f"unknown sweep spec keys {sorted(unknown)}; expected mode, base, axes")
        axes = {k: v if isinstance(v, list) else [v] for k, v in dict(data.get("axes", {})).items()}
        return cls(axes, str(data.get("mode", "grid")), dict(data.get("base", {})))


def load_spec(path: Path) -> SweepSpec:
    """A sweep spec from JSON or TOML ({mode, base, axes})."""
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import json

            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read sweep spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"sweep spec {path}: expected a table/object with mode, base, axes")
    return SweepSpec.from_dict(data)


def expand(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of the sweep: {index, key (job key), scenario (dict), policy}; checks names before anything
    runs."""
    axes = dict(spec.axes)
    if "trace" in axes:
        axes["trace"] = expand_traces(axes["trace"])
    axes.setdefault("policy", list(_default_policies()))
    names = list(axes)
    if spec.mode == "grid":
        names = [n for n in names if n != "policy"] + ["policy"]  # policies of one scenario run together
        combos = list(itertools.product(*(axes[n] for n in names)))
    else:
        lengths = {len(v) for v in axes.values()} - {1}
        if len(lengths) > 1:
            sizes = {n: len(v) for n, v in axes.items()}
            raise UserError(f"list sweep: axes must have one length (or one value), got {sizes}")
        n = lengths.pop() if lengths else 1
        combos = [tuple(v[i] if len(v) > 1 else v[0] for v in (axes[a] for a in names)) for i in range(n)]
    base = _base_scenario(spec.base)
    points = []
    for i, combo in enumerate(combos):
        values = dict(zip(names, combo, strict=True))
        policy = str(values.pop("policy"))
        if "rtt_ms" in values:
            values["rtt_s"] = float(values.pop("rtt_ms")) / 1e3
        try:
            scenario = base.with_(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"sweep point {values}: {exc}") from exc
        data = scenario.to_dict()
        points.append({"index": i, "key": job_key(data, policy), "scenario": data, "policy": policy})
    check_names(points)
    return points


def _base_scenario(base: dict[str, Any]) -> Scenario:
    link = {k: v for k, v in base.items() if k in LINK_FIELDS}
    top = {k: v for k, v in base.items() if k not in link}
    if "rtt_ms" in top:
        link["rtt_s"] = float(top.pop("rtt_ms")) / 1e3
    try:
        return Scenario.from_dict({**top, "link": {**dict(top.pop("link", {})), **link}})
    except (TypeError, ValueError) as exc:
        raise UserError(f"sweep base scenario: {exc}") from exc


def _default_policies() -> list[str]:
    from sparkv.policies import POLICIES

    return list(POLICIES)


def check_names(points: list[dict[str, Any]]) -> None:
    """Fail early (UserError) on an unknown policy, model, device profile or codec."""
    from sparkv.cost_models.codecs import get_codec
    from sparkv.cost_models.profiles import load_profile

    for name in {p["policy"] for p in points}:
        policy_factory(name)
    scenarios = [p["scenario"] for p in points]
    for model in {s["model"] for s in scenarios}:
        resolve_model_spec(model)
    for device in {s["device"] for s in scenarios}:
        load_profile(device)
    for codec in {s["codec"] for s in scenarios}:
        get_codec(codec)


def policy_factory(name: str) -> tuple[str, dict[str, Any]]:
    """(registered name, make_policy options) for a policy name or a policy config JSON file, either with an
    objective in brackets (`sparkv[energy]`)."""
    from sparkv.policies.config_file import resolve_policy

    return resolve_policy(name)


def sweep_label(policy: str) -> str:
    """A row's policy: the name, `POLICY:STEM` for a config file, with `[OBJECTIVE]` after either."""
    from sparkv.policies.objective import split_policy_objective

    base, objective = split_policy_objective(policy)
    label = base if not base.endswith(".json") else f"{_policy_options(base)[0]}:{Path(base).stem}"
    return label if objective is None else f"{label}[{objective}]"


@lru_cache(maxsize=64)
def _policy_options(name: str) -> tuple[str, dict[str, Any]]:
    return policy_factory(name)


def make_named_policy(name: str, world: Any = None) -> Policy:
    """A fresh policy for a sweep's policy value (name or config file); the oracle gets the world's future."""
    registered, options = _policy_options(name)
    if registered == "oracle" and world is not None and "forecast" not in options:
        from sparkv.policies.oracle import oracle_options

        options = {**oracle_options(world), **options}
    return make_policy(registered, **options)


FILES = "_files"  # key of a worker's row under which it returns files for the run's folder (name -> text)


def run_point(scenario: Scenario, policy: str, keep: bool = False, world: Any = None) -> dict[str, Any]:
    """Simulate one point; always returns a row (status ok, stalled or error). With `keep`, the row also
    carries the Result JSON (or, for a stalled run, what it was and why it stopped) under FILES."""
    from sparkv.sim import SimulationStalled, build_world, simulate

    label = sweep_label(policy)
    try:
        world = world or build_world(scenario, cached_trace(scenario.trace), cached_spec(scenario.model))
        result = simulate(world, make_named_policy(policy, world), record=False)
    except SimulationStalled as exc:
        row = _failed_row(scenario, label, "stalled", str(exc))
        if keep:  # a stalled run is kept too: what it was and why it did not finish
            record = {"status": "stalled", "error": str(exc), "policy": label, "needs_longer": exc.needs_longer,
                      "config": {"scenario": scenario.to_dict(), "policy": policy}}  # fmt: skip
            row[FILES] = {"stalled.json": json.dumps(record, indent=1) + "\n"}
        return row
    except (UserError, ValueError) as exc:
        return _failed_row(scenario, label, "error", str(exc))
    except Exception as exc:  # a bug in one policy should not end a long sweep; reported per row
        return _failed_row(scenario, label, "error", f"{type(exc).__name__}: {exc}")
    result.policy = label
    row = result_row(result)
    if keep:
        row[FILES] = {"result.json": json.dumps(result.to_dict(), indent=1)}
    return row


def scenario_key(scenario: Scenario) -> str:
    """A short stable hash of a scenario alone (a world is built once per key)."""
    import hashlib

    return hashlib.sha1(json.dumps(scenario.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def _failed_row(scenario: Scenario, policy: str, status: str, error: str) -> dict[str, Any]:
    try:
        mean = cached_trace(scenario.trace).mean_bps * scenario.link.bandwidth_scale * 8 / 1e6
        name = cached_trace(scenario.trace).name
    except (UserError, ValueError):
        mean, name = math.nan, scenario.trace
    row = {**scenario_columns(scenario), "policy": policy, "world": "sim", "trace_name": name,
           "trace_mean_mbps": mean, "status": status, "error": error}  # fmt: skip
    return {**row, **dict.fromkeys(("ttft_s", "energy_j", "mb_streamed", "mb_wasted"), math.nan)}


def run_batch(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Worker entry: simulate a batch of points, reusing the world across a scenario's policies."""
    from sparkv.sim import build_world

    rows = []
    last: tuple[str, Any] = ("", None)
    for point in task["points"]:
        scenario = Scenario.from_dict(point["scenario"])
        key = scenario_key(scenario)
        if last[0] != key:
            try:
                last = (key, build_world(scenario, cached_trace(scenario.trace), cached_spec(scenario.model)))
            except (UserError, ValueError):
                last = (key, None)  # run_point records the error
        row = run_point(scenario, point["policy"], bool(task.get("keep")), last[1])
        rows.append({"index": point["index"], "job_key": point["key"], **row})
    return rows


def make_batches(points: list[dict[str, Any]], workers: int, keep: bool = False) -> list[dict[str, Any]]:
    """Points grouped by trace, cut into about 4 batches per worker (at most 200 points each)."""
    ordered = sorted(points, key=lambda p: (p["scenario"]["trace"], p["index"]))
    size = max(1, min(200, math.ceil(len(ordered) / (4 * workers))))
    return [{"points": ordered[i : i + size], "keep": keep} for i in range(0, len(ordered), size)]


class SweepInterrupted(Exception):
    """Ctrl-C during a sweep; `rows` holds the rows that had finished (in point order)."""

    def __init__(self, rows: list[dict[str, Any]], total: int) -> None:
        super().__init__(f"interrupted after {len(rows)} of {total} runs")
        self.rows, self.total = rows, total


def run_sweep(points: list[dict[str, Any]], backend: Backend | None = None, store: RunStore | None = None,
              progress: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Every point's row, in point order; SweepInterrupted (with the finished rows) on Ctrl-C.

    With `store`, points whose job key it already holds are not run (their stored rows are used; see
    `store.reused`), and every batch's rows are stored as the batch finishes; `store.keep_results` also
    keeps each run's Result JSON in its folder."""
    from tqdm import tqdm

    backend = backend or SerialBackend()
    rows: list[dict[str, Any]] = []
    todo = points
    if store is not None:
        store.root.mkdir(parents=True, exist_ok=True)
        todo = []
        for point in points:
            stored = store.lookup(point["key"])
            if stored is None:
                todo.append(point)
            else:
                rows.append({"index": point["index"], **stored})
    batches = make_batches(todo, backend.workers, store is not None and store.keep_results) if todo else []
    try:
        with tqdm(total=len(points), initial=len(rows), unit="run", disable=not progress, dynamic_ncols=True) as bar:
            for _, out in backend.imap(run_batch, batches):
                with _sigint_deferred():  # a Ctrl-C here lands after: what is stored is what is reported
                    for row in out:
                        files = row.pop(FILES, None)
                        if store is not None:
                            store.store(row, files)
                    rows.extend(out)
                bar.update(len(out))
                stalled = sum(r["status"] != "ok" for r in rows)
                if stalled:
                    bar.set_postfix(not_ok=stalled)
    except KeyboardInterrupt:
        raise SweepInterrupted(sorted(rows, key=lambda r: r["index"]), len(points)) from None
    return sorted(rows, key=lambda r: r["index"])


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs (main thread only: only it may set handlers); one that came
    is raised after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *frame: caught.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(*caught[0])
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def provenance() -> dict[str, Any]:
    """Versions and machine, for `sweep.json` and reports."""
    import os
    import platform
    import subprocess
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for pkg in ("sparkv", "numpy", "scipy", "simpy", "matplotlib", "ray", "pyarrow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        versions["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        pass
    machine = {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "host": platform.node()}  # fmt: skip
    return {"versions": versions, "machine": machine, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
