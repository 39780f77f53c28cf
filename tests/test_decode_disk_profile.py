"""`sparkv profile --disk`: a measured storage profile from O_DIRECT reads, and a clear error for a bad path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparkv.cli import main
from sparkv.cost_models.storage import load_storage
from sparkv.profiling.disk import PROBE_NAME, profile_disk


def test_a_small_disk_profile_is_measured_and_loads(tmp_path: Path) -> None:
    folder = Path(__file__).resolve().parent.parent / "out" / "test-disk" / str(os.getpid())  # a real disk
    profile = profile_disk(folder, file_bytes=8 << 20, cell_s=0.01, sizes=(512, 4096, 65536), depths=(1, 4))
    assert profile.kind == "measured" and profile.sources
    assert all(v > 0 for row in profile.read_bps for v in row)
    assert all(row[1] >= row[0] for row in profile.read_bps)
    assert profile.latency_s > 0 and profile.write_bps > 0
    assert not (folder / PROBE_NAME).exists()  # the probe file is removed
    assert load_storage(str(profile.save(tmp_path / "disk.json"))).read_bps == profile.read_bps


def test_an_unwritable_disk_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["profile", "--disk", str(blocker / "sub"), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write a probe file" in err[0]
