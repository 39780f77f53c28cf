"""HillInfer studies on saved data: how well quantised key scores rank tokens against fp16 ones, the host
scoring cost fitted to real runs, and the host/drive split against a brute-force search of the same costs."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import nnls

from sparkv.core.keyplane import plane_span, runs
from sparkv.cost_models.smartssd import HostScoring, SmartSSDProfile
from sparkv.cost_models.storage import StorageProfile
from sparkv.executor.model.keyscore import (
    dequantize_keys,
    quantize_keys,
    quantize_query,
    token_scores,
)


def topk_overlap(keys: np.ndarray, queries: np.ndarray, kv_heads: int, bits: int, fraction: float = 0.1,
                 scaling: float = 1.0) -> dict[str, float]:  # fmt: skip
    """keys float [T, d] (fp16 values), queries float [n, H, hd]: mean |top(quantised) & top(fp16)| / |top|
    over the queries, top = the highest-scoring `fraction` of the tokens (INT8 query with quantised keys vs
    the fp32 query with fp16 keys)."""
    t, d = keys.shape
    deq = dequantize_keys(quantize_keys(keys.reshape(t, 1, d), bits), 1, d, bits)
    k = max(1, round(fraction * t))
    overlaps = []
    for q in queries:
        ref = token_scores(keys.astype(np.float32), q.astype(np.float32), kv_heads, scaling)
        got = token_scores(deq, quantize_query(q), kv_heads, scaling)
        a = set(np.argpartition(-ref, k - 1)[:k].tolist())
        b = set(np.argpartition(-got, k - 1)[:k].tolist())
        overlaps.append(len(a & b) / k)
    arr = np.asarray(overlaps)
    return {"overlap_mean": float(arr.mean()), "overlap_min": float(arr.min()), "queries": float(arr.size),
            "top_tokens": float(k)}  # fmt: skip


MIN_TOKEN_SPREAD = 0.1  # the token counts' coefficient of variation below which per-token costs are not fitted


def fit_host_scoring(samples: list[dict[str, Any]], per_token_s: float | None = None) -> HostScoring:
    """The host's scoring cost from real scoring phases (`Result.extra["scoring_samples"]`, the first step left
    out as warm-up): hot seconds = hot fixed + per token x hot tokens; cpu seconds = cpu fixed + per token x
    tokens. With `per_token_s` (the kernel measured on the day) only the fixed parts are fitted (medians of
    the rest); without it, non-negative least squares, which needs the token counts to vary enough to tell
    the per-token cost from the fixed ones (a ValueError when they do not)."""
    rows, ys = [], []
    for s in samples:
        if s["step"] == 0:
            continue
        rows.append([1.0, 0.0, float(s["hot_tokens"])])
        ys.append(float(s["hot_s"]))
        if s["cpu_tokens"]:
            rows.append([0.0, 1.0, float(s["cpu_tokens"])])
            ys.append(float(s["cpu_s"]))
    if len(rows) < 3:
        raise ValueError(f"fitting the host's scoring cost needs at least 3 samples beyond step 0, got {len(rows)}")
    x, y = np.asarray(rows), np.asarray(ys)
    if per_token_s is not None:
        rest = y - x[:, 2] * per_token_s
        hot, cpu = rest[x[:, 0] == 1.0], rest[x[:, 1] == 1.0]
        return HostScoring(hot_fixed_s=max(float(np.median(hot)), 0.0),
                           cpu_fixed_s=max(float(np.median(cpu)), 0.0) if cpu.size else 0.0,
                           per_token_s=per_token_s,
                           source=f"kernel measured on the day ({per_token_s * 1e9:.1f} ns/token), fixed parts the "
                                  f"median rest of {len(ys)} real scoring phases")  # fmt: skip
    spread = max(float(np.std(x[m, 2]) / max(np.mean(x[m, 2]), 1.0)) for m in (x[:, 0] == 1.0, x[:, 1] == 1.0)
                 if m.any())  # fmt: skip
    coef, _ = nnls(x, y)
    if spread < MIN_TOKEN_SPREAD or coef[2] <= 0.0:
        raise ValueError(f"the per-token scoring cost is not identifiable from {len(ys)} phases (token counts "
                         "barely vary): give the kernel's measured cost")  # fmt: skip
    return HostScoring(hot_fixed_s=float(coef[0]), cpu_fixed_s=float(coef[1]), per_token_s=float(coef[2]),
                       source=f"non-negative least squares over {len(ys)} real scoring phases")  # fmt: skip


def phase_s(cpu_groups: tuple[int, ...], storage_groups: int, hot_groups: int, group_tokens: int, record_bytes: int,
            host: HostScoring, storage: StorageProfile, queue_depth: int, ssd: SmartSSDProfile, macs: int,
            result_bytes: int) -> float:  # fmt: skip
    """One scoring phase's seconds with the world's costs (as the simulator charges it)."""
    h1 = host.hot_s(hot_groups * group_tokens)
    c1 = h1
    if cpu_groups:
        sizes = [plane_span(first, n, record_bytes)[1] for first, n in runs(cpu_groups)]
        c1 = max(h1, storage.batch_s(sizes, queue_depth)) + host.cpu_s(len(cpu_groups) * group_tokens)
    ssd_s = ssd.score_s(storage_groups * group_tokens, record_bytes / group_tokens, macs, result_bytes)
    return max(c1, ssd_s)


def brute_force_split(cold: tuple[int, ...], hot_groups: int, group_tokens: int, record_bytes: int, host: HostScoring,
                      storage: StorageProfile, queue_depth: int, ssd: SmartSSDProfile, macs: int, result_per_group: int,
                      select_groups: int, chosen_cpu: int) -> dict[str, float]:  # fmt: skip
    """Every host share n = 0..M of the cold groups (the newest n to the host, as the policy assigns them):
    the best phase time against the latency model's choice `chosen_cpu`."""
    m = len(cold)

    def cost(n: int) -> float:
        rest = m - n
        return phase_s(cold[m - n :] if n else (), rest, hot_groups, group_tokens, record_bytes, host, storage,
                       queue_depth, ssd, macs, result_per_group * min(rest, select_groups))  # fmt: skip

    times = [cost(n) for n in range(m + 1)]
    best = int(np.argmin(times))
    return {"best_cpu_groups": float(best), "best_s": times[best], "chosen_cpu_groups": float(chosen_cpu),
            "chosen_s": times[chosen_cpu], "excess": times[chosen_cpu] / times[best] - 1.0}  # fmt: skip
