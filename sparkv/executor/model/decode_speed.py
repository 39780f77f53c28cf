"""How fast this machine runs a decode step right now: a short probe of a policy's own decode work.

A decode compute model is fitted to a calibration run; the measured run comes later, and on a shared VM the
machine's speed moves in between (per-layer compute 24.5 ms in one calibration, 31.2 ms five minutes later).
`DecodeSpeedProbe` times a fixed piece of the work the policy's steps do, with nothing read from disk: one
token through `layers` of the real model's layers, each attending to as many groups as the policy's plans
attend (held in page-aligned pools as a real run holds them, one pool per layer), plus the policy's scoring
(KVSwap's low-rank metadata scores, the oracle's exact scores, or HillInfer's INT8/INT4 host kernel over as
many tokens as its host scores per layer). The median of `sweeps` is one probe; probed before and after a
run and compared with the same probe around the calibration run, it gives the factor the simulated compute
is scaled by. Probes never come from the measured run itself.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from sparkv.engine.decode import DecodeEngine
from sparkv.executor.model.decode import CacheBuild, SlotPool, SparseDecoder
from sparkv.executor.model.keyscore import quantize_keys, quantize_query, score_records
from sparkv.executor.model.kvfile import KVLayout
from sparkv.executor.model.models import LoadedModel

SCORINGS = ("none", "predicted", "exact", "host-kernel")


@dataclass(frozen=True)
class ProbeShape:
    """What one probe sweep computes."""

    attended_groups: int  # groups each probed layer attends (the policy's median per layer)
    scoring: str  # "none", "predicted" (metadata scores), "exact" (attention mass) or "host-kernel" (quantised)
    scored_tokens: int = 0  # host-kernel only: tokens scored per layer (the policy's median hot + host share)
    layers: int = 8  # layers per sweep (the first `layers` of the model)
    sweeps: int = 5  # sweeps per probe; a probe is their median

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"probe scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.attended_groups < 0 or self.scored_tokens < 0:
            raise ValueError(f"probe sizes must be >= 0, got {self.attended_groups} groups and "
                             f"{self.scored_tokens} tokens")
        if self.layers < 1 or self.sweeps < 1:
            raise ValueError(f"probe layers and sweeps must be >= 1, got {self.layers} and {self.sweeps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shape_of_run(engine: DecodeEngine, scoring: str, scoring_samples: list[dict[str, Any]] | None = None,
                 layers: int = 8, sweeps: int = 5) -> ProbeShape:  # fmt: skip
    """The probe shape of a run logged by `engine` (`record_log`): the median groups its plans attend, and,
    for the host kernel, the median tokens its host scored per layer (`scoring_samples`)."""
    attended = [len(p.attend) for kind, p in engine.log if kind == "plan"]
    if not attended:
        raise ValueError("the run logged no plans: run it with log=True")
    tokens = 0
    if scoring == "host-kernel" and scoring_samples:
        tokens = int(statistics.median(s["hot_tokens"] + s["cpu_tokens"] for s in scoring_samples))
    layers = min(layers, engine.geo.num_layers)
    return ProbeShape(int(statistics.median(attended)), scoring, tokens, layers, sweeps)


class DecodeSpeedProbe:
    """Seconds of one probe sweep (median of the shape's sweeps), on the real model and the context's keys.

    Built once per shape (pools filled, records quantised: untimed); each call is one probe. Nothing it does
    changes the cache or the files a run uses."""

    def __init__(self, loaded: LoadedModel, layout: KVLayout, cache: CacheBuild, context_tokens: int,
                 token: int, shape: ProbeShape, bits: int = 8) -> None:  # fmt: skip
        self.shape, self.pos, self.token, self.bits = shape, context_tokens, token, bits
        self.decoder = SparseDecoder(loaded, layout, cache)
        self.full_groups = context_tokens // layout.group_tokens
        groups = tuple(range(min(shape.attended_groups, self.full_groups)))
        self.attend = groups
        self.pools = []
        for layer in range(shape.layers):  # one pool per layer, as a run holds them (not one warm in cache)
            pool = SlotPool(layout, capacity=max(1, len(groups)))
            pool.reserve(len(groups))
            for g in groups:
                pool.view(g)
            k = cache.keys[layer][:, : len(groups) * layout.group_tokens]  # [KV, n*G, hd]
            kv = k.transpose(0, 1).reshape(len(groups), layout.group_tokens, layout.kv_heads, layout.head_dim)
            for g in groups:  # real keys as K and V: attention costs the same whatever the values
                pool.tensor[pool.slot_of[g], 0] = kv[g].to(torch.float16)
                pool.tensor[pool.slot_of[g], 1] = kv[g].to(torch.float16)
            self.pools.append(pool)
        self.records: np.ndarray | None = None
        self.query: np.ndarray | None = None
        if shape.scoring == "host-kernel" and shape.scored_tokens:
            g = layout.group_tokens
            n = max(1, min(shape.scored_tokens, self.full_groups * g) // g)
            keys = cache.keys[0][:, : n * g].transpose(0, 1).reshape(n, g, -1).numpy()
            self.records = quantize_keys(keys, bits)
            rng = np.random.default_rng(0)
            self.query = quantize_query(rng.normal(size=(loaded.spec.num_attention_heads, loaded.spec.head_dim)))

    def sweep_s(self) -> float:
        """Seconds of one sweep: one token through the probed layers, with the shape's scoring per layer."""
        dec, pos, shape = self.decoder, self.pos, self.shape
        lay = dec.layout
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = dec.math.embed(torch.tensor([self.token]), pos)  # [1, D]
            for layer in range(shape.layers):
                if shape.scoring == "predicted":
                    dec.predicted_scores(min(layer + 1, shape.layers - 1), x, pos, self.full_groups)
                elif shape.scoring == "exact":
                    q = dec.math.query(layer, x, pos)
                    dec.exact_scores(layer, q, self.full_groups)
                elif self.records is not None and self.query is not None:
                    score_records(self.records, self.query, lay.group_tokens, lay.kv_heads, self.bits, 1.0)
                x = dec.layer(layer, x, pos, self.pools[layer], self.attend)
            elapsed = time.perf_counter() - t0
        for layer in range(shape.layers):  # the tail grew by this sweep's token: back to the context's
            dec.tail_k[layer] = dec.tail_k[layer][:, :-1]
            dec.tail_v[layer] = dec.tail_v[layer][:, :-1]
        return elapsed

    def __call__(self) -> ProbeSample:
        times = [self.sweep_s() for _ in range(self.shape.sweeps)]
        return ProbeSample(statistics.median(times), tuple(times), time.time())


@dataclass(frozen=True)
class ProbeSample:
    """One probe: the median sweep and every sweep (seconds), and when it was taken (Unix seconds)."""

    seconds: float
    sweeps_s: tuple[float, ...]
    at_unix_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "sweeps_s": list(self.sweeps_s), "at_unix_s": self.at_unix_s}
