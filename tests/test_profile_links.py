"""Link calibrations by kind: each real link (pacing, netns) keeps its own constants and receive contention."""

from __future__ import annotations

import dataclasses

from sparkv.cost_models.link_calibration import apply_calibration, fit_link
from sparkv.cost_models.profiles import load_profile
from sparkv.profiling.contention import ReceiveSlowdown, apply_slowdown

SIZES = (16_384, 65_536, 262_144, 1_048_576)


def calibration(rate_bps: float, fixed_s: float, rtt_s: float):  # type: ignore[no-untyped-def]
    return fit_link([(n, fixed_s + n / rate_bps) for n in SIZES], rate_bps, rtt_s)


def slowdown(kind: str, ratio: float) -> ReceiveSlowdown:
    return ReceiveSlowdown(ratio, 0.01, 0.01 * ratio, 20, 5e6, kind, 5e6, "fp16", 256, 30)


def test_each_link_kind_keeps_its_own_calibration() -> None:
    base = dataclasses.replace(load_profile("analytic-cpu-2core"), link={}, links={})
    p = apply_calibration(base, calibration(5e6, 0.001, 0.0002), kind="pacing")
    p = apply_slowdown(p, slowdown("pacing", 1.06))
    p = apply_calibration(p, calibration(5e6, 0.004, 0.0015), kind="netns")
    p = apply_slowdown(p, slowdown("netns", 1.45))
    assert set(p.links) == {"pacing", "netns"}
    assert p.link["kind"] == "pacing" and p.link["compute_slowdown"] == 1.06  # the simulator's default
    netns = p.link_for("netns")
    assert netns is not None and netns["compute_slowdown"] == 1.45 and netns["rtt_s"] == 0.0015
    assert p.link_for("pacing (network namespaces unavailable)") == p.links["pacing"]
    from sparkv.executor.net.link import NetnsLink, PacingLink

    # the names the executor's links report find their calibrations (a real session looks them up so)
    assert p.link_for(NetnsLink.kind) == p.links["netns"] and p.link_for(PacingLink.kind) == p.links["pacing"]
    assert p.on_link("netns").link["compute_slowdown"] == 1.45
    assert p.link_for("wifi") is None and p.on_link("wifi") is p
    loaded = type(p).from_dict(p.to_dict())
    assert loaded.links == p.links and loaded.link == p.link


def test_a_profile_of_one_kind_alone_still_answers_for_it() -> None:
    base = dataclasses.replace(load_profile("analytic-cpu-2core"), link={}, links={})
    p = apply_calibration(base, calibration(5e6, 0.004, 0.0015), kind="netns")
    assert p.link["kind"] == "netns" and p.link_for("netns") == p.links["netns"]
    assert p.link_for("pacing") is None


def test_link_samples_stay_the_default_links_and_every_kind_keeps_its_own() -> None:
    base = dataclasses.replace(load_profile("analytic-cpu-2core"), link={}, links={}, measurements={})
    pacing = calibration(5e6, 0.001, 0.0002)
    netns = calibration(2.5e6, 0.004, 0.0015)
    p = apply_calibration(base, pacing, kind="pacing")
    p = apply_calibration(p, netns, kind="netns")
    assert p.measurements["link_samples"] == pacing.samples  # the simulator's default link is pacing's
    assert p.measurements["link_samples_by_kind"] == {"pacing": pacing.samples, "netns": netns.samples}
    old_form = dataclasses.replace(base, link={**pacing.to_link_dict(), "kind": "pacing"},
                                   measurements={"link_samples": pacing.samples})  # fmt: skip
    q = apply_calibration(old_form, netns, kind="netns")
    assert q.measurements["link_samples_by_kind"]["pacing"] == pacing.samples  # carried over, not lost
