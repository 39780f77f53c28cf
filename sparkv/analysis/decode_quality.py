"""Selection quality from score traces: how much of the exact top-M a policy's predicted selection recovers."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparkv.policies.decode.base import top_groups
from sparkv.traces.scores import ScoreTrace


def topm_recall(trace: ScoreTrace, select_groups: int, sink_groups: int) -> dict[str, Any]:
    """Mean over (step, layer) of |predicted top ∩ exact top| / |exact top| (sinks excluded from both), and
    the exact attention mass the predicted selection covers relative to the exact top's."""
    recalls, mass = [], []
    for s in range(trace.steps):
        for layer in range(trace.num_layers):
            pred, exact = trace.get("predicted", s, layer), trace.get("exact", s, layer)
            want = set(top_groups(exact, sink_groups, select_groups))
            if not want:
                continue
            got = top_groups(pred, sink_groups, select_groups)
            recalls.append(len(want.intersection(got)) / len(want))
            best = float(exact[sorted(want)].sum())
            mass.append(float(exact[list(got)].sum()) / best if best > 0 else 1.0)
    arr = np.asarray(recalls)
    by_layer = np.asarray(recalls).reshape(trace.steps, trace.num_layers).mean(axis=0) if len(recalls) == (
        trace.steps * trace.num_layers) else np.asarray([])  # fmt: skip
    return {
        "recall_mean": float(arr.mean()) if arr.size else 1.0,
        "recall_p10": float(np.quantile(arr, 0.1)) if arr.size else 1.0,
        "mass_ratio_mean": float(np.mean(mass)) if mass else 1.0,
        "recall_by_layer": [float(v) for v in by_layer],
    }
