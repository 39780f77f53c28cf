"""The simulated world of per-head eviction (AERP, H2O): the same policy and engine as the real world, a
SimPy compute lane, and the attention each layer gives delivered from an explicit source.

Attention sources: `RecordedAttention`, the per-head weights a real run delivered (validation: the same
weights in give the same decisions out, so bytes and evictions are equal step for step), and
`SyntheticAttention`, a modelled one (labelled synthetic): per layer and KV head a fixed log-importance per
token plus a recency boost, softmax over the tokens the head keeps (and the current one). Nothing is read
from disk: the kept cache is the on-chip memory; a layer costs `HeadDecodeCompute.layer_s` of its entries.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import simpy

from sparkv.core.decode import DecodeGeometry, DecodeScenario, HeadAttention, LayerPlan
from sparkv.core.model import ModelSpec
from sparkv.core.result import Result
from sparkv.cost_models.kelle import HeadDecodeCompute
from sparkv.engine.decode import DecodeEngine
from sparkv.policies.decode.base import DecodeContext
from sparkv.policies.decode.kelle import HeadBudget, HeadPrefill


class AttentionSource(Protocol):
    source: str

    def weights(self, step: int, layer: int, plan: LayerPlan, current: int) -> tuple[np.ndarray, ...]: ...


@dataclass
class RecordedAttention:
    """Per-head weights recorded from a real run, replayed as they were delivered."""

    recorded: dict[tuple[int, int], tuple[np.ndarray, ...]]
    source: str = "recorded"

    def weights(self, step: int, layer: int, plan: LayerPlan, current: int) -> tuple[np.ndarray, ...]:
        got = self.recorded.get((step, layer))
        if got is None:
            raise ValueError(f"recorded attention has no step {step} layer {layer}")
        return got


@dataclass
class SyntheticAttention:
    """Modelled attention: log-importance ~ N(0, sigma) per (layer, head, token), + recency boost; softmax."""

    num_layers: int
    kv_heads: int
    tokens: int  # context + steps
    seed: int = 0
    sigma: float = 1.5
    recency: float = 2.0
    recency_tokens: float = 32.0
    source: str = ""
    _logit: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._logit = rng.normal(0.0, self.sigma, size=(self.num_layers, self.kv_heads, self.tokens))
        self._logit[:, :, :4] += 3.0  # the first tokens draw attention (sinks), as real models show
        self.source = (f"synthetic:seed={self.seed},sigma={self.sigma:g},recency={self.recency:g},"
                       f"recency_tokens={self.recency_tokens:g}")  # fmt: skip

    def weights(self, step: int, layer: int, plan: LayerPlan, current: int) -> tuple[np.ndarray, ...]:
        out = []
        for h in range(self.kv_heads):
            toks = np.append(np.asarray(plan.heads[h] if plan.heads else plan.attend, dtype=np.int64), current)
            logit = self._logit[layer, h, toks] + self.recency * np.exp(-(current - toks) / self.recency_tokens)
            p = np.exp(logit - logit.max())
            out.append(p / p.sum() * 3.0)  # summed over the query heads of a group (3 for SmolLM2)
        return tuple(out)

    def prefill(self, context_tokens: int, spec: ModelSpec) -> HeadPrefill:
        """Prefill importance of the same model: each token's mean weight over all prefill queries x queries."""
        imp = [np.exp(self._logit[layer, :, :context_tokens]) * np.linspace(1.0, 0.05, context_tokens)[None]
               for layer in range(self.num_layers)]  # fmt: skip
        return HeadPrefill(spec.num_kv_heads, spec.head_dim, spec.hidden_size, 2, imp, source=self.source)


def run_kelle_sim(
    scenario: DecodeScenario,
    spec: ModelSpec,
    geometry: DecodeGeometry,
    prefill: HeadPrefill,
    attention: AttentionSource,
    compute: HeadDecodeCompute,
    policy: HeadBudget,
    log: bool = False,
) -> tuple[Result, DecodeEngine]:
    """One simulated decode run of a per-head policy."""
    ctx = DecodeContext(geometry=geometry, model=spec.name, tiers=("edram",), prefill=prefill)
    engine = DecodeEngine(ctx, policy, scenario.max_request_bytes, record_spans=True, record_log=log)
    env = simpy.Environment()
    kv_heads = prefill.kv_heads

    def run() -> Generator[simpy.events.Event, Any, None]:
        for step in range(scenario.steps):
            engine.step_begin(step, env.now)
            current = scenario.context_tokens + step
            for layer in range(geometry.num_layers):
                plan, _ = engine.plan(engine.scores_for(step, layer, env.now))
                entries = sum(len(h) for h in plan.heads) + kv_heads  # + the current token in every head
                c0 = env.now
                yield env.timeout(compute.layer_s(entries, len(plan.recompute)))
                weights = attention.weights(step, layer, plan, current)
                engine.head_attention(HeadAttention(env.now, step, layer, weights))
                engine.layer_done(step, layer, c0, env.now)
            yield env.timeout(compute.step_fixed_s)
            engine.step_end(step, env.now)

    env.process(run())
    env.run()
    result = Result(world="sim", policy=policy.name, ttft_s=0.0, energy_j={}, spans=[],
                    config={"decode_scenario": scenario.to_dict(), "model_spec": spec.to_dict(),
                            "geometry": geometry.to_dict(), "policy": {"name": policy.name, **policy.config()},
                            "compute": compute.to_dict(), "attention": attention.source, "prefill": prefill.source},
                    decode=engine.summary().to_dict())  # fmt: skip
    return result, engine
