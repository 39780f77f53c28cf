"""One real request end to end: model, document, KV store, server and link, driver, Result.

`RealSession` keeps the expensive parts (the loaded model, the KV store, the server behind its link)
alive across requests, so several policies can be run on the same context one after another. A scenario
with `local` chunks also gets their local copy (`executor.model.localkv`), written once from the KV store
before any request (untimed) and read back with O_DIRECT by the requests that ask for it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.core.request import CellBlock
from sparkv.core.result import Result
from sparkv.cost_models.energy import request_energy_j
from sparkv.engine.world import World, build_world
from sparkv.executor.driver import CellArrival, DriverConfig, RealDriver
from sparkv.executor.model.kvstore import KVStore, KVStoreInfo, build_kv_store
from sparkv.executor.model.localkv import LocalKVReader, LocalLayout, ensure_local_kv
from sparkv.executor.model.models import LoadedModel, eos_token_ids, load_model
from sparkv.executor.model.prefill import LayerwisePrefill
from sparkv.executor.model.smollm2 import SMOLLM2_NAMES, cache_root
from sparkv.executor.model.speed import DeviceSpeed, availability_spec, probe_speed
from sparkv.executor.sensors import EnergySensor, measure_energy, open_sensor
from sparkv.policies.base import Policy, RequestContext
from sparkv.policies.planner_energy import EnergyRates
from sparkv.traces import Trace, get_trace


@dataclass(frozen=True)
class Prompt:
    """A context and a query, as token ids, with the text they came from."""

    context_ids: torch.Tensor  # [T]
    query_ids: torch.Tensor  # [Q]
    question: str
    reference_answer: str = ""


def build_prompt(loaded: LoadedModel, context: str, question: str, max_context_tokens: int,
                 answer: str = "") -> Prompt:
    """Context tokens (truncated), and the question as the rest of a chat turn when the model has a template."""
    tok = loaded.tokenizer
    if tok is None:
        raise UserError(f"model {loaded.model_id} has no tokenizer; give token ids instead")
    if getattr(tok, "chat_template", None):
        full = tok.apply_chat_template([{"role": "user", "content": context + "\n\n" + question}],
                                       tokenize=False, add_generation_prompt=True)
        head, tail = full.split(context + "\n\n" + question)
        ctx = loaded.encode(head + context)[:max_context_tokens]
        query = loaded.encode("\n\n" + question + tail)
    else:
        ctx = loaded.encode(context)[:max_context_tokens]
        query = loaded.encode("\n\nQuestion: " + question + "\nAnswer:")
    return Prompt(ctx, query, question, answer)


def canonical_spec_name(loaded: LoadedModel) -> LoadedModel:
    """SmolLM2 loaded from the package answers to the built-in spec name its profiles are keyed by."""
    if loaded.spec.name.lower() in SMOLLM2_NAMES:
        return replace(loaded, spec=replace(loaded.spec, name="smollm2-135m"))
    return loaded


def model_name_for(scenario_model: str) -> str:
    return "smollm2" if scenario_model.lower() in SMOLLM2_NAMES else scenario_model


class RealSession:
    """A loaded model, one context's KV store, and a KV server behind a link replaying a trace."""

    def __init__(
        self,
        scenario: Scenario,
        prompt_text: tuple[str, str, str],  # (context, question, reference answer)
        link_kind: str = "auto",
        device: str = "cpu",
        loaded: LoadedModel | None = None,
        store_root: Path | None = None,
        local_root: Path | None = None,
    ) -> None:
        self.loaded = canonical_spec_name(loaded or load_model(model_name_for(scenario.model), device=device))
        context, question, answer = prompt_text
        self.prompt = build_prompt(self.loaded, context, question, scenario.context_tokens, answer)
        self.scenario = scenario.with_(
            context_tokens=len(self.prompt.context_ids), query_tokens=len(self.prompt.query_ids)
        )
        self.store_root = store_root or cache_root() / "kv"
        self.store: KVStoreInfo = build_kv_store(self.loaded, self.prompt.context_ids, self.store_root)
        self.trace = get_trace(self.scenario.trace)
        self.world: World = build_world(self.scenario, trace=self.trace, spec=self.loaded.spec)
        self.local_dir: Path | None = None  # the local copy of the scenario's local chunks, if any
        self.local_written = False  # this session wrote it (else it was kept from an earlier one)
        if self.world.costs.local is not None:
            self._keep_local(local_root or cache_root() / "local-kv")
        self.link_kind = link_kind
        self.link_constants = "scenario"  # where the world's rtt/per-transfer/efficiency come from
        self._link_kind = ""  # the real link kind whose calibration the world uses, once the link is open
        self.sensor: EnergySensor | None = open_sensor(self.loaded.device)  # RAPL/NVML/tegrastats, if readable
        self._link: Any = None
        self._probe: LayerwisePrefill | None = None  # the speed probe's own cache, built on first use

    def _keep_local(self, root: Path) -> None:
        """Write the local chunks' copy from the KV store, unless an earlier session left one (untimed)."""
        local = self.world.costs.local
        assert local is not None
        spec, chunk = self.loaded.spec, self.scenario.chunk_tokens
        layout = LocalLayout(self.store.key, self.store.context_tokens, chunk, spec.num_layers, spec.num_kv_heads,
                             spec.head_dim, local.chunks)  # fmt: skip
        self.local_dir = root / f"{self.store.key}-c{chunk}"
        store: KVStore | None = None

        def cell(c: int, layer: int) -> tuple[Any, Any]:
            nonlocal store
            store = store or KVStore(self.store.path)
            start = c * chunk
            return store.cell(start, min(start + chunk, self.store.context_tokens), layer)

        self.local_written = ensure_local_kv(self.local_dir, layout, cell)

    # ---- link ----

    def _played_trace(self) -> Trace:
        """The trace as the link plays it: scaled and started at the scenario's offset."""
        t = self.world.link_trace
        offset = self.scenario.link.trace_offset_s
        return t if offset == 0 else t.slice(offset, offset + t.duration_s)

    def open(self) -> RealSession:
        from sparkv.executor.net.link import make_link

        self._link = make_link(self.link_kind, self._played_trace(), self.store_root).__enter__()
        if self.sensor is None:
            self.sensor = open_sensor(self.loaded.device)
        self._use_link_calibration(self._link.kind)
        return self

    def _use_link_calibration(self, kind: str) -> None:
        """Give the world the link constants the profile measured on this kind of link, if it has them.

        The real links (loopback pacing, a veth with tbf) have their own round trip, per-transfer cost and
        goodput, not the wireless defaults of `LinkConfig`; `sparkv profile --link KIND --update PROFILE`
        measures them. Without a calibration for `kind` the scenario's constants stay (and the Result says so).
        """
        cal = self.world.profile.link_for(kind)
        if cal is None:
            return
        measured = kind.split(" ")[0]
        names = ("rtt_s", "per_transfer_s", "efficiency", "receive_s_per_byte")
        changes = {k: float(cal[k]) for k in names if k in cal}
        self.scenario = self.scenario.with_(**changes)
        self._link_kind = measured  # the world's profile carries this kind's calibration (receive contention too)
        self.world = self._build(self.scenario)
        self.link_constants = f"calibrated on {measured} (profile {self.world.profile.name})"

    def _build(self, scenario: Scenario) -> World:
        """The world of `scenario` on this session's model, trace and (once known) link kind's calibration."""
        world = build_world(scenario, trace=self.trace, spec=self.loaded.spec)
        if self._link_kind:
            world = dataclasses.replace(world, profile=world.profile.on_link(self._link_kind))
        return world

    def link_description(self) -> str:
        link = self._link
        return f"{link.kind} ({link.reason})" if link is not None and link.reason else str(getattr(link, "kind", ""))

    def close(self) -> None:
        if self._link is not None:
            self._link.__exit__(None, None, None)
            self._link = None
        if self.sensor is not None:
            self.sensor.close()
            self.sensor = None

    def __enter__(self) -> RealSession:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- device speed ----

    def probe_speed(self, sweeps: int = 2) -> DeviceSpeed:
        """The device's compute speed now relative to the profile (see `sparkv.executor.model.speed`), on this
        session's context; the probe's cache is allocated once and reused."""
        if self._probe is None:
            self._probe = LayerwisePrefill(self.loaded, self.prompt.context_ids, self.prompt.query_ids,
                                           self.scenario.chunk_tokens, max_new_tokens=1)  # fmt: skip
        return probe_speed(self._probe, self.world.costs, sweeps)

    def world_at(self, factor: float) -> World:
        """This session's world with compute taking `factor` x the profiled time (the simulator's
        prediction of a run at a probed speed)."""
        return self._build(self.scenario.with_(availability=availability_spec(factor)))

    def world_with(self, **link: Any) -> World:
        """This session's world with some of its link settings changed (e.g. an injected fault)."""
        return self._build(self.scenario.with_(**link))

    # ---- one request ----

    def run(self, policy: Policy, max_new_tokens: int = 16, config: DriverConfig | None = None,
            speed_hint: float | None = None) -> Result:
        """One request under `policy`; `speed_hint` (a probe's factor, see `probe_speed`) is passed to the
        policy in its `RequestContext`."""
        if self._link is None:
            raise RuntimeError("RealSession.run needs an open session (use it as a context manager)")
        from sparkv.executor.net.client import KVClient

        link = self._link
        client = KVClient(link.server.host, link.server.port)
        prefill = LayerwisePrefill(self.loaded, self.prompt.context_ids, self.prompt.query_ids,
                                   self.scenario.chunk_tokens, max_new_tokens=max(1, max_new_tokens),
                                   attention=self.scenario.attention)  # fmt: skip
        ctx = RequestContext(self.world.request, self.world.spec, self.world.costs, 0.0, speed_hint,
                             EnergyRates.of(self.world.radio, self.world.profile.power))
        codec, key, chunk = self.scenario.codec, self.store.key, self.scenario.chunk_tokens

        spec, context_t = self.loaded.spec, self.store.context_tokens

        def cell_shape(c: int, layer: int) -> tuple[int, int, int]:  # what a cell of this context must be
            return (spec.num_kv_heads, min(chunk, context_t - c * chunk), spec.head_dim)

        def fetch(request_id: int, block: CellBlock, deadline_s: float) -> Iterator[CellArrival]:
            for cell in client.fetch(request_id, key, chunk, codec, block, deadline_s, expect=cell_shape):
                yield CellArrival(cell.chunk, cell.layer, cell.k, cell.v, cell.wire_bytes, cell.head_s)

        reader = None
        local = self.world.costs.local
        if local is not None and self.local_dir is not None:
            reader = LocalKVReader(self.local_dir, local.queue_depth)
        driver = RealDriver(ctx, policy, prefill, fetch, client.cancel, config, last_byte_s=client.last_byte_s,
                            read=reader.read if reader is not None else None, progress=client.progress)  # fmt: skip
        sensor = self.sensor
        link.start_clock()
        wall0 = time.perf_counter()
        try:
            out, measured_j, _ = measure_energy(sensor, driver.run)
        finally:
            if reader is not None:
                reader.close()
        wall_ttft = time.perf_counter() - wall0
        t_gen = time.perf_counter()
        stop = eos_token_ids(self.loaded)  # the answer ends at the model's end of turn, not at max_new_tokens
        tokens = [out.first_token, *prefill.generate(max_new_tokens - 1, stop)]
        gen_s = time.perf_counter() - t_gen
        client.close()
        tok = self.loaded.tokenizer
        text = tok.decode(tokens, skip_special_tokens=True) if tok is not None else ""
        energy = request_energy_j(out.spans, self.world.radio, self.world.profile.power, out.ttft_s)
        setup = {
            "scenario": self.scenario.to_dict(),
            "trace": {"name": self.world.trace.name, "source": self.world.trace.source,
                      "mean_bps": self.world.trace.mean_bps},
            "profile": self.world.profile.name,
            "model_id": self.loaded.model_id,
            "device": self.loaded.device,
            "torch_threads": torch.get_num_threads(),
        }
        extra = {
            "context": {"costs": self.world.costs.to_dict(), "speed_hint": speed_hint,
                        "energy": ctx.energy.to_dict() if ctx.energy is not None else None},
            "link": link.kind,
            "link_constants": self.link_constants,
            "energy_kind": "modelled from the measured timeline",
            # what a power sensor saw over the same interval (the whole machine or GPU, not the request alone)
            "energy_measured_j": measured_j,
            "energy_sensor": type(sensor).__name__ if sensor is not None else "none readable",
            "tokens": tokens,
            "text": text,
            "question": self.prompt.question,
            "reference_answer": self.prompt.reference_answer,
            "wall_ttft_s": wall_ttft,
            "generate_s": gen_s,
        }
        if self.local_dir is not None:
            extra["local_kv"] = {"path": str(self.local_dir), "written_by_this_session": self.local_written,
                                 "stored": "fp16, O_DIRECT reads (page cache bypassed)"}  # fmt: skip
        result = driver.engine.result("real", energy, setup, extra)
        result.extra["decision"].update(driver.handover_summary())
        return result


def max_cache_error(prefill: LayerwisePrefill, reference: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Largest absolute difference between the assembled context KV and a reference's."""
    worst = 0.0
    t = prefill.context_tokens
    for (k, v), (rk, rv) in zip(prefill.cache_tensors(), reference, strict=True):
        worst = max(worst, float((k[:, :t] - rk[:, :t]).abs().max()), float((v[:, :t] - rv[:, :t]).abs().max()))
    return worst

