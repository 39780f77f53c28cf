"""Start the KV server as a child process (optionally inside a network namespace) and hold on to it.

`ServerHandle.diagnose()` says what state the server (and whatever carries its traffic) is in, with the
last lines of its log; `describe_server(host, port)` finds the running handle of an endpoint in this
process, so a client that loses the link can say why.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sparkv.executor.net.auth import ENV_SECRET, ENV_SECRET_FILE, is_loopback, new_secret
from sparkv.executor.net.pacing import trace_to_json

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
DIAGNOSE_LOG_LINES = 6  # log lines a diagnosis quotes
DIAGNOSE_LINE_CHARS = 300  # each cut to this length
_PKG_PARENT = str(Path(__file__).resolve().parents[2])  # the folder holding the sparkv package
_live: weakref.WeakSet[ServerHandle] = weakref.WeakSet()


class ServerHandle:
    """A running KV server process: where it listens, and how to stop (or kill) it."""

    def __init__(self, host: str, port: int, proc: subprocess.Popen[bytes], workdir: Path,
                 netns: str | None, paced: bool, secret: bytes | None = None) -> None:
        self.host, self.port, self.proc = host, port, proc
        self.secret = secret  # the shared secret clients must prove, or None
        self.netns = netns  # namespace it runs in, or None
        self.paced = paced  # True when it paces its sends to a trace
        self._workdir = workdir  # trace JSON and the server's stderr log
        self.diagnosers: list[Callable[[], str]] = []  # more to say in `diagnose` (e.g. the link's shaper)
        _live.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _control(self, line: str) -> None:
        if self.alive() and self.proc.stdin is not None:
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass

    def set_clock(self, t0_s: float, timeout_s: float = 2.0) -> bool:
        """Trace time 0 of the server's pacing is perf_counter instant `t0_s` (same clock across processes).

        Waits (at most timeout_s) for the server's acknowledgement, so a FETCH sent afterwards is paced
        from the new clock; False when none came (the server is gone or stuck).
        """
        self._control(f"clock {t0_s!r}")
        return self.alive() and _read_line(self.proc, time.perf_counter() + timeout_s) == "CLOCK"

    def log(self) -> str:
        """The server's stderr so far."""
        try:
            return (self._workdir / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def diagnose(self, log_lines: int = DIAGNOSE_LOG_LINES) -> str:
        """One paragraph: is the server running (or how it ended), what the diagnosers report, and the
        last `log_lines` lines of its log."""
        code = self._exit_code()
        if code is None:
            state = "running"
        elif code < 0:
            state = f"killed by signal {-code}"
        else:
            state = f"exited with code {code}"
        where = f" in netns {self.netns}" if self.netns else ""
        parts = [f"KV server pid {self.pid}{where} at {self.host}:{self.port}: {state}"]
        for diagnoser in list(self.diagnosers):
            try:
                text = diagnoser()
            except Exception as exc:  # a diagnosis must never hide the error it explains
                text = f"(diagnoser failed: {exc!r})"
            if text:
                parts.append(text)
        lines = [line[:DIAGNOSE_LINE_CHARS] for line in self.log().splitlines() if _log_line(line)][-log_lines:]
        parts.append("server log: " + (" | ".join(lines) if lines else "(empty)"))
        return "; ".join(parts)

    def _exit_code(self) -> int | None:
        """The server's exit code, None while it runs. A process just killed may not be reaped yet (or,
        under `ip netns exec`, be a zombie for a moment): its /proc state says so, and it is waited for."""
        code = self.proc.poll()
        if code is not None:
            return code
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "?"
        if state in ("Z", "X", "?"):
            with contextlib.suppress(subprocess.TimeoutExpired):
                return self.proc.wait(timeout=1.0)
        return None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the server to stop; SIGTERM, then SIGKILL if it has not exited within timeout_s."""
        self._control("stop")
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL, no goodbye (for fault tests)."""
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):  # else a zombie the OS reaps with us
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._cleanup()

    def _cleanup(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self._workdir, ignore_errors=True)
        _live.discard(self)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        return f"ServerHandle({self.host}:{self.port}, pid {self.pid}{where}, paced={self.paced})"


def _log_line(line: str) -> bool:
    """A log line worth quoting: not blank, and starting with its perf_counter stamp (a whole record)."""
    head = line.split(" ", 1)[0]
    return bool(line.strip()) and head.replace(".", "", 1).isdigit()


def secret_of(host: str, port: int) -> bytes | None:
    """The shared secret of this process's running server at host:port, if it has one."""
    for handle in list(_live):
        if handle.host == host and handle.port == port:
            return handle.secret
    return None


def describe_server(host: str, port: int) -> str:
    """`diagnose()` of this process's running handle for host:port, or '' when there is none."""
    for handle in list(_live):
        if handle.host == host and handle.port == port:
            return handle.diagnose()
    return ""


def start_server(
    root: Path | str,
    host: str = "127.0.0.1",
    port: int = 0,
    pacing_trace: Any = None,
    netns: str | None = None,
    faults: tuple[str, ...] | list[str] = (),
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    secret: bytes | None = None,
    extra_args: tuple[str, ...] = (),
) -> ServerHandle:
    """Start `python -m sparkv.executor.net.server` and wait (bounded) for it to report its port.

    pacing_trace: None (send as fast as the socket takes it), a trace file path, or a trace object with
    times_s/rates_bps/duration_s (sparkv.traces.Trace), which is handed over as JSON.
    netns: run the server inside this network namespace (`ip netns exec`); `host` must be an address there.
    faults: server fault-injection specs, e.g. ("die-after-bytes=100000",) or ("corrupt-cell=0,1",).
    secret: the shared secret clients must prove; a fresh random one when None and the server runs in a
    namespace or on a non-loopback address (clients of this process find it with `secret_of`).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"store root {root} is not a directory")
    workdir = Path(tempfile.mkdtemp(prefix="sparkv-server-"))
    cmd = [sys.executable, "-m", "sparkv.executor.net.server", "--root", str(root.resolve()),
           "--host", host, "--port", str(port)]
    if pacing_trace is not None:
        if isinstance(pacing_trace, str | Path):
            trace_file = Path(pacing_trace)
        else:
            trace_file = workdir / "trace.json"
            trace_file.write_text(json.dumps(trace_to_json(pacing_trace)))
        cmd += ["--trace", str(trace_file)]
    for fault in faults:
        cmd += ["--fault", fault]
    cmd += list(extra_args)
    if secret is None and (netns is not None or not is_loopback(host)):
        secret = new_secret()
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, env.get("PYTHONPATH", "")) if p)
    env.pop(ENV_SECRET_FILE, None)
    env.pop(ENV_SECRET, None)
    if secret is not None:  # in a private file named by the environment: never on a command line (`ps`)
        secret = secret.strip()
        secret_file = workdir / "secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
        env[ENV_SECRET_FILE] = str(secret_file)
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)
    t0 = time.perf_counter()
    first = _read_line(proc, t0 + startup_timeout_s)
    line = (first or "").split()
    bound = int(line[1]) if len(line) == 2 and line[0] == "PORT" and line[1].isdigit() else None
    if bound is None:
        code = proc.poll()
        if code is not None:
            how = f"exited with code {code} after {time.perf_counter() - t0:.1f} s"
        elif first is None:
            how = f"still running but silent after {startup_timeout_s:.0f} s (killed; a heavily loaded machine?)"
        else:
            how = f"said {first[:200]!r} instead of 'PORT <n>'"
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        text = (workdir / "server.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"KV server did not start ({' '.join(cmd)}): {how}; log: {text.strip() or '(empty)'}")
    return ServerHandle(host, bound, proc, workdir, netns, pacing_trace is not None, secret)


def _read_line(proc: subprocess.Popen[bytes], deadline_s: float) -> str | None:
    """One line of the server's stdout (unbuffered reads, one byte at a time, so nothing is read ahead);
    None if it exits, closes stdout or stays silent until the deadline."""
    if proc.stdout is None or proc.stdout.closed:
        return None
    fd, buf = proc.stdout.fileno(), b""
    while not buf.endswith(b"\n"):
        remaining = deadline_s - time.perf_counter()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            data = os.read(fd, 1)
            if not data:
                return None
            buf += data
        elif proc.poll() is not None:
            return None
    return buf.decode(errors="replace").strip()


@atexit.register
def _kill_leftovers() -> None:
    """Servers whose owner never stopped them die with this process."""
    for handle in list(_live):
        handle.kill()
