"""Loading the Hugging Face causal LM the real executor runs: SmolLM2, any local model directory, or a
tiny random-weight model for tests.

Supported families are those `sparkv.executor.model.prefill_layers` can run layer by layer: Llama, Qwen2,
Mistral (including SmolLM2, a Llama) and GPT-2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.executor.model.hf_compat import dtype_kwargs
from sparkv.executor.model.smollm2 import SMOLLM2_NAME, SMOLLM2_NAMES, ensure_smollm2, library_bars_off

SUPPORTED_TYPES = ("llama", "qwen2", "mistral", "gpt2")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# Config keys that name a copy or a run rather than the model itself; left out of the model's identity.
_VOLATILE_KEYS = (
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_internal",
    "_commit_hash",
    "architectures",
    "quantization_config",
)


@dataclass(eq=False)
class LoadedModel:
    """A causal LM in eval mode on its device, with its spec and a stable identity."""

    model: Any  # transformers PreTrainedModel (…ForCausalLM), eval mode
    tokenizer: Any  # transformers tokenizer, or None for tiny random models
    spec: ModelSpec  # shape; spec.dtype is the dtype the model runs and caches in
    model_id: str  # "<name>-<dtype>-<hash of config and weights>": same weights, same id
    device: str  # "cpu" or "cuda[:n]"

    @property
    def dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.spec.dtype]

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    def encode(self, text: str, max_tokens: int | None = None) -> torch.Tensor:
        """Token ids [T] (int64, CPU) of `text`, truncated to `max_tokens`."""
        if self.tokenizer is None:
            raise UserError(f"model {self.model_id} has no tokenizer")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


def resolve_device(device: str) -> str:
    """The device string: "cpu", or "cuda[:n]" when CUDA is available; anything else is a UserError."""
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        return device
    raise UserError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in TORCH_DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[dtype]


def weight_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor's name, shape and up to 256 evenly strided values (as float32)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        sample = flat[::step][:256].to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def make_model_id(name: str, model: Any, dtype: str) -> str:
    """Stable identity: the name, the dtype and a hash of the architecture config and the weights."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_KEYS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(weight_fingerprint(model).encode())
    return f"{name}-{dtype}-{digest.hexdigest()[:12]}"


def _finish(model: Any, tokenizer: Any, name: str, device: str, dtype: str) -> LoadedModel:
    """Fingerprint (before the cast), cast, move, and describe a freshly built model."""
    model_type = str(model.config.model_type)
    if model_type not in SUPPORTED_TYPES:
        raise UserError(f"model {name!r} is a {model_type!r}; supported families: {', '.join(SUPPORTED_TYPES)}")
    model_id = make_model_id(name, model, dtype)
    model = model.to(device=device, dtype=resolve_dtype(dtype)).eval()
    spec = ModelSpec.from_hf_config(model.config.to_dict(), name=name, dtype=dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, model_id=model_id, device=device)


def load_model(name_or_dir: str = "smollm2", device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """SmolLM2-135M-Instruct ("smollm2", converted once to a local cache) or a local HF model directory."""
    device = resolve_device(device)
    resolve_dtype(dtype)
    if name_or_dir.lower() in SMOLLM2_NAMES:
        path, name = ensure_smollm2(), SMOLLM2_NAME
    else:
        path, name = Path(name_or_dir).expanduser(), Path(name_or_dir).name
        if not (path / "config.json").is_file():
            raise UserError(
                f"unknown model {name_or_dir!r}: not one of {', '.join(SMOLLM2_NAMES)} "
                "nor a directory holding a Hugging Face config.json"
            )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    library_bars_off()
    try:
        model_type = AutoConfig.from_pretrained(str(path)).model_type
        if model_type not in SUPPORTED_TYPES:
            raise UserError(f"model {name!r} is a {model_type!r}; supported: {', '.join(SUPPORTED_TYPES)}")
        model = AutoModelForCausalLM.from_pretrained(str(path), **dtype_kwargs(torch.float32))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model from {path}: {first}") from exc
    tokenizer = None
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    return _finish(model, tokenizer, name, device, dtype)


def tiny_config(
    family: str = "llama",
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 256,
    **overrides: Any,
) -> Any:
    """A small transformers config of `family` (llama, qwen2, mistral or gpt2)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if family == "gpt2":  # GPT-2 has no GQA: every head has its own K/V
        gpt2: dict[str, Any] = dict(
            n_layer=num_layers,
            n_embd=hidden_size,
            n_head=num_heads,
            vocab_size=vocab_size,
            n_positions=2048,
            bos_token_id=vocab_size - 1,
            eos_token_id=vocab_size - 1,
        )
        return GPT2Config(**{**gpt2, **overrides})
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
    if family not in classes:
        raise ValueError(f"unknown tiny model family {family!r}; use one of {[*classes, 'gpt2']}")
    base: dict[str, Any] = dict(
        num_hidden_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    return classes[family](**{**base, **overrides})


def _tiny_hf_model(family: str, seed: int, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, **dtype_kwargs(torch.float32))


def tiny_model(
    family: str = "llama",
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    **overrides: Any,
) -> LoadedModel:
    """A random-weight model (no tokenizer) for fast tests; same arguments, same weights."""
    model = _tiny_hf_model(
        family,
        seed,
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        vocab_size=vocab_size,
        **overrides,
    )
    return _finish(model, None, f"tiny-{family}", resolve_device(device), dtype)


def tiny_model_dir(
    path: str | Path, family: str = "llama", seed: int = 0, tokenizer: bool = False, **kwargs: Any
) -> Path:
    """Save a tiny random model with save_pretrained, to test loading a local directory; with `tokenizer`,
    also a byte-level tokenizer (one token per UTF-8 byte, ids 0-255), so text prompts work end to end."""
    path = Path(path)
    _tiny_hf_model(family, seed, **kwargs).save_pretrained(str(path))
    if tokenizer:
        byte_tokenizer().save_pretrained(str(path))
    return path


def byte_tokenizer() -> Any:
    """A fast tokenizer with one token per byte (ids 0-255) and no merges: no download, no training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: pre_tokenizers_byte(c)))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core)


def pre_tokenizers_byte(ch: str) -> int:
    """The byte that byte-level pre-tokenisation maps to the printable character `ch` (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    if ord(ch) in printable:
        return ord(ch)
    missing = [b for b in range(256) if b not in printable]
    return missing[ord(ch) - 256]


def eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """Tokens that end an answer: the tokenizer's and the generation config's end-of-sequence ids."""
    ids: set[int] = set()
    for source in (loaded.tokenizer, getattr(loaded.model, "generation_config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        ids.update([value] if isinstance(value, int) else list(value or []))
    return frozenset(ids)
