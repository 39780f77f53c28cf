"""Naming traces on the command line: a file path, or a synthetic spec string.

Grammar (rates need a unit: bps/kbps/mbps/gbps are bits, B/s/KB/s/MB/s/GB/s are bytes; durations are
seconds unless suffixed s/ms/min):

    const:RATE[,DURATION]                  const:20mbps       const:2.5MB/s,60s    (default 60 s)
    steps:DUR@RATE[,DUR@RATE...]           steps:10s@20mbps,5s@0.5mbps
    ge[:KEY=VALUE,...]                     ge:good=20mbps,bad=1mbps,good_s=10,bad_s=2,dur=300,seed=0
                                           keys: good bad (rates, default 20mbps 1mbps), good_s bad_s
                                           (mean sojourn s, default 10 2), dur (300), seed (0),
                                           dt (0.1), jitter (lognormal sigma, 0)
    lte[:KEY=VALUE,...]                    lte   lte:seed=3   lte:seed=3,dur=600,mean=12mbps
                                           keys: seed (0), dur (300), mean (15mbps)
    fit:PATH[,KEY=VALUE,...]               fit:../shared/traces/nyu_mets_lte/bus57.csv,seed=2,dur=600
                                           keys: seed (0), dur (source duration), bins (8),
                                           raw (1 = keep the chain's own mean; default rescales to the source)

The trace is named by the spec string itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError
from sparkv.traces import synthetic
from sparkv.traces.loaders import load_trace
from sparkv.traces.options import join_trace_arg, loader_options, split_trace_arg
from sparkv.traces.trace import Trace
from sparkv.traces.units import parse_duration, parse_rate

SPEC_KINDS = ("const", "steps", "ge", "lte", "fit")


def _kv(spec: str, body: str, allowed: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """Parse `k=v,k=v` with one converter per allowed key."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in allowed:
            raise UserError(f"trace spec {spec!r}: expected KEY=VALUE with KEY in {', '.join(allowed)}, got {item!r}")
        try:
            out[key] = allowed[key](value.strip())
        except ValueError as exc:
            raise UserError(f"trace spec {spec!r}: {key}: {exc}") from None
    return out


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _with_info(trace: Trace, fmt: str, loop: str, path: str | None = None) -> Trace:
    """The trace with the format it was read as and its loop mode recorded in `info`."""
    from dataclasses import replace

    from sparkv.traces.loaders import detect_format

    used = detect_format(path or trace.source) if fmt == "auto" else fmt
    return replace(trace, info={**trace.info, "format": used, "loop": loop})


def is_spec(text: str) -> bool:
    """True if `text` starts like a synthetic spec (`kind:` or a bare `lte`/`ge`)."""
    kind = text.partition(":")[0].strip().lower()
    return kind in SPEC_KINDS and (":" in text or kind in ("lte", "ge"))


def by_name(spec: str) -> Trace:
    """The synthetic trace a spec string names (grammar in this module's docstring)."""
    kind, _, body = spec.partition(":")
    kind = kind.strip().lower()
    try:
        trace = _build(spec, kind, body.strip())
    except ValueError as exc:
        raise UserError(f"trace spec {spec!r}: {exc}") from None
    return trace.with_name(spec)


def _build(spec: str, kind: str, body: str) -> Trace:
    if kind == "const":
        parts = [p.strip() for p in body.split(",")]
        if not parts[0] or len(parts) > 2:
            raise ValueError("expected const:RATE[,DURATION], e.g. const:20mbps")
        return synthetic.constant(parse_rate(parts[0]), parse_duration(parts[1]) if len(parts) == 2 else 60.0)
    if kind == "steps":
        segs = []
        for item in filter(None, (s.strip() for s in body.split(","))):
            dur, at, rate = item.partition("@")
            if not at:
                raise ValueError(f"expected DURATION@RATE such as 10s@20mbps, got {item!r}")
            segs.append((parse_duration(dur), parse_rate(rate)))
        return synthetic.steps(segs)
    if kind == "ge":
        keys = {"good": parse_rate, "bad": parse_rate, "good_s": parse_duration, "bad_s": parse_duration,
                "dur": parse_duration, "seed": _int, "dt": parse_duration, "jitter": _float}  # fmt: skip
        o = _kv(spec, body, keys)
        return synthetic.gilbert_elliott(
            o.get("good", 20 * synthetic.MBIT_BPS), o.get("bad", 1 * synthetic.MBIT_BPS),
            o.get("good_s", 10.0), o.get("bad_s", 2.0), o.get("dur", 300.0), seed=o.get("seed", 0),
            dt_s=o.get("dt", 0.1), jitter=o.get("jitter", 0.0),
        )  # fmt: skip
    if kind == "lte":
        o = _kv(spec, body, {"seed": _int, "dur": parse_duration, "mean": parse_rate})
        return synthetic.lte_like(o.get("seed", 0), o.get("dur", 300.0), o.get("mean", 15 * synthetic.MBIT_BPS))
    if kind == "fit":
        tokens = body.split(",")
        n_path = len(tokens)
        while n_path > 1 and "=" in tokens[n_path - 1]:
            n_path -= 1
        path = ",".join(tokens[:n_path]).strip()
        if not path:
            raise ValueError("expected fit:PATH[,seed=N,dur=D,bins=K]")
        o = _kv(spec, ",".join(tokens[n_path:]), {"seed": _int, "dur": parse_duration, "bins": _int, "raw": _int})
        src = load_trace(path)
        return synthetic.fitted(
            src, o.get("dur", src.duration_s), seed=o.get("seed", 0), n_bins=o.get("bins", 8),
            match_mean=not o.get("raw", 0),
        )  # fmt: skip
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(SPEC_KINDS)}")


def get_trace(name: str | Path, fmt: str = "auto", **opts: Any) -> Trace:
    """A trace from a file path, with `?KEY=VALUE&...` loader options (grammar in `sparkv.traces.options`;
    they override `fmt` and `opts`), or a synthetic spec string."""
    text = str(name)
    if Path(text).exists():
        return _with_info(load_trace(text, fmt, **opts), fmt, "repeat")
    path, options = split_trace_arg(text)
    if options and Path(path).exists():
        file_fmt, file_opts, loop = loader_options(text, options)
        fmt = file_fmt if "format" in options else fmt
        return _with_info(load_trace(path, fmt, **{**opts, **file_opts}), fmt, loop, path)
    if is_spec(text):
        return by_name(text)
    if options:
        raise UserError(f"{path}: no such trace file (options {join_trace_arg('', options)[1:]!r} given)")
    kinds = ", ".join(f"{k}:" for k in SPEC_KINDS)
    raise UserError(f"{text}: no such trace file, and not a synthetic trace spec ({kinds})")
