"""Tuning: parameter encoding, search spaces, the optimiser on a stand-in policy, config files, the CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from sparkv import cli
from sparkv.analysis.backends import LocalBackend
from sparkv.analysis.tune import SPACES, Param, Tuner, default_space, parse_param, search_space
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.policies import POLICIES, make_policy
from sparkv.policies.base import RequestContext
from sparkv.policies.baselines import StaticSplit
from sparkv.policies.config_file import config_class, load_policy_config

DEVICE = "analytic-cpu-2core"


@dataclass(frozen=True)
class ToyConfig:
    """Stand-in for a policy config: the share of chunks computed, plus fields of every tunable kind."""

    compute_fraction: float = 0.5
    layers: int = 4
    greedy: bool = False
    order: str = "front"
    label: str = "toy"  # not tunable (a free string)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToyConfig:
        return cls(**data)


class ToyPolicy(StaticSplit):
    """Chunks [0, fraction x C) computed, the rest streamed."""

    name = "toy"

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or ToyConfig()

    def on_begin(self, ctx: RequestContext) -> None:
        super().on_begin(ctx)
        self.split = round(self.cfg.compute_fraction * ctx.request.num_chunks)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.cfg.to_dict()}


POLICIES["toy"] = ToyPolicy  # registered at import, so worker processes that unpickle tasks see it too
TOY_SPACE = [Param("compute_fraction", "float", 0.0, 1.0), Param("greedy", "bool"),
             Param("order", "enum", choices=("front", "back"))]  # fmt: skip


def scenarios(*traces: str) -> list[Scenario]:
    return [Scenario(device=DEVICE, context_tokens=4096, chunk_tokens=512, trace=t) for t in traces]


def test_params_round_trip() -> None:
    p = Param("x", "float", 0.01, 10.0, log=True)
    assert p.decode(0.0) == pytest.approx(0.01) and p.decode(1.0) == pytest.approx(10.0)
    assert p.decode(p.encode(0.3)) == pytest.approx(0.3)
    assert Param("n", "int", 1, 6).decode(0.5) in (3, 4)
    assert Param("b", "bool").decode(Param("b", "bool").encode(True)) is True
    e = Param("e", "enum", choices=("a", "b", "c"))
    assert [e.decode(e.encode(v)) for v in "abc"] == ["a", "b", "c"]
    with pytest.raises(UserError):
        Param("x", "float", 0.0, 1.0, log=True)


def test_spaces_from_config_class() -> None:
    assert config_class("toy") is ToyConfig
    names = {p.name: p for p in default_space(ToyConfig)}
    assert set(names) == {"compute_fraction", "layers", "greedy"}  # numbers and bools; no free strings
    assert names["layers"].kind == "int" and names["layers"].low == 1 and names["layers"].high == 16
    assert parse_param("order=front|back", ToyConfig).choices == ("front", "back")
    assert parse_param("layers=1:8", ToyConfig).kind == "int"
    with pytest.raises(UserError, match="field"):
        parse_param("nope=1:2", ToyConfig)
    with pytest.raises(UserError, match="no config dataclass"):
        config_class("local")


def test_sparkv_space_is_valid_for_its_config() -> None:
    if "sparkv" not in POLICIES:
        pytest.skip("the SparKV policy is not registered")
    cls = config_class("sparkv")
    space = search_space("sparkv")
    assert {p.name for p in space} == set(SPACES["sparkv"])
    for u in (0.0, 0.5, 1.0):  # every corner of the space is a valid config
        cls.from_dict({**cls().to_dict(), **{p.name: p.decode(u) for p in space}})


def test_tuning_beats_default_and_is_seeded() -> None:
    train = scenarios("const:5mbps", "steps:3s@2mbps,3s@10mbps")  # best: ~7/8 of the chunks computed
    runs = []
    for _ in range(2):
        tuner = Tuner("toy", TOY_SPACE, train, ToyConfig().to_dict())
        best, info = tuner.optimise(budget=30, seed=3)
        runs.append(best)
        default, tuned = tuner.evaluate([ToyConfig().to_dict(), best])
        assert tuned <= default and info["evaluations"] >= 15
    assert runs[0] == runs[1]
    assert runs[0]["compute_fraction"] != 0.5 and runs[0]["label"] == "toy"


def test_parallel_evaluation_matches_serial() -> None:
    configs = [{**ToyConfig().to_dict(), "compute_fraction": f} for f in (0.0, 0.5, 1.0)]
    train = scenarios("const:20mbps", "const:5mbps")
    serial = Tuner("toy", TOY_SPACE, train, ToyConfig().to_dict()).evaluate(configs)
    backend = LocalBackend(2)
    try:
        pooled = Tuner("toy", TOY_SPACE, train, ToyConfig().to_dict(), backend=backend).evaluate(configs)
    finally:
        backend.close()
    assert pooled == serial


def test_energy_weight_and_stalls_shape_the_objective() -> None:
    train = scenarios("steps:1s@1KB/s,900s@0bps")  # streaming never finishes
    tuner = Tuner("toy", TOY_SPACE, train, ToyConfig().to_dict(), energy_weight=0.01)
    stream_all, local_all = tuner.evaluate([{**ToyConfig().to_dict(), "compute_fraction": f} for f in (0.0, 1.0)])
    assert stream_all == 7200.0  # the stall penalty
    values = tuner.run_values([{**ToyConfig().to_dict(), "compute_fraction": 1.0}], train)
    assert local_all == pytest.approx(values[0, 0, 0] + 0.01 * values[0, 0, 1])


def test_policy_config_files(tmp_path: Path) -> None:
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"compute_fraction": 0.25}))
    loaded = load_policy_config(bare, "toy")
    assert loaded.options["config"] == ToyConfig(compute_fraction=0.25)
    assert loaded.make().config()["compute_fraction"] == 0.25
    result_like = tmp_path / "result.json"
    result_like.write_text(json.dumps({"config": {"policy": {"name": "toy", **ToyConfig(layers=2).to_dict()}}}))
    assert load_policy_config(result_like).options["config"].layers == 2
    with pytest.raises(UserError, match="not 'sparkv'"):
        load_policy_config(result_like, "sparkv")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policy": {"name": "toy", "nope": 1}}))
    with pytest.raises(UserError, match="bad config"):
        load_policy_config(bad)


def test_cli_tunes_splits_and_saves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setattr(cli, "_COMMANDS", ("tune", "sweep"))
    main: Callable[[list[str]], int] = cli.main
    out = tmp_path / "tuned.json"
    argv = ["tune", "--policy", "toy", "--param", "compute_fraction=0:1", "--fix", "greedy=true",
            "--trace", "const:40mbps", "--trace", "const:20mbps", "--trace", "steps:2s@30mbps,2s@60mbps",
            "--test-fraction", "0.34", "--device", DEVICE, "--context-tokens", "2048", "--budget", "12",
            "--bandwidth-scale", "0.5,1", "--jobs", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "held-out traces (1)" in text and "training traces (2)" in text and "held-out" in text
    doc = json.loads(out.read_text())
    assert doc["policy"]["name"] == "toy" and doc["policy"]["greedy"] is True
    assert len(doc["training"]["train_traces"]) == 2 and len(doc["training"]["test_traces"]) == 1
    assert doc["training"]["bandwidth_scales"] == [0.5, 1.0]
    assert [p["name"] for p in doc["space"]] == ["compute_fraction", "layers"]
    assert {r["set"] for r in doc["results"]} == {"train", "held-out"}
    assert not math.isnan(doc["results"][1]["tuned"])
    assert load_policy_config(out).options["config"].greedy is True
    assert main([*argv[:-2], "--bandwidth-scale", "1,x", "--out", str(out)]) == 2  # one line, no traceback
    assert "--bandwidth-scale" in capsys.readouterr().err
    # a sweep can run the tuned config file as a policy
    sweep_out = tmp_path / "sw"
    assert main(["sweep", "--trace", "const:20mbps", "--device", DEVICE, "--context-tokens", "2048", "--policy",
                 f"toy,{out}", "--jobs", "1", "--out", str(sweep_out)]) == 0  # fmt: skip
    policies = [r.split(",")[2] for r in (sweep_out / "results.csv").read_text().splitlines()[1:]]
    assert policies == ["toy", "toy:tuned"]
    assert make_policy("toy", **load_policy_config(out).options).cfg.greedy is True
