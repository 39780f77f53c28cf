"""Device profiles: JSON round trip, per-codec install costs, refusal to apply a fitted profile to another
model, and every built-in profile loading and building a cost table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkv.core.config import LinkConfig
from sparkv.core.errors import UserError
from sparkv.core.model import BUILTIN_SPECS
from sparkv.core.request import Request
from sparkv.cost_models.compute import FittedCompute
from sparkv.cost_models.energy import ComputePower
from sparkv.cost_models.profiles import DeviceProfile, builtin_profile_names, load_profile
from sparkv.cost_models.table import build_cost_table

SMOL = BUILTIN_SPECS["smollm2-135m"]


def fitted_profile() -> DeviceProfile:
    return DeviceProfile(
        name="test-cpu",
        kind="measured",
        device="a test CPU",
        compute=FittedCompute("smollm2-135m", 4e-3, 7e-5, 3e-8, launch_s=1e-3, lm_head_s=0.01, per_past_s=1e-7),
        power=ComputePower(10.0, 2.0, "estimate"),
        install_s_per_byte=1e-9,
        install_fixed_s=1e-4,
        model="smollm2-135m",
        threads=2,
        versions={"torch": "x"},
        fit_error={"heldout_median": 0.02, "heldout_p90": 0.05},
        install_by_codec={"fp16": {"fixed_s": 2e-4, "s_per_byte": 2e-9}, "int8": {"fixed_s": 3e-4, "s_per_byte": 5e-9}},
        measurements={"fit": {"terms": ["fixed", "per_token", "per_attn", "per_past"]}},
    )


def test_json_round_trip(tmp_path: Path) -> None:
    profile = fitted_profile()
    path = profile.save(tmp_path / "p.json")
    again = load_profile(str(path))
    assert again == profile
    assert again.compute.layer_s(SMOL, 512, 1024) == profile.compute.layer_s(SMOL, 512, 1024)


def test_install_cost_per_codec() -> None:
    profile = fitted_profile()
    assert profile.install_cost("int8") == (3e-4, 5e-9)
    assert profile.install_cost("int8+zstd") == (3e-4, 5e-9)  # falls back to the base codec
    assert profile.install_cost("int4") == (1e-4, 1e-9)  # not measured: profile defaults
    link = LinkConfig(rtt_s=0.01, per_transfer_s=0.0)
    table = build_cost_table(Request(2048, 16, 512), SMOL, profile, link, "int8", 1e6)
    assert table.install_s_per_byte == 5e-9 and table.transfer_fixed_s == pytest.approx(0.01 + 3e-4)


def test_fitted_profile_refuses_another_model() -> None:
    profile = fitted_profile()
    with pytest.raises(UserError, match="measured with model"):
        build_cost_table(Request(2048, 16, 512), BUILTIN_SPECS["llama-3.1-8b"], profile, LinkConfig(), "fp16", 1e6)
    profile.check_model(SMOL)  # its own model is fine


def test_malformed_and_unknown_profiles(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    with pytest.raises(UserError, match="malformed"):
        load_profile(str(bad))
    extra = fitted_profile().to_dict() | {"surprise": 1}
    with pytest.raises(ValueError, match="unknown profile keys"):
        DeviceProfile.from_dict(extra)
    with pytest.raises(UserError, match="unknown device profile"):
        load_profile("no-such-device")


@pytest.mark.parametrize("name", builtin_profile_names())
def test_builtin_profiles_build_cost_tables(name: str) -> None:
    profile = load_profile(name)
    spec = BUILTIN_SPECS[profile.model] if profile.model else BUILTIN_SPECS["llama-3.2-1b"]
    table = build_cost_table(Request(4096, 64, 512), spec, profile, LinkConfig(), "fp16", 1e6)
    assert (table.compute_cell_s > 0).all() and table.first_token_s > 0
    assert profile.sources, f"{name} states no sources"
    if profile.kind == "measured":
        assert profile.fit_error["heldout_median"] < 0.5 and profile.versions.get("torch")
