"""The transformers compatibility seam: our own calls take no deprecated path on the installed transformers,
and the seam reads what each version documents (tiny random models, no downloads)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from sparkv.analysis.quality import generate_on_kv
from sparkv.executor.model.hf_compat import (
    attention_scaling,
    cache_keyword,
    cache_layer_kv,
    dtype_kwargs,
    forward_with_cache,
    new_dynamic_cache,
)
from sparkv.executor.model.models import LoadedModel, tiny_model
from sparkv.executor.model.prefill import LayerwisePrefill, full_prefill_reference, reference_kv

FAMILIES = ("llama", "qwen2", "mistral", "gpt2")


@contextmanager
def deprecations_are_errors() -> Iterator[None]:
    """transformers warns of a deprecated keyword or attribute with a FutureWarning (stacklevel: the caller's
    module) or a DeprecationWarning; inside this block either one raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unrelated warnings (torch, tokenizers) stay out of the way
        warnings.filterwarnings("error", category=FutureWarning)
        warnings.filterwarnings("error", category=DeprecationWarning, module=r"(transformers|sparkv)")
        yield


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request: pytest.FixtureRequest) -> LoadedModel:
    with deprecations_are_errors():  # building the model from a config takes no deprecated keyword either
        return tiny_model(request.param, num_layers=2, initializer_range=0.1)


def test_reference_prefill_and_generation_raise_no_deprecation(loaded: LoadedModel) -> None:
    context, query = _ids(40, 1), _ids(6, 2)
    with deprecations_are_errors():
        kv = reference_kv(loaded, context)
        full_kv, tokens = full_prefill_reference(loaded, context, query, n_new=3)
        gen = generate_on_kv(loaded, kv, query, new_tokens=3)
        layerwise = LayerwisePrefill(loaded, context, query, chunk_tokens=20, max_new_tokens=3)
        for chunk in range(layerwise.num_chunks):
            layerwise.compute(chunk, 0, layerwise.num_layers)
        for layer in range(layerwise.num_layers):
            layerwise.query_layer(layer)
        layerwise_tokens = [layerwise.first_token(), *layerwise.generate(2)]
    spec = loaded.spec
    assert len(kv) == spec.num_layers and kv[0][0].shape == (spec.num_kv_heads, 40, spec.head_dim)
    assert full_kv[0][0].shape[1] == 46 and len(tokens) == 3
    assert gen.tokens == tokens  # the query on top of the context's KV continues exactly like one full prefill
    assert layerwise_tokens == tokens  # and so does the layer-wise prefill from the model's own modules
    for (k, v), (k_ref, v_ref) in zip(layerwise.cache_tensors(), full_kv, strict=True):
        torch.testing.assert_close(k, k_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v, v_ref, rtol=1e-4, atol=1e-4)


def test_the_deprecated_spelling_would_be_caught(loaded: LoadedModel) -> None:
    """Where the installed transformers renamed the cache keyword, its old spelling raises inside the block:
    the test above can fail."""
    if cache_keyword(loaded.model) == "past_key_values":
        pytest.skip("this transformers takes past_key_values: nothing deprecated to catch")
    with deprecations_are_errors(), pytest.raises(FutureWarning, match="past_key_values"):
        loaded.model(input_ids=_ids(4, 3)[None], past_key_values=new_dynamic_cache(), use_cache=True)


def test_cache_keyword_is_one_the_forward_names(loaded: LoadedModel) -> None:
    for model in (loaded.model, loaded.model.base_model):
        name = cache_keyword(model)
        assert name in inspect.signature(type(model).forward).parameters


def test_cache_layer_kv_reads_a_filled_cache_and_the_old_layout(loaded: LoadedModel) -> None:
    cache = new_dynamic_cache()
    with torch.inference_mode():
        forward_with_cache(loaded.model, cache, _ids(8, 4)[None], logits_to_keep=1)
    pairs = cache_layer_kv(cache)
    assert len(pairs) == loaded.spec.num_layers
    assert all(k.shape[-2] == 8 and v.shape == k.shape for k, v in pairs)
    k, v = torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 3, 4)
    old = SimpleNamespace(key_cache=[k], value_cache=[v])  # before the per-layer objects
    assert cache_layer_kv(old) == [(k, v)]


def test_dtype_keyword_follows_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.55.2")
    assert dtype_kwargs(torch.float16) == {"torch_dtype": torch.float16}
    monkeypatch.setattr(transformers, "__version__", "5.0.0rc1")
    assert dtype_kwargs(torch.float16) == {"dtype": torch.float16}


def test_attention_scaling_is_the_modules_own_or_gpt2s_rule() -> None:
    assert attention_scaling(SimpleNamespace(scaling=0.125, head_dim=4)) == 0.125
    gpt2 = {"head_dim": 16, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "layer_idx": 2}
    assert attention_scaling(SimpleNamespace(**gpt2)) == 0.25  # GPT-2 modules before 5.0 carry no `scaling`
    assert attention_scaling(SimpleNamespace(**{**gpt2, "scale_attn_by_inverse_layer_idx": True})) == 0.25 / 3
    assert attention_scaling(SimpleNamespace(**{**gpt2, "scale_attn_weights": False})) == 1.0
