"""Device profiles: one JSON file per (device, model or any model), read by the simulator and planners.

A profile records where its numbers came from: the device, model, dtype, threads and library
versions it was measured with (kind "measured"), or the published figures it was built from (kind
"analytic"). A measured profile is valid for one device and one attention implementation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.cost_models.compute import FittedCompute, RooflineCompute, TableCompute, compute_model_from_dict
from sparkv.cost_models.energy import ComputePower


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: str  # "measured" or "analytic"
    device: str  # human description of the hardware
    compute: FittedCompute | TableCompute | RooflineCompute
    power: ComputePower
    install_s_per_byte: float = 0.0  # receive-side decode + copy into the cache, per wire byte
    install_fixed_s: float = 0.0  # per transfer, receive side
    model: str | None = None  # model it is valid for (None: any model spec)
    dtype: str = "float32"
    threads: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    valid_for: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    fit_error: dict[str, float] = field(default_factory=dict)  # held-out error of the fit
    link: dict[str, float] = field(default_factory=dict)  # calibrated link constants, if measured
    # calibrations by real link kind ("pacing", "netns"): each kind has its own round trip, goodput and
    # receive contention; `link` is the one the simulator uses when a scenario names no kind
    links: dict[str, dict[str, float]] = field(default_factory=dict)
    install_by_codec: dict[str, dict[str, float]] = field(default_factory=dict)  # codec -> fixed_s, s_per_byte
    measurements: dict[str, Any] = field(default_factory=dict)  # raw samples and fit details, for reports

    def install_cost(self, codec: str) -> tuple[float, float]:
        """(fixed seconds per transfer, seconds per wire byte) to decode and install cells of `codec`.

        Uses the measured entry for the codec (or for its part before "+", e.g. "int8" for "int8+zstd"
        when only that was measured), else the profile's defaults.
        """
        for key in (codec, codec.split("+")[0], codec.split(":")[0]):
            entry = self.install_by_codec.get(key)
            if entry:
                return float(entry.get("fixed_s", 0.0)), float(entry["s_per_byte"])
        return self.install_fixed_s, self.install_s_per_byte

    def link_for(self, kind: str) -> dict[str, float] | None:
        """The calibration measured on real links of `kind` ("pacing", "netns"; "pacing (why)" counts as
        pacing and "netns-tbf", the executor link's own name, as netns), or None when this profile has none."""
        base = kind.split(" ")[0].split("-")[0]
        if base in self.links:
            return self.links[base]
        if self.link and str(self.link.get("kind", "")) == base:
            return self.link
        return None

    def on_link(self, kind: str) -> DeviceProfile:
        """This profile with `link` set to the calibration of `kind` (unchanged when it has none)."""
        cal = self.link_for(kind)
        return self if cal is None or cal is self.link else replace(self, link=dict(cal))

    def check_model(self, spec: ModelSpec) -> None:
        """A fitted profile describes one model; refuse to apply it to another."""
        measured = isinstance(self.compute, FittedCompute | TableCompute)
        if self.model is not None and measured and self.model != spec.name:
            raise UserError(
                f"device profile {self.name!r} was measured with model {self.model!r}, not {spec.name!r}; "
                "use an analytic profile or profile this model (`sparkv profile`)"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.links:  # profiles without per-kind calibrations keep their old form
            del out["links"]
        out["compute"] = self.compute.to_dict()
        out["power"] = self.power.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceProfile:
        data = dict(data)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown profile keys {sorted(unknown)}")
        data["compute"] = compute_model_from_dict(data["compute"])
        data["power"] = ComputePower(**data["power"])
        return cls(**data)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def builtin_profile_names() -> list[str]:
    folder = resources.files("sparkv") / "data" / "profiles"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str) -> DeviceProfile:
    """A built-in profile by name, or a profile JSON file."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        text = path.read_text()
    else:
        res = resources.files("sparkv") / "data" / "profiles" / f"{name_or_path}.json"
        if not res.is_file():
            raise UserError(
                f"unknown device profile {name_or_path!r}; built-in: {', '.join(builtin_profile_names())} "
                "(or give a profile .json path)"
            )
        text = res.read_text()
    try:
        return DeviceProfile.from_dict(json.loads(text))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"device profile {name_or_path!r} is malformed: {exc}") from exc
