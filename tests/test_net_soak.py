"""A short soak of the KV server: every request ends with the reference KV despite kills, corrupt frames
and stalls, with no hang and no unexpected server exit."""

from __future__ import annotations

from sparkv.executor.net.soak import SoakConfig, run_soak


def test_a_short_soak_loses_nothing() -> None:
    report = run_soak(SoakConfig(clients=12, requests=6, corrupt_rate=0.05, stall_rate=0.1, stall_s=0.6,
                                 kill_every_s=1.0, request_timeout_s=60.0))
    assert report.requests == 72 and report.ok(), report.to_dict()
    assert report.faulted_requests > 0 and report.wrong == 0 and report.hangs == 0
