"""What the scheduler needs to know about a transformer: its shape, and so its KV bytes and FLOPs.

`ModelSpec` is read from a Hugging Face config (a dict, a `config.json`, or a model directory) or taken
from the built-in table of common on-device models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (Llama/Qwen/Mistral/GPT-2 families)."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype: str = "float16"  # dtype of the KV cache as stored and computed
    gated_mlp: bool = True  # SwiGLU (3 matrices) vs a plain MLP (2)

    def __post_init__(self) -> None:
        for field in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if value <= 0:
                raise ValueError(f"ModelSpec.{field} must be positive, got {value}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"ModelSpec.dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token at one layer, uncompressed."""
        return 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self.kv_bytes_per_token_layer * self.num_layers

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (attention projections + MLP), ignoring norms."""
        q_out = self.num_attention_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        attn = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        mlp = (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_size
        return attn + mlp

    def layer_flops(self, new_tokens: int, past_tokens: int) -> float:
        """FLOPs of one layer over `new_tokens` that attend to `past_tokens` earlier ones (causal)."""
        linear = 2.0 * self.layer_params * new_tokens
        # QK^T and AV: each new token attends to the past plus (on average) half the new tokens.
        attended = new_tokens * past_tokens + new_tokens * (new_tokens + 1) / 2
        attn = 4.0 * self.num_attention_heads * self.head_dim * attended
        return linear + attn

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**data)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str = "", dtype: str | None = None) -> ModelSpec:
        """Build a spec from a Hugging Face `config.json` dict (Llama, Qwen2, Mistral or GPT-2 keys)."""

        def pick(*keys: str) -> Any:
            for key in keys:
                if config.get(key) is not None:
                    return config[key]
            raise UserError(f"model config {name or '?'} lacks any of {keys}")

        layers = int(pick("num_hidden_layers", "n_layer"))
        hidden = int(pick("hidden_size", "n_embd"))
        heads = int(pick("num_attention_heads", "n_head"))
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        inter = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
        gated = config.get("model_type", "llama") not in ("gpt2",)
        # transformers >= 4.56 writes "dtype", older releases "torch_dtype"
        torch_dtype = dtype or str(config.get("dtype") or config.get("torch_dtype") or "float16")
        if torch_dtype not in DTYPE_BYTES:
            torch_dtype = "float16"
        return cls(
            name=name or str(config.get("_name_or_path") or config.get("model_type") or "model"),
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=int(pick("vocab_size")),
            dtype=torch_dtype,
            gated_mlp=gated,
        )


BUILTIN_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # Values from each model's config.json on its Hugging Face model card.
        ModelSpec("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152),
        ModelSpec("llama-3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, dtype="bfloat16"),
        ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, dtype="bfloat16"),
        ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 128, 18944, 152064, dtype="bfloat16"),
    )
}


def resolve_model_spec(name_or_dir: str, dtype: str | None = None) -> ModelSpec:
    """A built-in spec by name, or the spec of a local Hugging Face model directory / config.json."""
    key = name_or_dir.lower()
    if key in BUILTIN_SPECS:
        spec = BUILTIN_SPECS[key]
        return spec if dtype is None else ModelSpec(**{**spec.to_dict(), "dtype": dtype})
    path = Path(name_or_dir)
    cfg = path / "config.json" if path.is_dir() else path
    if not cfg.is_file():
        raise UserError(
            f"unknown model {name_or_dir!r}: not a built-in ({', '.join(BUILTIN_SPECS)}) "
            "nor a directory holding config.json"
        )
    try:
        config = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read model config {cfg}: {exc}") from exc
    return ModelSpec.from_hf_config(config, name=path.name, dtype=dtype)
