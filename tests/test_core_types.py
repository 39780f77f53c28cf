"""Model specs, requests, events and results: construction, validation, serialisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sparkv.core import events as ev
from sparkv.core.config import Scenario
from sparkv.core.costs import CostTable
from sparkv.core.errors import UserError
from sparkv.core.model import BUILTIN_SPECS, ModelSpec, resolve_model_spec
from sparkv.core.request import CellBlock, Request
from sparkv.core.result import Result, Span


def test_smollm2_kv_bytes() -> None:
    spec = BUILTIN_SPECS["smollm2-135m"]
    assert spec.kv_bytes_per_token_layer == 2 * 3 * 64 * 2
    assert spec.kv_bytes_per_token == 2 * 3 * 64 * 2 * 30


def test_spec_from_hf_config_and_dir(tmp_path: Path) -> None:
    cfg = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = resolve_model_spec(str(tmp_path))
    assert (spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.dtype) == (4, 2, 16, "bfloat16")
    gpt2 = ModelSpec.from_hf_config({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4,
                                     "vocab_size": 50})
    assert gpt2.num_kv_heads == 4 and not gpt2.gated_mlp
    newer = {**cfg, "dtype": "float32"}  # transformers >= 4.56 saves "dtype" in place of "torch_dtype"
    del newer["torch_dtype"]
    assert ModelSpec.from_hf_config(newer).dtype == "float32"


def test_unknown_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown model"):
        resolve_model_spec("no-such-model")


def test_flops_grow_with_past() -> None:
    spec = BUILTIN_SPECS["llama-3.2-1b"]
    assert spec.layer_flops(512, 4096) > spec.layer_flops(512, 0) > 2 * spec.layer_params * 512 - 1


def test_request_chunks() -> None:
    r = Request(context_tokens=1000, chunk_tokens=300)
    assert r.num_chunks == 4 and r.chunk_len(3) == 100 and r.chunk_start(2) == 600
    with pytest.raises(ValueError, match="context_tokens"):
        Request(context_tokens=0)


def test_events_round_trip() -> None:
    block = CellBlock(0, 2, 1, 3)
    items = [ev.TransferDone(1.5, block, 10, 0.5), ev.Tick(2.0), ev.Fetch(block), ev.Cancel(block),
             ev.BandwidthSample(1.0, 5, 0.1), ev.QueryLayerDone(3.0, 2, 0.01)]
    for item in items:
        assert ev.from_dict(json.loads(json.dumps(ev.to_dict(item)))) == item
    with pytest.raises(ValueError, match="unknown event"):
        ev.from_dict({"type": "Nope"})


def test_result_round_trip(tmp_path: Path) -> None:
    spans = [Span("link", "fetch", 0.0, 1.0, CellBlock(0, 1, 0, 2), 100), Span("compute", "query", 1.0, 1.1, layer=0)]
    r = Result("sim", "local", 1.2, {"radio": 1.0, "compute": 2.0}, spans, {"scenario": Scenario().to_dict()})
    back = Result.load(r.save(tmp_path / "r.json"))
    assert back.to_dict() == r.to_dict() and back.energy_total_j == 3.0
    r.write_timeline_csv(tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().count("\n") == 3


def test_cost_table_round_trip_and_shapes() -> None:
    t = CostTable(np.ones((2, 3)), 0.1, np.full((2, 3), 10), 0.01, 0.0, np.ones(3), 0.2, 1e6)
    assert CostTable.from_dict(t.to_dict()).to_dict() == t.to_dict()
    assert t.compute_s(CellBlock(0, 2, 0, 3)) == pytest.approx(6.1)
    with pytest.raises(ValueError, match="one entry per layer"):
        CostTable(np.ones((2, 3)), 0.1, np.full((2, 3), 10), 0.01, 0.0, np.ones(2), 0.2, 1e6)


def test_scenario_round_trip_and_with() -> None:
    s = Scenario().with_(rtt_s=0.05, context_tokens=100)
    assert s.link.rtt_s == 0.05 and s.context_tokens == 100
    assert Scenario.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="unknown scenario keys"):
        Scenario.from_dict({"bogus": 1})


def test_a_partial_failure_round_trips_and_splits() -> None:
    from sparkv.core.events import TransferFailed, from_dict, to_dict
    from sparkv.core.request import CellBlock

    block = CellBlock(2, 5, 1, 4)
    head, tail = block.split_after(7)
    assert head == (CellBlock(2, 4, 1, 4), CellBlock(4, 5, 1, 2)) and tail == (CellBlock(4, 5, 2, 4),)
    assert block.split_after(0) == ((), (block,)) and block.split_after(9) == ((block,), ())
    event = TransferFailed(1.5, block, 300, "server gone", head)
    assert from_dict(to_dict(event)) == event
    assert from_dict(to_dict(TransferFailed(1.0, block, 0, "x"))).delivered == ()
