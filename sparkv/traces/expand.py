"""Trace arguments as users give them (files, folders, globs, synthetic specs) turned into a list of traces."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from sparkv.core.errors import UserError
from sparkv.traces.options import join_trace_arg, split_trace_arg
from sparkv.traces.specs import is_spec

_DOC_FILES = ("readme", "license", "copying", "upstream")  # files in trace folders that are not traces


def expand_traces(values: Iterable[str]) -> list[str]:
    """Synthetic specs as given; files; folders recursively, sorted, skipping documentation and the uplink
    half of mahimahi up/down pairs; globs likewise (`dir/*` gives what `dir` gives). Loader options after `?`
    (`sparkv.traces.options`) go with every file a folder or glob expands to. In the order given, without
    repeats; UserError if none is found."""
    given = [str(v) for v in values]
    out: list[str] = []
    for value in given:
        if is_spec(value) or Path(value).is_file():
            out.append(value)
            continue
        text, options = split_trace_arg(value)
        path = Path(text)
        if path.is_file():
            out.append(value)
            continue
        if path.is_dir():
            files = [str(p) for p in path.rglob("*")]
        elif any(ch in text for ch in "*?["):
            files = glob.glob(text, recursive=True)
        else:
            raise UserError(f"trace {value!r}: no such file, folder or glob match, and not a synthetic spec")
        found = _trace_files(files)
        out.extend(join_trace_arg(p, options) for p in found)
    if not out:
        raise UserError(f"no traces found in {given}")
    return list(dict.fromkeys(out))


def _trace_files(paths: Iterable[str]) -> list[str]:
    """The trace files among `paths`, sorted: no folders, no documentation, no mahimahi `.up` whose `.down`
    twin is among them."""
    files = {p for p in paths if Path(p).is_file() and not _is_doc(Path(p))}
    return sorted((p for p in files if not (p.endswith(".up") and p.removesuffix(".up") + ".down" in files)), key=Path)


def _is_doc(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith(".") or path.suffix == ".md" or name.startswith(_DOC_FILES)
