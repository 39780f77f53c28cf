"""`sparkv profile`: measure the real model on this machine and write a device profile JSON.

    sparkv profile                          # SmolLM2 on this CPU -> ./cpu-smollm2.json (a few minutes)
    sparkv profile --torch-device cuda      # the same on an NVIDIA GPU
    sparkv profile --quick --out /tmp/p.json   # a tiny random model, seconds (for tests)
    sparkv profile --link pacing --update cpu-smollm2.json   # calibrate the link into an existing profile
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from sparkv.commands.common import deprecated_alias
from sparkv.commands.values import nonneg_float, nonneg_int, pos_float, pos_int
from sparkv.core.errors import UserError
from sparkv.cost_models.profiles import DeviceProfile

CONTENTION_MULTIPLES = (1.0, 4.0, 16.0)  # x the link rate: where receive contention is measured by default
RECEIVE_MULTIPLES = (4.0, 8.0)  # x the link rate: the further rates the link is fitted at by default


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure compute, install and link costs on this machine; write a profile")
    p.add_argument("--model", default="smollm2", help="model to load: smollm2 or a Hugging Face directory")
    p.add_argument("--torch-device", dest="torch_device", default="cpu", help="torch device: cpu or cuda[:n]")
    p.add_argument("--device", dest="torch_device", action=deprecated_alias("--torch-device"),
                   help=argparse.SUPPRESS)  # elsewhere --device names a device profile
    p.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--threads", type=nonneg_int, default=0, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--name", help="profile name (default <cpu|cuda>-<model>)")
    p.add_argument("--out", type=Path, help="output JSON (default ./<name>.json)")
    p.add_argument("--quick", action="store_true", help="tiny random model and a small grid (seconds)")
    p.add_argument("--max-context", type=pos_int, help="longest context measured (default 8192)")
    p.add_argument("--repeats", type=pos_int, help="timed commands per point and pass (default 8)")
    p.add_argument("--codecs", help="comma-separated codecs whose install cost to measure")
    p.add_argument(
        "--chunk-sizes",
        help="comma-separated chunk sizes (tokens) to measure; add the sizes your runs use "
        "(default 32,64,128,256,384,512,768,1024)",
    )
    p.add_argument("--passes", type=pos_int, help="passes over all points, at different times (default 3)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for other processes to go quiet")
    p.add_argument("--link", choices=("pacing", "netns"), help="calibrate the link with the real KV server")
    p.add_argument("--update", type=Path, help="with --link: add the calibration to this existing profile")
    p.add_argument("--link-rate-mbps", type=pos_float, default=20.0, help="shaped rate for link calibration")
    p.add_argument("--link-rtt-ms", type=nonneg_float, help="round trip to subtract (default: measured with pings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--contention-rates-mbps", metavar="LIST",
                   help="with --link: shaped rates (Mbit/s, comma-separated) to measure receive contention at "
                   "(default: the link rate x1, x4, x16; one rate gives a single factor)")
    p.add_argument("--receive-rates-mbps", metavar="LIST",
                   help="with --link: further shaped rates (Mbit/s, comma-separated) to fit the link at, separating "
                   "the wire's efficiency from the receive path's per-byte cost (default: the link rate x4, x8; "
                   "'none' skips it)")
    p.add_argument("--no-contention", action="store_true",
                   help="with --link: skip measuring how much slower compute runs while cells arrive")
    p.add_argument("--disk", type=Path, metavar="PATH",
                   help="measure O_DIRECT reads of the disk holding PATH into a storage profile (--out)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.disk:
        from sparkv.profiling.disk import disk_command

        return disk_command(args.disk, args.out)
    from sparkv.cost_models.profiles import load_profile
    from sparkv.profiling.profile_build import QUICK, run_profile, summary_lines
    from sparkv.profiling.profiler import ProfileConfig

    if args.update and not args.link:
        raise UserError("--update needs --link (it adds a link calibration to an existing profile)")
    if args.link and args.update:
        profile = load_profile(str(args.update))
        profile = _calibrate(profile, args)
        profile.save(args.update)
        print(f"wrote link calibration into {args.update}: {json.dumps(profile.link)}")
        return 0
    cfg = QUICK if args.quick else ProfileConfig(model=args.model)
    changes: dict[str, object] = {"device": args.torch_device, "dtype": args.dtype, "threads": args.threads}
    if args.max_context:
        changes["max_context"] = args.max_context
    if args.repeats:
        changes["repeats"] = args.repeats
    if args.codecs:
        changes["codecs"] = tuple(c.strip() for c in args.codecs.split(",") if c.strip())
    if args.passes:
        changes["passes"] = args.passes
    if args.chunk_sizes:
        try:
            changes["chunk_sizes"] = tuple(sorted({int(c) for c in args.chunk_sizes.split(",") if c.strip()}))
        except ValueError as exc:
            raise UserError(f"--chunk-sizes: expected comma-separated integers, got {args.chunk_sizes!r}") from exc
    if args.no_wait:
        changes["quiet_wait_s"] = 0.0
    try:
        cfg = replace(cfg, **changes)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    profile, _ = run_profile(cfg, name=args.name or "", show_progress=not args.quiet)
    if args.link:
        profile = _calibrate(profile, args)
    out = args.out or Path(f"{profile.name}.json")
    profile.save(out)
    print("\n".join(summary_lines(profile)))
    print(f"wrote {out}")
    return 0


def _calibrate(profile: DeviceProfile, args: argparse.Namespace) -> DeviceProfile:
    from sparkv.cost_models.link_calibration import apply_calibration, apply_receive_fit, fit_receive_cost
    from sparkv.profiling.link_calibration import calibrate_link
    from sparkv.profiling.link_real import real_fetcher

    cals = []
    for mbps in [args.link_rate_mbps, *receive_rates(args.receive_rates_mbps, args.link_rate_mbps)]:
        rate_bps = mbps * 1e6 / 8
        with real_fetcher(args.link, rate_bps) as (fetch, rtt_s):
            cal = calibrate_link(fetch, rate_bps, rtt_s if args.link_rtt_ms is None else args.link_rtt_ms / 1e3)
        print(
            f"link ({args.link}) at {mbps:g} Mbit/s: per-transfer {cal.per_transfer_s * 1e3:.2f} ms, "
            f"goodput {cal.goodput_bps * 8 / 1e6:.1f} Mbit/s (efficiency {cal.efficiency:.3f}), "
            f"rtt {cal.rtt_s * 1e3:.2f} ms, fit median error {cal.rel_error['median']:.1%}"
        )
        cals.append(cal)
    profile = apply_calibration(profile, cals[0], kind=args.link)  # per-transfer and rtt: the link rate's fit
    if len(cals) > 1:
        fit = fit_receive_cost(cals)
        profile = apply_receive_fit(profile, fit, args.link)
        print(
            f"link ({args.link}) wire efficiency {fit.efficiency:.3f}, receive path {fit.s_per_byte * 1e9:.2f} ns/B "
            f"(goodput levels off at {1 / fit.s_per_byte * 8 / 1e6 if fit.s_per_byte else float('inf'):.0f} Mbit/s); "
            f"goodput error at the {len(cals)} rates: median {fit.rel_error['median']:.1%}, "
            f"max {fit.rel_error['max']:.1%}"
        )
    if args.no_contention:
        return profile
    from sparkv.executor.model.models import load_model
    from sparkv.profiling.contention import apply_slowdown, apply_slowdown_curve, measure_receive_slowdown

    loaded = load_model(str(profile.measurements.get("config", {}).get("model", "smollm2")))
    rates = contention_rates(args.contention_rates_mbps, args.link_rate_mbps)
    slows = []
    for mbps in rates:
        slow = measure_receive_slowdown(loaded, args.link, mbps * 1e6 / 8)
        print(
            f"compute while cells arrive ({args.link}, {mbps:g} Mbit/s shaped, "
            f"{slow.received_bps * 8 / 1e6:.1f} Mbit/s received): {slow.receiving_s * 1e3:.2f} ms vs "
            f"{slow.alone_s * 1e3:.2f} ms alone per {slow.layers}-layer command of {slow.chunk_tokens} tokens "
            f"({slow.fetch_layers}-layer fetches), x{slow.ratio:.3f}"
            + (f" ({slow.discarded_rounds} rounds measured again: other processes loaded the CPU)"
               if slow.discarded_rounds else "")
        )  # fmt: skip
        slows.append(slow)
    return apply_slowdown(profile, slows[0]) if len(slows) == 1 else apply_slowdown_curve(profile, slows)


def receive_rates(text: str | None, link_rate_mbps: float) -> list[float]:
    """The further shaped rates (Mbit/s) the link is fitted at: `text`'s list ('none': no others), else the link
    rate x4 and x8."""
    if text is None:
        return [link_rate_mbps * m for m in RECEIVE_MULTIPLES]
    if text.strip().lower() == "none":
        return []
    return [r for r in parse_rates(text, "--receive-rates-mbps") if r != link_rate_mbps]


def contention_rates(text: str | None, link_rate_mbps: float) -> list[float]:
    """The shaped rates (Mbit/s) to measure receive contention at: `text`'s comma-separated list, else the link
    rate x1, x4 and x16 (the slowdown grows with the received rate)."""
    if text is None:
        return [link_rate_mbps * m for m in CONTENTION_MULTIPLES]
    return parse_rates(text, "--contention-rates-mbps")


def parse_rates(text: str, flag: str) -> list[float]:
    """Comma-separated positive rates, sorted, without repeats; a UserError naming `flag` otherwise."""
    try:
        rates = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from exc
    if not rates or rates[0] <= 0:
        raise UserError(f"{flag}: expected positive rates, got {text!r}")
    return rates
