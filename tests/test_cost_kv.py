"""KV bytes on the wire per dtype and codec: stream times use real byte counts."""

from __future__ import annotations

import numpy as np

from sparkv.core.model import BUILTIN_SPECS, ModelSpec
from sparkv.core.request import Request
from sparkv.cost_models.kv import cell_bytes_grid, cell_wire_bytes, context_kv_bytes

SMOL = BUILTIN_SPECS["smollm2-135m"]  # 30 layers, 3 KV heads, head_dim 64, fp16


def test_8k_smollm2_context_at_fp16() -> None:
    expected = 8192 * 30 * 2 * 3 * 64 * 2
    assert context_kv_bytes(SMOL, 8192, "fp16") == expected
    assert int(cell_bytes_grid(SMOL, Request(8192, 64, 512), "fp16").sum()) == expected
    assert expected == SMOL.kv_bytes_per_token * 8192


def test_dtype_and_codec_change_the_bytes() -> None:
    fp32 = ModelSpec(**{**SMOL.to_dict(), "dtype": "float32"})
    bf16 = ModelSpec(**{**SMOL.to_dict(), "dtype": "bfloat16"})
    assert cell_wire_bytes(fp32, 512, "raw") == 2 * cell_wire_bytes(SMOL, 512, "raw")
    assert cell_wire_bytes(bf16, 512, "raw") == cell_wire_bytes(SMOL, 512, "fp16")
    assert cell_wire_bytes(fp32, 512, "fp16") == cell_wire_bytes(SMOL, 512, "fp16")
    int8, int4 = cell_wire_bytes(SMOL, 512, "int8"), cell_wire_bytes(SMOL, 512, "int4")
    assert int4 < int8 < cell_wire_bytes(SMOL, 512, "fp16")


def test_per_layer_codec_varies_by_layer_and_last_chunk_is_shorter() -> None:
    grid = cell_bytes_grid(SMOL, Request(1000, 8, 512), "int8:0-3,int4")
    assert grid.shape == (2, 30)
    assert np.all(grid[:, :4] > grid[:, 4:5])  # int8 layers carry more bytes than int4 ones
    assert np.all(grid[1] < grid[0])  # 488-token last chunk
    assert grid[0, 0] == cell_wire_bytes(SMOL, 512, "int8:0-3,int4", layer=0)
    assert abs(int(grid[0, 0]) - cell_wire_bytes(SMOL, 512, "int8")) <= 16  # per-layer framing only
