"""Trace arguments (files, folders, globs, synthetic specs) expanded into the traces they name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkv.core.errors import UserError
from sparkv.traces.expand import expand_traces


def test_folders_globs_and_specs_in_the_order_given(tmp_path: Path) -> None:
    for name in ("a.down", "a.up", "b.up", "c.csv", "README.md", "LICENSE"):
        (tmp_path / name).write_text("1\n2\n")
    names = expand_traces([str(tmp_path), "const:1mbps", str(tmp_path / "*.up"), str(tmp_path / "c.csv")])
    # a.up is the uplink twin of a.down (skipped in the folder, kept when named by a glob); docs skipped;
    # c.csv named twice is listed once
    assert names == [str(tmp_path / "a.down"), str(tmp_path / "b.up"), str(tmp_path / "c.csv"), "const:1mbps",
                     str(tmp_path / "a.up")]  # fmt: skip


def test_folders_are_searched_recursively(tmp_path: Path) -> None:
    (tmp_path / "lte").mkdir()
    (tmp_path / "lte" / "x.down").write_text("1\n")
    (tmp_path / "lte" / "README.md").write_text("docs")
    (tmp_path / "top.csv").write_text("1\n")
    assert expand_traces([str(tmp_path)]) == [str(tmp_path / "lte" / "x.down"), str(tmp_path / "top.csv")]


def test_nothing_found_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        expand_traces([str(tmp_path / "missing")])
    (tmp_path / "README.md").write_text("docs")
    with pytest.raises(UserError, match="no traces found"):
        expand_traces([str(tmp_path)])
