"""A sweep's runs on disk: one folder per run, named by a job key, so an interrupted sweep resumes.

A run's **job key** is a stable hash of its full configuration: the scenario (every field, link included),
the policy value, and the bytes of every input file it names (trace file, device profile JSON, policy
config JSON, a model directory's config.json). The same run in another grid, another order or another
sweep has the same key. Its folder `RUNS/KEY/` holds `row.json` (the row as the table shows it, without
its grid index, plus the sparkv code fingerprint that computed it) and, when results are kept, the Result
JSON (`result.json`, or `stalled.json` for a run that stalled).

A stored row is reused only when its key and the code fingerprint (a hash of the sparkv package's
sources and data) both match, and when asked-for Result JSONs are there: a row computed by other code,
or a half-written folder, is computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

ROW_FILE = "row.json"
RESULT_FILES = ("result.json", "stalled.json")
KEY_CHARS = 16  # hex digits of the SHA-256 kept: 64 bits, no collision in any plausible sweep


@lru_cache(maxsize=1024)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes (cached by path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str | None:
    """The digest of `path` when it is a readable file, else None."""
    try:
        stat = path.stat()
        return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns) if path.is_file() else None
    except OSError:
        return None


def input_digests(scenario: dict[str, Any], policy: str) -> dict[str, str]:
    """Digests of the files a run reads, by role; synthetic traces and built-in names have none (their
    meaning is fixed by the code fingerprint)."""
    from sparkv.traces.options import split_trace_arg

    found: dict[str, str | None] = {}
    trace = str(scenario.get("trace", ""))
    with contextlib.suppress(Exception):  # a spec or an unparsable argument: the text is the configuration
        found["trace"] = file_digest(Path(split_trace_arg(trace)[0]))
    device = str(scenario.get("device", ""))
    if device.endswith(".json"):
        found["device"] = file_digest(Path(device))
    if policy.endswith(".json"):
        found["policy"] = file_digest(Path(policy))
    model = Path(str(scenario.get("model", "")))
    if model.is_dir():
        found["model"] = file_digest(model / "config.json")
    return {k: v for k, v in found.items() if v}


def job_key(scenario: dict[str, Any], policy: str) -> str:
    """A run's key: SHA-256 of its configuration (canonical JSON) and its input files' digests."""
    config = {"scenario": scenario, "policy": policy, "inputs": input_digests(scenario, policy)}
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 over the sparkv package's Python sources and data files (paths and bytes), 16 hex digits."""
    import sparkv

    root = Path(sparkv.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".pyc", ".pyo")):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:KEY_CHARS]


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a killed sweep leaves no half-written file under `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class RunStore:
    """The folder of a sweep's runs (`OUT/runs`): stored rows are looked up by job key."""

    root: Path
    keep_results: bool = False  # a stored run counts only if its Result JSON is there too
    reuse: bool = True  # False: look nothing up (every run computed again and stored anew)
    reused: int = 0  # rows taken from the store by `lookup`
    stale: int = 0  # stored rows found but computed by other code (so computed again)
    _code: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        self._code = code_fingerprint()

    def folder(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The stored row of `key` (without index), or None when it is missing, stale or incomplete."""
        if not self.reuse:
            return None
        folder = self.folder(key)
        try:
            stored = json.loads((folder / ROW_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("job_key") != key or not isinstance(stored.get("row"), dict):
            return None
        if stored.get("code") != self._code:
            self.stale += 1
            return None
        if self.keep_results and not any((folder / name).is_file() for name in RESULT_FILES):
            return None
        self.reused += 1
        return dict(stored["row"])

    def count(self, keys: Iterable[str]) -> int:
        """How many of `keys` have a reusable stored row (does not change the counters)."""
        reused, stale = self.reused, self.stale
        found = sum(self.lookup(k) is not None for k in keys)
        self.reused, self.stale = reused, stale
        return found

    def store(self, row: dict[str, Any], files: dict[str, str] | None = None) -> None:
        """Save a finished run: its files first, then `row.json` (the mark that the run is complete)."""
        key = str(row["job_key"])
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            _write_atomic(folder / name, text)
        stored = {"job_key": key, "code": self._code, "row": {k: v for k, v in row.items() if k != "index"}}
        _write_atomic(folder / ROW_FILE, json.dumps(stored, indent=1, default=str) + "\n")
