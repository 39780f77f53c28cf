"""One loader for policy config files, used by every command: what `sparkv tune` writes, a saved Result's
policy settings, or a bare object of a policy's config fields."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError
from sparkv.policies import POLICIES, Policy, make_policy


def config_class(policy: str) -> type:
    """The config dataclass a registered policy takes as its `config` argument."""
    factory = POLICIES.get(policy)
    if factory is None:
        raise UserError(f"unknown policy {policy!r}; choose from {', '.join(sorted(POLICIES))}")
    target = getattr(factory, "__init__", factory) if isinstance(factory, type) else factory
    try:
        hint = typing.get_type_hints(target).get("config")
    except (NameError, TypeError):
        hint = None
    for cls in (hint, *typing.get_args(hint)):
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            return cls
    raise UserError(f"policy {policy!r} takes no config dataclass (no `config: SomeConfig` argument)")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dict(config.to_dict()) if hasattr(config, "to_dict") else dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    try:
        return cls.from_dict(data) if hasattr(cls, "from_dict") else cls(**data)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{cls.__name__}: bad config {data}: {exc}") from exc


@dataclass(frozen=True)
class PolicyConfigFile:
    """A policy name and the `make_policy` options a config file gives it."""

    policy: str  # registered policy name
    options: dict[str, Any]  # keyword arguments for make_policy, e.g. {"config": SparKVConfig(...)}
    source: str = ""  # the file it came from

    def make(self) -> Policy:
        return make_policy(self.policy, **self.options)


def load_policy_config(path: Path | str, policy: str | None = None) -> PolicyConfigFile:
    """The policy config in a JSON file, for `make_policy`.

    Accepts what `sparkv tune` writes and what a Result holds (`{"policy": {"name": ..., fields}}`, at the
    top or under "config"), or a bare object of config fields (for `policy`, default "sparkv").
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read policy config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"policy config {path}: expected a JSON object")
    if isinstance(data.get("config"), dict) and isinstance(data["config"].get("policy"), dict):
        data = data["config"]  # a saved Result
    fields = dict(data["policy"]) if isinstance(data.get("policy"), dict) else dict(data)
    name = str(fields.pop("name", None) or policy or "sparkv")
    if policy and name != policy:
        raise UserError(f"policy config {path} is for policy {name!r}, not {policy!r}")
    return PolicyConfigFile(name, {"config": config_from_dict(config_class(name), fields)}, str(path))


def resolve_policy(name: str) -> tuple[str, dict[str, Any]]:
    """(registered name, options) of a policy name or a policy config JSON file, either with an objective
    after it in brackets (`sparkv[energy]`, `tuned.json[weighted:0.5]`)."""
    from sparkv.policies import check_policy
    from sparkv.policies.objective import split_policy_objective, with_objective

    try:
        base, objective = split_policy_objective(name)
    except ValueError as exc:
        raise UserError(f"policy {name!r}: {exc}") from None
    if objective is not None:
        registered, options = resolve_policy(base)
        if registered != "sparkv":
            raise UserError(f"policy {name!r} takes no objective (only sparkv plans by one)")
        return registered, with_objective(options, objective)
    if name.endswith(".json"):
        loaded = load_policy_config(name)
        return loaded.policy, dict(loaded.options)
    check_policy(name)
    return name, {}
