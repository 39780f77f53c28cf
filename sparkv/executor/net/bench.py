"""Measure the KV link: loopback throughput, goodput through each link kind vs the configured rate, and
how long a cancel takes to end a fetch. `python -m sparkv.executor.net.bench [--json FILE]`.

Numbers are medians over repeats on this machine, side by side in one run; the raw samples go to --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sparkv.core.request import CellBlock
from sparkv.executor.net.client import KVClient
from sparkv.executor.net.launch import start_server
from sparkv.executor.net.link import Link, make_link
from sparkv.executor.net.netns import NetnsUnavailable
from sparkv.executor.net.store import make_synthetic_store

KEY, S = "bench0000000000", 512  # 16 chunks x 8 layers; one cell (K+V, float32) is 1 MiB
RATES_BPS = (125e3, 1e6, 5e6, 20e6)


def _store(root: Path) -> None:
    make_synthetic_store(root, KEY, num_layers=8, num_kv_heads=4, context_tokens=8192, head_dim=64)


def _fetch_bytes(client: KVClient, rid: int, block: CellBlock, codec: str = "raw") -> int:
    return sum(cell.wire_bytes for cell in client.fetch(rid, KEY, S, codec, block))


def _cancel_s(client: KVClient, rid: int) -> float:
    """Seconds from cancel() to the end of the iterator, cancelling right after the first cell."""
    cells = client.fetch(rid, KEY, S, "raw", CellBlock(0, 16, 0, 8))
    next(cells)
    t0 = time.perf_counter()
    client.cancel(rid)
    for _ in cells:
        pass
    return time.perf_counter() - t0


def loopback(root: Path, repeats: int) -> dict[str, Any]:
    """Unshaped server on 127.0.0.1: raw and int8 throughput, cancel latency."""
    out: dict[str, Any] = {}
    with start_server(root) as server, KVClient(server.host, server.port) as client:
        _fetch_bytes(client, 0, CellBlock(0, 2, 0, 8))  # warm up: page cache, codec imports
        for codec in ("raw", "int8"):
            rates = []
            for i in range(repeats):
                t0 = time.perf_counter()
                n = _fetch_bytes(client, 100 + i, CellBlock(0, 16, 0, 8), codec)
                rates.append(n / (time.perf_counter() - t0))
            out[f"{codec}_Bps"] = rates
        out["cancel_s"] = [_cancel_s(client, 200 + i) for i in range(4 * repeats)]
    return out


def shaped(kind: str, root: Path, rate_bps: float, repeats: int, seconds: float) -> dict[str, Any]:
    """Goodput through a link at a constant rate, and cancel latency on it."""
    from sparkv.traces.synthetic import constant

    cells = max(1, min(128, round(rate_bps * seconds / (1 << 20))))
    block = CellBlock(0, min(cells, 16), 0, -(-cells // 16))
    link: Link
    with make_link(kind, constant(rate_bps, 3600.0), root) as link, \
            KVClient(link.server.host, link.server.port) as client:
        client.ping()
        ratios = []
        for i in range(repeats):
            t0 = time.perf_counter()
            link.start_clock(t0)
            n = _fetch_bytes(client, 1 + i, block)
            ratios.append(n / (time.perf_counter() - t0) / rate_bps)
        cancels = [_cancel_s(client, 100 + i) for i in range(repeats)]
        return {"kind": link.kind, "rate_Bps": rate_bps, "goodput_ratio": ratios, "cancel_s": cancels,
                "drops": client.drops}


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparkv.executor.net.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0, help="about how long each shaped transfer lasts")
    ap.add_argument("--kinds", default="pacing,netns")
    ap.add_argument("--json", type=Path, help="write every sample here")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"machine": platform.platform(), "cpu": platform.processor(), "shaped": []}
    with tempfile.TemporaryDirectory(prefix="sparkv-bench-") as tmp:
        root = Path(tmp)
        _store(root)
        lo = loopback(root, args.repeats)
        results["loopback"] = lo
        print(f"loopback raw {_med(lo['raw_Bps']) / 1e6:.0f} MB/s, int8 {_med(lo['int8_Bps']) / 1e6:.0f} MB/s "
              f"(wire); cancel median {_med(lo['cancel_s']) * 1e3:.1f} ms, max {max(lo['cancel_s']) * 1e3:.1f} ms")
        for kind in args.kinds.split(","):
            for rate in RATES_BPS:
                try:
                    r = shaped(kind, root, rate, args.repeats, args.seconds)
                except NetnsUnavailable as exc:
                    print(f"{kind}: unavailable ({exc})")
                    break
                results["shaped"].append(r)
                print(f"{r['kind']:>9} {rate / 1e6:7.3f} MB/s: goodput/configured median "
                      f"{_med(r['goodput_ratio']):.3f} (min {min(r['goodput_ratio']):.3f}, max "
                      f"{max(r['goodput_ratio']):.3f}); cancel median {_med(r['cancel_s']) * 1e3:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
