"""Per-layer KV bit allocation: sensitivity per layer, greedy choice under a byte budget, the codec name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparkv.analysis.layer_bits import allocate_layer_codecs, layer_codec_name, layer_sensitivity
from sparkv.cost_models.codecs import get_codec
from sparkv.executor.model.models import tiny_model
from sparkv.executor.model.prefill import reference_kv

NAMES = ("int4", "int8")


def test_budget_goes_to_the_sensitive_layers() -> None:
    sens = np.array([[0.5, 0.01], [0.02, 0.0], [0.3, 0.02], [0.01, 0.0]])  # layers 0 and 2 suffer from int4
    wire = np.array([[1.0, 2.0]] * 4)
    alloc = allocate_layer_codecs(sens, wire, budget_bytes=6.0, names=NAMES)
    assert alloc.choice == (1, 0, 1, 0) and alloc.bytes == 6.0
    assert alloc.predicted_kl_nats == pytest.approx(0.01 + 0.02 + 0.02 + 0.01)
    assert alloc.codec == "int8:0,int8:2,int4"
    assert get_codec(alloc.codec).name  # a name the codec grammar accepts
    everything = allocate_layer_codecs(sens, wire, budget_bytes=100.0, names=NAMES)
    assert everything.choice == (1, 1, 1, 1) and everything.codec == "int8"
    with pytest.raises(ValueError, match="exceeds the budget"):
        allocate_layer_codecs(sens, wire, budget_bytes=3.0, names=NAMES)


def test_codec_name_ranges() -> None:
    assert layer_codec_name([1, 1, 0, 0, 0, 1], NAMES) == "int8:0-1,int8:5,int4"
    assert layer_codec_name([0, 0], NAMES) == "int4"


def test_sensitivity_is_zero_for_lossless_and_positive_for_lossy() -> None:
    loaded = tiny_model("llama", initializer_range=0.1)
    ids = torch.randint(0, 256, (80,), generator=torch.Generator().manual_seed(5))
    queries = [ids[:6], ids[10:14]]
    sens = layer_sensitivity(loaded, reference_kv(loaded, ids), queries, ["fp32", "int4"], chunk_tokens=32)
    assert sens.shape == (4, 2)
    assert np.allclose(sens[:, 0], 0.0, atol=1e-7) and (sens[:, 1] > 1e-6).all()
