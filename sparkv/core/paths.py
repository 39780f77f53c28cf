"""Where the public data lives: `../shared` beside the project (traces/, datasets/), never copied in."""

from __future__ import annotations

import os
from pathlib import Path


def shared_root() -> Path | None:
    """$SPARKV_SHARED, else ../shared from the working directory, else beside the source checkout."""
    candidates = []
    if os.environ.get("SPARKV_SHARED"):
        candidates.append(Path(os.environ["SPARKV_SHARED"]))
    candidates.append(Path.cwd().parent / "shared")
    candidates.append(Path(__file__).resolve().parents[3] / "shared")
    for path in candidates:
        if (path / "traces").is_dir():
            return path
    return None


def shared_path(*parts: str) -> Path | None:
    """A file or folder under the shared root, or None when it is not there."""
    root = shared_root()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None
