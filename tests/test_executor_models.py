"""Model loading: tiny random models, local directories, errors, and (slow) the real SmolLM2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sparkv.core.errors import UserError
from sparkv.executor.model.models import load_model, tiny_model, tiny_model_dir


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
def test_tiny_model_spec(family: str) -> None:
    loaded = tiny_model(family, num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=2)
    spec = loaded.spec
    assert (spec.num_layers, spec.hidden_size, spec.head_dim, spec.dtype) == (3, 32, 8, "float32")
    assert spec.num_kv_heads == (4 if family == "gpt2" else 2)
    assert spec.gated_mlp == (family != "gpt2")
    assert not loaded.model.training
    assert loaded.tokenizer is None and loaded.device == "cpu"
    assert loaded.model_id.startswith(f"tiny-{family}-float32-")


def test_model_id_is_stable_and_tracks_weights_and_dtype() -> None:
    a, b = tiny_model(seed=0), tiny_model(seed=0)
    assert a.model_id == b.model_id
    assert tiny_model(seed=1).model_id != a.model_id
    assert tiny_model(num_layers=5).model_id != a.model_id
    half = tiny_model(seed=0, dtype="float16")
    assert half.model_id != a.model_id and half.model_id.split("-")[-1] == a.model_id.split("-")[-1]
    assert next(half.model.parameters()).dtype == torch.float16 and half.spec.dtype == "float16"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_load_local_dir(tmp_path: Path, family: str) -> None:
    path = tiny_model_dir(tmp_path / f"tiny-{family}", family, num_layers=2)
    first, again = load_model(str(path)), load_model(str(path))
    assert first.spec.num_layers == 2 and first.spec.name == f"tiny-{family}"
    assert first.model_id == again.model_id
    ids = torch.arange(10)[None]
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, again.model(ids).logits)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(UserError, match="unknown model"):
        load_model(str(tmp_path))  # a directory without config.json
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("smollm2", dtype="int8")
    with pytest.raises(UserError, match="unknown device"):
        load_model("smollm2", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_model("smollm2", device="cuda")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="supported"):
        load_model(str(tmp_path))


def test_encode_needs_tokenizer() -> None:
    with pytest.raises(UserError, match="no tokenizer"):
        tiny_model().encode("hello")


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPARKV_SLOW") != "1", reason="set SPARKV_SLOW=1 to load the real SmolLM2")
def test_smollm2_loads() -> None:
    loaded = load_model("smollm2")
    assert loaded.spec.num_layers == 30 and loaded.spec.num_kv_heads == 3 and loaded.spec.head_dim == 64
    assert loaded.model_id.startswith("smollm2-135m-instruct-float32-")
    assert len(loaded.encode("The capital of France is")) > 3
