"""Unit names for rates and durations as they appear in trace files and on the command line.

Everything is converted here, once, to bytes per second and seconds. Prefixes are SI (k = 1000) except
the explicit binary ones (KiB/s, MiB/s, GiB/s). Bit-rate names are case-insensitive (`Mbps`, `mbit/s`,
`Mbits/sec`); byte-rate names need a capital `B` (`B/s`, `kB/s`, `KB/s`, `MB/s`, `GB/s`) or the word
`bytes` (`bytes/s`, `bytes_per_second`), so `Mb/s` (bits) and `MB/s` (bytes) cannot be confused; a
capital B that names no known byte unit (`MBps`) is an error rather than a guess.
"""

from __future__ import annotations

import re

_BIT_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_BIT_SUFFIXES = ("bps", "bit/s", "bits/s", "bit/sec", "bits/sec", "b/s", "bit_s", "bits_s")
# lower-cased bit-rate name -> bytes per second per unit
BIT_RATE_UNITS = {p + s: f / 8.0 for p, f in _BIT_PREFIX.items() for s in _BIT_SUFFIXES}
# exact (case-sensitive) byte-rate name -> bytes per second per unit
BYTE_RATE_UNITS = {
    "B/s": 1.0,
    "Bps": 1.0,
    "kB/s": 1e3,
    "KB/s": 1e3,
    "MB/s": 1e6,
    "GB/s": 1e9,
    "KiB/s": 1024.0,
    "MiB/s": 1024.0**2,
    "GiB/s": 1024.0**3,
}
_BYTE_WORDS = {"bytes/s": 1.0, "bytes/sec": 1.0, "bytes_per_second": 1.0, "bytes_per_s": 1.0}
TIME_UNITS = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "us": 1e-6, "min": 60.0}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*([A-Za-z/_]*)\s*$")


def rate_unit_factor(unit: str) -> float:
    """Bytes per second in one `unit` (e.g. 'Mbps' -> 125000.0); ValueError if unknown."""
    u = unit.strip()
    if u in BYTE_RATE_UNITS:
        return BYTE_RATE_UNITS[u]
    low = u.lower()
    if low in _BYTE_WORDS:
        return _BYTE_WORDS[low]
    if low in BIT_RATE_UNITS and "B" not in u:  # a capital B always means bytes
        return BIT_RATE_UNITS[low]
    raise ValueError(f"unknown rate unit {unit!r}; use one of bps, kbps, Mbps, Gbps (bits) or B/s, KB/s, MB/s, GB/s")


def time_unit_factor(unit: str) -> float:
    """Seconds in one `unit` ('s', 'ms', 'us', 'min'); ValueError if unknown."""
    try:
        return TIME_UNITS[unit.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown time unit {unit!r}; use one of {', '.join(TIME_UNITS)}") from None


def parse_rate(text: str) -> float:
    """'20mbps' / '2.5 MB/s' / '800kbps' -> bytes per second. A unit is required."""
    m = _QUANTITY.match(text)
    if not m or not m.group(2):
        raise ValueError(f"expected a rate with a unit such as '20mbps' or '2.5MB/s', got {text!r}")
    value = float(m.group(1)) * rate_unit_factor(m.group(2))
    if value < 0:
        raise ValueError(f"rate must be >= 0, got {text!r}")
    return value


def parse_duration(text: str) -> float:
    """'60s' / '500ms' / '2min' / '30' (seconds) -> seconds."""
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"expected a duration such as '60s', '500ms' or '2min', got {text!r}")
    value = float(m.group(1)) * (time_unit_factor(m.group(2)) if m.group(2) else 1.0)
    if value < 0:
        raise ValueError(f"duration must be >= 0, got {text!r}")
    return value
