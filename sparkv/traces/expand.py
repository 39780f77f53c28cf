"""Trace arguments as users give them (files, folders, globs, synthetic specs) turned into a list of traces."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from sparkv.core.errors import UserError
from sparkv.traces.specs import is_spec

_DOC_FILES = ("readme", "license", "copying", "upstream")  # files in trace folders that are not traces


def expand_traces(values: Iterable[str]) -> list[str]:
    """Synthetic specs as given; files; folders recursively, sorted, skipping documentation and the uplink
    half of mahimahi up/down pairs; globs. In the order given, without repeats; UserError if none is found."""
    out: list[str] = []
    for value in map(str, values):
        path = Path(value)
        if is_spec(value) or path.is_file():
            out.append(value)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not _is_doc(p))
            out.extend(str(p) for p in files if not (p.suffix == ".up" and p.with_suffix(".down").exists()))
        elif any(ch in value for ch in "*?["):
            out.extend(sorted(p for p in glob.glob(value, recursive=True) if Path(p).is_file()))
        else:
            raise UserError(f"trace {value!r}: no such file, folder or glob match, and not a synthetic spec")
    if not out:
        raise UserError(f"no traces found in {list(values)}")
    return list(dict.fromkeys(out))


def _is_doc(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(".") or path.suffix == ".md" or name.startswith(_DOC_FILES)
