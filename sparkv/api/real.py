"""The real executor from Python: `run_real` (policies on a document over a shaped link) and `validate`
(the same requests in the real executor and the simulator)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.analysis.tables import result_row
from sparkv.api.basics import frame, make_policy, policy_label, resolve_policy
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.sim import build_world

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class RealRun:
    """Policies run for real on one document: the Results and what the session used."""

    scenario: Scenario  # as run: measured token counts, the bandwidth scale and link constants used
    results: list[Result]
    link: str  # which link shaped the trace (netns/tbf or pacing) and why
    link_constants: str  # where rtt / per-transfer / efficiency came from
    model_id: str
    question: str
    reference: str
    metric: str  # how answers were scored against the reference

    @property
    def table(self) -> pd.DataFrame:
        """One row per policy: configuration, measured outcome, executor idle %, the full answer and its score."""
        from sparkv.analysis.overhead import overhead
        from sparkv.analysis.scoring import matches, score

        rows = []
        for r in self.results:
            answer = str(r.extra.get("text", "")).strip()
            rows.append({**result_row(r), "idle_pct": overhead(r).idle_pct, "answer": answer,
                         "reference": self.reference, "metric": self.metric,
                         "answer_score": score(self.metric, answer, self.reference),
                         "answer_matches": matches(self.metric, answer, self.reference)})  # fmt: skip
        return frame(rows)


def auto_bandwidth_scale(sc: Scenario) -> float:
    """Bandwidth scale at which streaming everything takes as long as computing everything (predicted)."""
    world = build_world(sc)
    compute_s = float(world.costs.compute_cell_s.sum())
    wire = float(world.costs.cell_bytes.sum()) / sc.link.efficiency
    return wire / compute_s / world.trace.mean_bps


def run_real(
    scenario: Scenario | None = None,
    policies: Sequence[str | Path] = ("local", "stream", "cake", "static", "sparkv"),
    *,
    document: str = "builtin",
    link: str = "auto",
    torch_device: str = "cpu",
    max_new_tokens: int = 16,
    bandwidth_scale: float | str | None = None,
    on_start: Any = None,
    probe: bool = True,
    background_cores: int = 0,
    keep_partial: bool = False,
) -> RealRun:
    """Run `policies` for real: the model prefilled layer by layer, a KV server process, a link replaying
    the trace (`link`: netns, pacing or auto). `document` is `builtin` or `FILE.jsonl[:INDEX][?fields]`
    (see `sparkv.analysis.documents`); `bandwidth_scale="auto"` picks the scale at which streaming and
    computing everything take as long (predicted), a number sets it, None keeps the scenario's.
    `on_start(session)` is called once the link is up (the CLI prints what it uses). With `probe`, the
    device's compute speed is probed before each policy's run and handed to the policy (its
    `RequestContext.speed_hint`), so a policy plans with the machine's speed now, not the profile's;
    `background_cores` busy processes run through the whole session (a loaded device). `keep_partial`: a
    transfer that fails part-way keeps its complete cells (the simulator has no partial delivery, so such a
    run's prediction and replay assume the whole transfer was lost)."""
    from sparkv.analysis.documents import load_document

    sc = scenario or Scenario()
    names = [str(p) for p in policies]
    for name in names:
        if resolve_policy(name)[0] == "oracle":
            raise UserError("the oracle needs the future trace; it runs in the simulator only")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    context, question, answer, metric = load_document(document, sc.context_tokens)
    from sparkv.executor.session import RealSession

    session = RealSession(sc, (context, question, answer), link_kind=link, device=torch_device)
    if bandwidth_scale is not None:
        scale = auto_bandwidth_scale(session.scenario) if bandwidth_scale == "auto" else float(bandwidth_scale)
        session = RealSession(session.scenario.with_(bandwidth_scale=scale), (context, question, answer),
                              link_kind=link, loaded=session.loaded)  # fmt: skip
    from sparkv.executor.background import BackgroundLoad
    from sparkv.executor.driver import DriverConfig

    results: list[Result] = []
    with session, BackgroundLoad(background_cores):
        if on_start is not None:
            on_start(session)
        for name in names:
            speed = session.probe_speed() if probe else None
            hint = speed.factor if speed is not None else None
            config = DriverConfig(keep_partial=True) if keep_partial else None
            result = session.run(make_policy(name), max_new_tokens=max_new_tokens, config=config, speed_hint=hint)
            result.policy = policy_label(name)
            if speed is not None:
                result.extra["device_speed_probe"] = speed.to_dict()
            result.extra["background_load_cores"] = background_cores
            results.append(result)
    return RealRun(session.scenario, results, session.link_description(), session.link_constants,
                   session.loaded.model_id, question, answer, metric)  # fmt: skip


def validate(
    scenario: Scenario | None = None,
    traces: Sequence[str | Path] = ("lte:seed=1",),
    policies: Sequence[str] = ("local", "stream", "cake", "sparkv"),
    *,
    document: str = "builtin",
    link: str = "pacing",
    bandwidth_scale: float | str | None = "auto",
    repeats: int = 1,
    probe: bool = True,
    speed_tolerance: float = 0.08,
    attempts: int = 3,
    progress: Any = print,
) -> pd.DataFrame:
    """The same requests in the real executor and in the simulator: one row per (trace, policy) with
    predicted and measured TTFT (s), the error (%), and how many of the real run's decisions a fresh
    policy replaying its log did differently (0 expected). Traces take the full trace grammar."""
    from sparkv.analysis.documents import load_document
    from sparkv.analysis.validate import pair_row, run_validation
    from sparkv.traces.expand import expand_traces

    sc = scenario or Scenario()
    if repeats < 1 or attempts < 1:
        raise UserError(f"repeats and attempts must be >= 1, got {repeats}, {attempts}")
    for name in policies:
        if resolve_policy(name)[0] == "oracle":
            raise UserError("the oracle needs the future trace; it runs in the simulator only")
    if bandwidth_scale not in (None, "auto"):
        sc = sc.with_(bandwidth_scale=float(bandwidth_scale))
    context, question, answer, _ = load_document(document, sc.context_tokens)
    pairs = run_validation(expand_traces([str(t) for t in traces]), list(policies), sc, (context, question, answer),
                           link, auto_bandwidth_scale if bandwidth_scale == "auto" else None, progress=progress,
                           make=make_policy, repeats=repeats, probe=probe, speed_tolerance=speed_tolerance,
                           attempts=attempts)  # fmt: skip
    return frame(pair_row(p) for p in pairs)
