"""The seed paper's comparison in the simulator: SparKV vs local prefill, CacheGen and the strong hybrid.

The setting (`PaperConfig`): roofline profiles of a laptop RTX GPU and a Jetson AGX Orin, 7-8B and 1B models,
1024-token chunks, a 4-bit KV codec on the wire, and local compute with block-sparse attention for the
policies that compute. Per (device, model, context, trace, bandwidth regime) one world:

- sparkv: the SparKV policy, local chunks with the sparse attention, the codec on the wire;
- local: local-only prefill with dense attention (the paper's "local prefill" baseline);
- stream: stream-only with the codec (CacheGen-like);
- cake: the bidirectional split with the same codec and the same sparse attention (the strong hybrid).

Weights at 4 bits do not enter the model: prefill of 1024-token chunks is compute-bound on both rooflines
(W4A16 kernels multiply at the fp16 rate), and the weights' memory footprint is not simulated. Rows carry
their scenario; `paper_summary` gives medians per (device, model) beside the paper's reported ranges.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from sparkv.analysis.evaluate import _trace, _ttft, calibrate_scale
from sparkv.core.config import Scenario
from sparkv.sim import build_world

PAPER_CLAIMS = {"local": "2.9-5.1x", "stream": "1.8-2.2x", "cake": "~1.3x"}  # SparKV's TTFT gains, the paper


@dataclass(frozen=True)
class PaperConfig:
    """What `sparkv evaluate --paper` runs; saved beside its results."""

    traces: list[str]
    devices: list[str] = field(default_factory=lambda: ["rtx-4060-laptop", "jetson-agx-orin-maxn"])
    models: list[str] = field(default_factory=lambda: ["llama-3.1-8b", "qwen2.5-7b", "llama-3.2-1b"])
    context_tokens: list[int] = field(default_factory=lambda: [8192, 16384, 32768])
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # stream-only / local-only (sparse)
    chunk_tokens: int = 1024
    codec: str = "int4-t32-s1-rot"
    attention: str = "block-sparse:tau=0.9,block=64,sink=1,local=1,dense_below=4"
    weight_bits: int = 4  # recorded; no effect on a compute-bound roofline prefill (see the module docstring)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paper_jobs(cfg: PaperConfig) -> list[dict[str, Any]]:
    return [{"trace": t, "device": d, "model": m, "context_tokens": c, "ratio": r, "cfg": cfg.to_dict()}
            for d in cfg.devices for m in cfg.models for c in cfg.context_tokens for t in cfg.traces
            for r in cfg.ratios]  # fmt: skip


def run_paper_job(job: dict[str, Any]) -> dict[str, Any]:
    """One scenario: the four TTFTs and SparKV's speed-ups over the other three."""
    cfg = PaperConfig(**job["cfg"])
    trace = _trace(job["trace"])
    scenario = Scenario(model=job["model"], device=job["device"], context_tokens=job["context_tokens"],
                        chunk_tokens=cfg.chunk_tokens, codec=cfg.codec, attention=cfg.attention,
                        trace=job["trace"])  # fmt: skip
    scale, how = calibrate_scale(scenario, trace, float(job["ratio"]))
    scenario = scenario.with_(bandwidth_scale=scale)
    world = build_world(scenario, trace=trace)
    dense = build_world(scenario.with_(attention="dense"), trace=trace)
    ttft = {name: _ttft(world, name) for name in ("sparkv", "cake", "stream")}
    ttft["local"] = _ttft(dense, "local")
    ttft["local_sparse"] = _ttft(world, "local")
    row: dict[str, Any] = {k: v for k, v in job.items() if k != "cfg"}
    row.update({"bandwidth_scale": scale, "calibration": how, "scenario": json.dumps(scenario.to_dict())})
    row.update({f"{k}_ttft_s": v for k, v in ttft.items()})
    for base in ("local", "stream", "cake", "local_sparse"):
        row[f"sparkv_vs_{base}"] = ttft[base] / ttft["sparkv"]
    return row


def paper_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median speed-ups per (device, model) and over all rows, with the paper's ranges beside them."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["device"], r["model"]), []).append(r)
    groups[("all", "all")] = rows
    out = []
    for (device, model), sel in groups.items():

        def med(key: str, sel: list[dict[str, Any]] = sel) -> float:
            vals = [float(r[key]) for r in sel if math.isfinite(float(r[key]))]
            return statistics.median(vals) if vals else math.nan

        out.append({"device": device, "model": model, "n": len(sel), "vs_local": med("sparkv_vs_local"),
                    "vs_stream": med("sparkv_vs_stream"), "vs_cake": med("sparkv_vs_cake"),
                    "vs_local_sparse": med("sparkv_vs_local_sparse"),
                    "sparkv_ttft_med_s": med("sparkv_ttft_s")})  # fmt: skip
    return out
