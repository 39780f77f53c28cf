"""A network namespace joined to the host by a veth pair, with a tc token-bucket filter on its egress.

`create_netns()` makes namespace `sparkv-<pid>-<n>` and veth `sk<pid>h<n>` (host side, 10.77.<n>.1/30)
<-> `sk<pid>n<n>` (namespace side, 10.77.<n>.2/30); nothing else is addressed or routed. `set_tbf`
puts `tbf rate R burst B latency L` on the namespace side's egress, i.e. on everything a server inside
the namespace sends to the host, with R raised by FRAME_OVERHEAD so that TCP payload (not Ethernet
frames) flows at the trace's rate. tbf cannot take a rate of 0, so a zero-rate stretch of a trace is
played as MIN_RATE_BPS (1000 B/s = 8 kbit/s). Every namespace made here is deleted by `delete_netns`,
at interpreter exit, or (if this process was killed) by the next `create_netns` of any process, which
removes namespaces whose creating pid is gone. Deleting the namespace removes both veth ends.

The namespace's veth end carries at most GSO_MAX_SEGS TCP segments per packet (`gso_max_segs`). Without
that, TCP hands the veth GSO "super-packets" of up to 64 KiB, sized to its own (fast, sub-millisecond
RTT) pacing rate rather than the shaper's. tbf admits such a packet whole while the trace is fast (its
burst then exceeds the packet), but can never send it once a slower step has shrunk the burst below the
packet's length: the packet costs more tokens than the bucket holds, so it sits at the head of the
queue and wedges everything behind it (data, SYN-ACKs, ARP replies) until the trace is fast again.
Capped, every packet (MAX_PACKET_BYTES on the wire) fits in MIN_BURST_BYTES, the smallest burst.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

CMD_TIMEOUT_S = 10.0
MIN_RATE_BPS = 1000.0  # tbf needs a positive rate: zero-rate trace segments play at 8 kbit/s
MIN_BURST_BYTES = 8192  # more than the largest packet (MAX_PACKET_BYTES), or that packet never passes
GSO_MAX_SEGS = 4  # TCP segments per packet on the namespace's veth: few enough to fit any burst, and
# enough that the per-packet cost stays low at a few hundred Mbit/s
MAX_PACKET_BYTES = GSO_MAX_SEGS * 1514  # 1500-byte MTU frames, 14 bytes of Ethernet header each
assert MAX_PACKET_BYTES < MIN_BURST_BYTES
BURST_S = 0.004  # burst is this much time of the current rate (when larger than MIN_BURST_BYTES)
LATENCY_S = 0.05  # tbf queue limit, as the time a packet may wait in it
# tbf counts whole Ethernet frames; a full TCP segment on a 1500-byte MTU carries 1448 payload bytes in a
# 1514-byte frame (14 Ethernet + 20 IP + 32 TCP with timestamps). Traces are taken as payload bytes per
# second (as the simulator takes them), so the shaper runs this much faster than the trace rate.
FRAME_OVERHEAD = 1514 / 1448
_LOCK_DIR = Path("/run/sparkv")  # root-owned, mode 0700: no other user can plant a symlink in it
_NAME_RE = re.compile(r"^sparkv-(\d+)-(\d+)$")
_created: dict[str, Netns] = {}


class NetnsUnavailable(RuntimeError):
    """This machine or user may not create network namespaces (the pacing link is the fallback)."""


@dataclass(frozen=True)
class Netns:
    """One namespace and its veth pair."""

    name: str  # sparkv-<pid>-<n>
    index: int  # n: the third octet of the pair's 10.77.n.0/30
    host_if: str  # veth end on the host
    ns_if: str  # veth end inside the namespace

    @property
    def host_addr(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def ns_addr(self) -> str:
        return f"10.77.{self.index}.2"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"{' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_netns() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cleanup_stale() -> list[str]:
    """Delete sparkv namespaces whose creating process is gone; their names."""
    removed = []
    for name in list_netns():
        m = _NAME_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def _used_indices() -> set[int]:
    out = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
    used = {int(m.group(1)) for m in re.finditer(r"inet 10\.77\.(\d+)\.", out)}
    used |= {int(m.group(2)) for name in list_netns() if (m := _NAME_RE.match(name))}
    return used


def _open_lock(lock_dir: Path | None = None) -> int:
    """The namespace lock's descriptor: in a directory only this user owns and can write (made 0700 if
    absent), opened without following a symlink, so a planted link cannot redirect a root write."""
    d = lock_dir or _LOCK_DIR
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(d)
    except OSError as exc:
        raise NetnsUnavailable(f"cannot make the lock directory {d}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise NetnsUnavailable(f"lock directory {d} is not a private directory of this user "
                               f"(mode {stat.filemode(st.st_mode)}, owner {st.st_uid})")
    try:
        return os.open(d / "netns.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise NetnsUnavailable(f"cannot open {d / 'netns.lock'}: {exc.strerror or exc}") from exc


def create_netns() -> Netns:
    """A fresh namespace with its veth pair up and addressed; NetnsUnavailable if not permitted."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (euid is not 0)")
    with os.fdopen(_open_lock(), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes pick indices one at a time
        try:
            cleanup_stale()
            free = sorted(set(range(1, 255)) - _used_indices())
            if not free:
                raise NetnsUnavailable("no free 10.77.<n>.0/30 subnet left")
            n, pid = free[0], os.getpid()
            ns = Netns(f"sparkv-{pid}-{n}", n, f"sk{pid}h{n}", f"sk{pid}n{n}")
            try:
                _run("ip", "netns", "add", ns.name)
            except RuntimeError as exc:
                raise NetnsUnavailable(str(exc)) from exc
            _created[ns.name] = ns
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        _run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if, "netns", ns.name)
        _run("ip", "addr", "add", f"{ns.host_addr}/30", "dev", ns.host_if)
        _run("ip", "link", "set", ns.host_if, "up")
        _run("ip", "-n", ns.name, "addr", "add", f"{ns.ns_addr}/30", "dev", ns.ns_if)
        try:  # small packets only, so none ever outgrows tbf's burst (see the module doc)
            _run("ip", "-n", ns.name, "link", "set", ns.ns_if, "gso_max_segs", str(GSO_MAX_SEGS))
        except RuntimeError as exc:
            raise NetnsUnavailable(f"cannot cap the veth's packets at {GSO_MAX_SEGS} segments, so tbf could "
                                   f"wedge on a GSO packet larger than its burst: {exc}") from exc
        _run("ip", "-n", ns.name, "link", "set", ns.ns_if, "up")
        _run("ip", "-n", ns.name, "link", "set", "lo", "up")
    except RuntimeError:  # NetnsUnavailable included
        delete_netns(ns)
        raise
    return ns


def delete_netns(ns: Netns) -> None:
    """Remove the namespace and both veth ends (idempotent)."""
    _run("ip", "netns", "del", ns.name, check=False)
    _run("ip", "link", "del", ns.host_if, check=False)  # gone already unless the move into ns failed
    _created.pop(ns.name, None)


def exists(ns: Netns) -> bool:
    return ns.name in list_netns()


def tbf_params(rate_bps: float, latency_s: float = LATENCY_S, overhead: float = FRAME_OVERHEAD) -> tuple[int, int, int]:
    """(rate bit/s, burst bytes, latency us) for tc: the zero-rate floor, then the frame overhead."""
    rate = max(float(rate_bps), MIN_RATE_BPS) * overhead
    burst = max(MIN_BURST_BYTES, int(rate * BURST_S))
    return int(rate * 8), burst, int(latency_s * 1e6)


def set_tbf(ns: Netns, rate_bps: float, latency_s: float = LATENCY_S, change: bool = True,
            overhead: float = FRAME_OVERHEAD) -> float:
    """Shape the namespace's egress so TCP payload flows at `rate_bps` (bytes/s); returns tbf's rate (B/s)."""
    bits, burst, lat_us = tbf_params(rate_bps, latency_s, overhead)
    verb = "change" if change else "add"
    _run("tc", "-n", ns.name, "qdisc", verb, "dev", ns.ns_if, "root", "tbf",
         "rate", f"{bits}bit", "burst", str(burst), "latency", f"{lat_us}us")
    return bits / 8


def tbf_status(ns: Netns) -> str:
    """`tc -s qdisc show` of the namespace's veth egress on one line (rate, burst, sent, drops, backlog)."""
    proc = _run("tc", "-n", ns.name, "-s", "qdisc", "show", "dev", ns.ns_if, check=False)
    if proc.returncode != 0:
        return f"tc -s qdisc show failed ({proc.returncode}): {proc.stderr.strip() or 'no output'}"
    return " ".join(proc.stdout.split())


def gso_max_segs(ns: Netns) -> int | None:
    """The namespace veth's gso_max_segs (GSO_MAX_SEGS once create_netns set it up), None if unreadable."""
    out = _run("ip", "-n", ns.name, "-d", "link", "show", ns.ns_if, check=False).stdout
    m = re.search(r"gso_max_segs (\d+)", out)
    return int(m.group(1)) if m else None


@atexit.register
def _delete_all() -> None:
    for ns in list(_created.values()):
        delete_netns(ns)
