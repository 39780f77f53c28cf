"""Where sweep and tuning work runs: in this process, a local process pool, or a Ray cluster.

A backend maps a picklable module-level function over a list of tasks and yields `(index, output)` as
each task finishes (in completion order). Workers are long-lived processes, so module-level caches in
the worker (traces, model specs) are filled once per worker, not once per task.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from sparkv.core.errors import UserError

BACKENDS = ("local", "ray")


class Backend(Protocol):
    name: str
    workers: int  # parallel slots

    def imap(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]: ...

    def close(self, now: bool = False) -> None: ...  # now: stop running work too (after a Ctrl-C)


class SerialBackend:
    """Everything in this process (jobs = 1); simplest to debug."""

    name = "serial"
    workers = 1

    def imap(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        for i, task in enumerate(tasks):
            yield i, fn(task)

    def close(self, now: bool = False) -> None:
        pass


class LocalBackend:
    """A `concurrent.futures` process pool on this machine (forkserver start: safe with threads, fast)."""

    name = "local"

    def __init__(self, jobs: int, preload: Sequence[str] = ()) -> None:
        if jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {jobs}")
        self.workers = jobs
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods and preload:
            ctx.set_forkserver_preload(list(preload))
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_ignore_sigint)

    def imap(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        futures: dict[Future[Any], int] = {self._pool.submit(fn, t): i for i, t in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield futures[fut], fut.result()
        finally:
            for fut in pending:
                fut.cancel()

    def close(self, now: bool = False) -> None:
        """Shut the pool down; `now` (after a Ctrl-C): cancel what is queued and end running workers too."""
        if now:
            for proc in list(getattr(self._pool, "_processes", {}).values()):  # running batches: stop them
                with contextlib.suppress(OSError, AttributeError):
                    proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which stops them (no traceback from each of them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RayBackend:
    """Ray tasks: join the cluster at `address`, or start a local one with `jobs` CPUs when none is given."""

    name = "ray"

    def __init__(self, jobs: int | None = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("the Ray backend needs Ray: pip install 'sparkv[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                import sparkv

                # Ship this checkout's package so cluster workers run the same code (dependencies must be installed).
                kwargs["runtime_env"] = {"py_modules": [os.path.dirname(sparkv.__file__)]}
            else:
                kwargs["num_cpus"] = jobs or os.cpu_count() or 1
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot start or join a Ray cluster at {address or 'local'}: {exc}") from exc
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1))

    def imap(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        remote = ray.remote(num_cpus=1)(fn)
        refs = {remote.remote(t): i for i, t in enumerate(tasks)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref], ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self, now: bool = False) -> None:
        if self._started:
            self._ray.shutdown()


def choose_backend(name: str | None, address: str | None) -> str:
    """The backend a command runs on: `name`, or ray when only a Ray address is given. A Ray address beside
    another backend is refused, so that work meant for a cluster never runs quietly on this machine."""
    if address is not None:
        if name not in (None, "ray"):
            raise UserError(f"--ray-address joins a Ray cluster: it needs --backend ray, not --backend {name}")
        return "ray"
    return name or "local"


def make_backend(name: str = "local", jobs: int = 1, address: str | None = None,
                 preload: Sequence[str] = ()) -> Backend:  # fmt: skip
    """A backend by name; `local` with one job runs in this process. An address is for ray only."""
    if address is not None and name != "ray":
        raise UserError(f"a Ray address ({address}) needs the ray backend, not {name!r}")
    if name == "local":
        return SerialBackend() if jobs == 1 else LocalBackend(jobs, preload)
    if name == "ray":
        return RayBackend(jobs, address)
    raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def default_jobs() -> int:
    return os.cpu_count() or 1
