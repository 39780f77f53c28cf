"""Once per machine and device profile: say which machine a measured profile describes.

A measured profile (`cpu-smollm2`: a 2-core x86 VM) predicts compute times on the machine it was measured
on; on another machine the simulator's TTFTs are that machine's, not this one's. The first `simulate` or
`run` with such a profile on a machine prints one note saying so, and how to measure this machine; a
marker under `$SPARKV_CACHE` (default ~/.cache/sparkv) keeps it from repeating.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from sparkv.cost_models.profiles import DeviceProfile

MARKER = "profiles-noted.json"


def this_machine() -> str:
    """A short description of this machine: processor, CPU count, host name."""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, host {platform.node()}"


def _marker() -> Path:
    env = os.environ.get("SPARKV_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "sparkv") / MARKER


def profile_note(profile: DeviceProfile) -> str | None:
    """The one-line note for a measured profile not yet noted on this machine (None otherwise, or when the
    marker cannot be read or written: the note is a courtesy, never an error)."""
    if profile.kind != "measured":
        return None
    key = this_machine()
    path = _marker()
    try:
        seen = json.loads(path.read_text()) if path.is_file() else {}
        names = list(seen.get(key, [])) if isinstance(seen, dict) else []
        if profile.name in names:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**(seen if isinstance(seen, dict) else {}), key: [*names, profile.name]}))
    except (OSError, ValueError):
        return None
    return (f"device profile {profile.name} was measured on {profile.device} ({profile.date}); this machine is "
            f"{key}: if it is another, its compute speed differs (`sparkv profile --out my.json` measures it, "
            f"then --device my.json); said once per machine")  # fmt: skip
