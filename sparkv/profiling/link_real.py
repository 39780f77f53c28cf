"""A `fetch(n_bytes) -> seconds` over the real KV server and link, for `link_calibration.calibrate_link`.

Starts the executor's KV server on a synthetic store behind a link of the given kind ("pacing" or
"netns") playing a constant rate, and fetches one cell sized to the requested bytes (raw float32
payload; the sizes the simulator charges are payload bytes, so framing overhead lands in the fitted
efficiency). Like `profiler`, it drives the executor, so the imports are inside the function.

A shaper's token bucket (tc tbf's burst, `executor.net.netns.BURST_S` of the rate) lets a transfer that
starts after an idle moment through faster than the rate. A request's transfers run back to back, so the
bucket is empty when each starts; the calibration measures that state: every timed fetch follows an
untimed one of DRAIN_S of the rate's bytes, which empties the bucket (interleaved sizes would otherwise
each find it in a different state, and the line would fit none of them).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

KEY = "linkcal000000000"
HEADS, HEAD_DIM, CONTEXT = 4, 64, 4096
DRAIN_S = 0.01  # seconds of the rate fetched (untimed) before each timed transfer: more than any burst
BYTES_PER_TOKEN = 2 * HEADS * HEAD_DIM * 4  # K and V, float32


@contextmanager
def real_fetcher(kind: str, rate_bps: float, pings: int = 20) -> Iterator[tuple[Callable[[int], float], float]]:
    """Yields (fetch, rtt_s): fetch(n) times one n-byte transfer (rounded to whole tokens, at most
    CONTEXT tokens); rtt_s is the median round trip of `pings` pings through the same link."""
    from sparkv.core.errors import UserError
    from sparkv.core.request import CellBlock
    from sparkv.executor.net.client import KVClient
    from sparkv.executor.net.link import make_link
    from sparkv.executor.net.netns import NetnsUnavailable
    from sparkv.executor.net.store import make_synthetic_store
    from sparkv.traces.synthetic import constant

    with tempfile.TemporaryDirectory(prefix="sparkv-linkcal-") as tmp:
        root = Path(tmp)
        make_synthetic_store(root, KEY, num_layers=1, num_kv_heads=HEADS, context_tokens=CONTEXT, head_dim=HEAD_DIM)
        try:
            link = make_link(kind, constant(rate_bps, 24 * 3600.0), root)
        except NetnsUnavailable as exc:
            raise UserError(f"netns link unavailable here ({exc}); use --link pacing") from exc
        with link, KVClient(link.server.host, link.server.port) as client:
            rtt_s = statistics.median(client.ping() for _ in range(pings))
            counter = iter(range(1, 1 << 30))

            drain_tokens = max(1, min(CONTEXT, round(DRAIN_S * rate_bps / BYTES_PER_TOKEN)))

            def transfer(tokens: int) -> None:
                for _ in client.fetch(next(counter), KEY, tokens, "raw", CellBlock(0, 1, 0, 1)):
                    pass

            def fetch(n_bytes: int) -> float:
                tokens = max(1, min(CONTEXT, round(n_bytes / BYTES_PER_TOKEN)))
                link.start_clock(time.perf_counter())
                transfer(drain_tokens)  # the bucket is empty now, as it is inside a request
                t0 = time.perf_counter()
                transfer(tokens)
                return time.perf_counter() - t0

            yield fetch, rtt_s
