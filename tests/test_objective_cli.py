"""`--objective` on every command that runs the sparkv policy: one parser, names `sparkv[OBJECTIVE]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.analysis.sweep import make_named_policy, policy_factory, sweep_label
from sparkv.api.basics import policy_label, resolve_policy
from sparkv.cli import build_parser
from sparkv.commands.sweep import with_objectives
from sparkv.core.errors import UserError
from sparkv.policies.controller import SparKVConfig
from sparkv.policies.objective import objective_name, split_policy_objective


@pytest.mark.parametrize("command", ["run", "simulate", "validate", "evaluate", "sweep", "tune"])
def test_every_command_takes_the_same_objective_flag(command: str) -> None:
    parser = build_parser()
    extra = ["--trace", "lte:seed=1"] if command == "tune" else []
    args = parser.parse_args([command, *extra, "--objective", "Weighted:0.50"])
    value = args.objective
    assert (value[0] if isinstance(value, list) else value) == "weighted:0.5"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *extra, "--objective", "fastest"])


def test_policy_names_carry_an_objective() -> None:
    assert split_policy_objective("sparkv[Energy]") == ("sparkv", "energy")
    assert split_policy_objective("sparkv") == ("sparkv", None)
    assert objective_name("sparkv", "ttft") == "sparkv"
    assert objective_name("sparkv", "budget:3") == "sparkv[budget:3]"
    name, options = resolve_policy("sparkv[energy]")
    assert (name, options) == ("sparkv", {"objective": "energy"})
    assert policy_label("sparkv[weighted:0.5]") == "sparkv[weighted:0.5]"
    assert policy_factory("sparkv[energy]") == ("sparkv", {"objective": "energy"})
    assert sweep_label("sparkv[energy]") == "sparkv[energy]"
    assert make_named_policy("sparkv[energy]").config()["objective"] == "energy"
    for bad in ("cake[energy]", "sparkv[fastest]"):
        with pytest.raises(UserError):
            resolve_policy(bad)
        with pytest.raises(UserError):
            policy_factory(bad)


def test_a_config_file_keeps_its_fields_under_an_objective(tmp_path: Path) -> None:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"policy": {"name": "sparkv", "min_gain": 0.05}}))
    name, options = resolve_policy(f"{path}[energy]")
    assert name == "sparkv"
    assert options["config"] == SparKVConfig(min_gain=0.05, objective="energy")
    assert policy_label(f"{path}[energy]") == "sparkv:tuned[energy]"


def test_sweep_runs_each_sparkv_entry_once_per_objective() -> None:
    assert with_objectives(["local", "sparkv", "cake"], ["ttft", "energy"]) == ["local", "sparkv", "sparkv[energy]",
                                                                              "cake"]  # fmt: skip


def test_run_names_the_sparkv_policy_by_its_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sparkv run --objective energy` hands the real run `sparkv[energy]` (it is no longer refused)."""
    import sparkv.api as api

    seen: dict[str, list[str]] = {}

    class Stop(Exception):
        pass

    def fake_run_real(scenario: object, names: list[str], **_: object) -> None:
        seen["names"] = list(names)
        raise Stop

    monkeypatch.setattr(api, "run_real", fake_run_real)
    args = build_parser().parse_args(["run", "--policy", "cake", "--policy", "sparkv", "--objective", "energy"])
    with pytest.raises(Stop):
        args.func(args)
    assert seen["names"] == ["cake", "sparkv[energy]"]

