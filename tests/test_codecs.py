"""KV codecs: exact round trips, quantisation error bounds, byte layout, sizes, names."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkv.core.errors import UserError
from sparkv.cost_models.codecs import (
    CODEC_NAMES,
    LayerwiseCodec,
    QuantCodec,
    ZstdCodec,
    get_codec,
    measure_codec,
    synthetic_kv,
)
from sparkv.cost_models.codecs.quant import pack_int4, unpack_int4
from sparkv.cost_models.codecs.rotation import rotation_matrix

DTYPES = (np.float32, np.float16)
FIXED = ("raw", "fp16", "bf16", "fp32", "int8", "int4", "int4-g32", "int8-g5", "int8:0-1,int4-g16", "fp32:2,int4",
         "int4-t32-rot", "int8-g5-t3-rot", "int4-t7", "int4-rot", "int8:0,int4-t32-s1-rot", "int4-t32-s1-rot",
         "int8-s3", "int4-g8-s5")


def kv_array(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 5, size=shape[-1]) + rng.uniform(-3, 3, size=shape[-1])
    return x.astype(dtype)


def recomputed_scale(
    x: np.ndarray, bits: int, kind: str, group: int | None, tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(max - min) / levels and max |x| of each element's group, broadcast to x's shape."""
    x = x.astype(np.float64)
    levels = (1 << bits) - 1
    axis = -2 if kind == "k" else -1
    n = x.shape[axis]
    g = max(min((tokens if kind == "k" else group) or n, n), 1)
    scale, amax = np.empty_like(x), np.empty_like(x)
    for start in range(0, n, g):
        at = (..., slice(start, start + g), slice(None)) if kind == "k" else (..., slice(start, start + g))
        part = x[at]
        lo, hi = part.min(axis=axis, keepdims=True), part.max(axis=axis, keepdims=True)
        scale[at], amax[at] = (hi - lo) / levels, np.maximum(-lo, hi)
    return scale, amax


def element_bound(codec: QuantCodec, x: np.ndarray, kind: str) -> np.ndarray:
    """scale/2 of each element's group, widened by the fp16 rounding of the stored scale and zero point."""
    scale, amax = recomputed_scale(x, codec.bits, kind, codec.group, codec.tokens)
    return scale / 2 * (1 + 2**-9) + amax * 2**-10 + 1e-7


def round_trip_sinks_apart(codec: QuantCodec, x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the quantised tokens as float64, after checking the sink tokens are x rounded to fp16."""
    y = codec.decode(codec.encode(x, kind=kind), x.shape, x.dtype)
    assert y.shape == x.shape and y.dtype == x.dtype
    s = min(codec.sinks, x.shape[-2])
    assert np.array_equal(y[..., :s, :], x[..., :s, :].astype(np.float16).astype(x.dtype))
    return x[..., s:, :].astype(np.float64), y[..., s:, :].astype(np.float64)


def assert_within_half_scale(codec: QuantCodec, x: np.ndarray, kind: str) -> None:
    x64, y = round_trip_sinks_apart(codec, x, kind)
    bound = element_bound(codec, x64, kind)
    if x.dtype == np.float16:
        bound = bound + np.abs(x64) * 2**-10  # the output is rounded to fp16 too
    err = np.abs(y - x64)
    assert (err <= bound).all(), float((err - bound).max())


def assert_rotated_within_bound(codec: QuantCodec, x: np.ndarray, kind: str) -> None:
    """Each token's L2 error is at most the L2 norm of its rotated elements' bounds (the rotation keeps norms)."""
    x64, y = round_trip_sinks_apart(codec, x, kind)
    rotated = x64 @ rotation_matrix(x.shape[-1]).astype(np.float64)
    norm = np.linalg.norm(x64, axis=-1)
    bound = np.linalg.norm(element_bound(codec, rotated, kind), axis=-1) + 1e-5 * norm  # + float32 rotations
    if x.dtype == np.float16:
        bound = bound + norm * 2**-10
    err = np.linalg.norm(y - x64, axis=-1)
    assert (err <= bound).all(), float((err - bound).max())


# ---- passthrough ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["raw", "fp32", "raw+zstd", "fp32+zstd"])
def test_lossless_round_trip_is_exact(name: str, dtype: type) -> None:
    codec = get_codec(name)
    x = kv_array((3, 17, 64), dtype)
    for kind in ("k", "v"):
        y = codec.decode(codec.encode(x, kind=kind), x.shape, dtype)
        assert codec.lossless and y.dtype == x.dtype and np.array_equal(y, x)


@pytest.mark.parametrize("name", ["fp16", "fp16+zstd"])
def test_fp16_is_exact_on_fp16_and_rounds_fp32(name: str) -> None:
    codec = get_codec(name)
    x16 = kv_array((2, 9, 33), np.float16)
    assert np.array_equal(codec.decode(codec.encode(x16), x16.shape, np.float16), x16)
    x32 = kv_array((2, 9, 33), np.float32)
    y = codec.decode(codec.encode(x32), x32.shape, np.float32)
    assert np.array_equal(y, x32.astype(np.float16).astype(np.float32)) and not codec.lossless


@pytest.mark.parametrize("name", ["bf16", "bf16+zstd"])
def test_bf16_matches_torch(name: str) -> None:
    codec = get_codec(name)
    x = kv_array((2, 20, 64), np.float32)
    x[0, 0, :4] = [np.inf, -np.inf, 0.0, -0.0]
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    got = codec.decode(codec.encode(x), x.shape, np.float32)
    assert np.array_equal(got, want)
    assert np.isnan(codec.decode(codec.encode(np.full((1, 1, 2), np.nan, np.float32)), (1, 1, 2), np.float32)).all()
    assert get_codec("bf16").encode(np.array([[[1.0]]], np.float32)) == struct.pack("<H", 0x3F80)


# ---- quantisation ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["k", "v"])
@pytest.mark.parametrize("name", ["int8", "int4", "int4-g32", "int8-g7", "int4-g1000"])
def test_quantisation_error_within_half_a_step(name: str, kind: str, dtype: type) -> None:
    codec = get_codec(name)
    assert isinstance(codec, QuantCodec)
    assert_within_half_scale(codec, kv_array((3, 40, 64), dtype, seed=1), kind)
    assert_within_half_scale(codec, kv_array((2, 1, 7), dtype, seed=2), kind)  # one token, odd head_dim


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["k", "v"])
@pytest.mark.parametrize("name", ["int4-t32", "int8-t5", "int4-g16-t8", "int4-t1000"])
def test_k_token_groups_error_within_half_a_step(name: str, kind: str, dtype: type) -> None:
    codec = get_codec(name)
    assert isinstance(codec, QuantCodec) and codec.tokens is not None
    assert_within_half_scale(codec, kv_array((3, 70, 64), dtype, seed=3), kind)
    assert_within_half_scale(codec, kv_array((2, 1, 7), dtype, seed=4), kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["k", "v"])
@pytest.mark.parametrize("name", ["int4-s1", "int8-t8-s4", "int4-g16-s127"])
def test_sinks_are_fp16_and_the_rest_within_half_a_step(name: str, kind: str, dtype: type) -> None:
    codec = get_codec(name)
    assert isinstance(codec, QuantCodec) and codec.sinks
    assert_within_half_scale(codec, kv_array((3, 70, 64), dtype, seed=9), kind)
    assert_within_half_scale(codec, kv_array((2, 3, 7), dtype, seed=10), kind)  # as many tokens as sinks, or fewer


def test_a_sink_token_takes_no_part_in_the_k_ranges() -> None:
    x = kv_array((2, 64, 16), np.float32, seed=11) * 0.1
    x[:, 0] *= 100  # an outlier first token
    errs = {}
    for name in ("int4", "int4-s1"):
        codec = get_codec(name)
        errs[name] = np.abs(codec.decode(codec.encode(x, kind="k"), x.shape, np.float32) - x)
    assert errs["int4-s1"][:, 0].max() <= 1e-3 * np.abs(x[:, 0]).max()  # fp16 rounding only
    assert errs["int4-s1"][:, 1:].max() < 0.1 * errs["int4"][:, 1:].max()


def test_sinks_outside_fp16_are_rejected() -> None:
    x = np.ones((1, 4, 2), np.float32)
    x[0, 0, 0] = 1e6
    with pytest.raises(ValueError, match="fp16"):
        get_codec("int8-s1").encode(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["k", "v"])
@pytest.mark.parametrize("name", ["int4-rot", "int4-t32-rot", "int8-g16-t8-rot", "int4-g5-rot", "int4-t32-s1-rot"])
def test_rotated_error_within_the_rotated_bound(name: str, kind: str, dtype: type) -> None:
    codec = get_codec(name)
    assert isinstance(codec, QuantCodec) and codec.rotate
    assert_rotated_within_bound(codec, kv_array((3, 70, 64), dtype, seed=5), kind)
    assert_rotated_within_bound(codec, kv_array((2, 9, 7), dtype, seed=6), kind)  # head_dim 7 = 4 + 2 + 1


def test_k_token_groups_confine_an_outlier_token() -> None:
    x = kv_array((1, 128, 16), np.float32, seed=7) * 0.1
    x[:, 5] *= 100  # one outlier token (an attention sink has unusual K) widens its group's ranges only
    err = {}
    for name in ("int4", "int4-t32"):
        codec = get_codec(name)
        err[name] = np.abs(codec.decode(codec.encode(x, kind="k"), x.shape, np.float32) - x)[:, 32:]
    assert err["int4-t32"].max() < 0.1 * err["int4"].max()


def test_rotation_spreads_an_outlier_channel_across_a_token() -> None:
    x = kv_array((2, 16, 64), np.float32, seed=8) * 0.1
    x[..., 3] += 50.0  # V per token: one big channel sets the step for the whole token
    plain, rotated = get_codec("int4"), get_codec("int4-rot")
    errs = [np.linalg.norm(c.decode(c.encode(x, kind="v"), x.shape, np.float32) - x) for c in (plain, rotated)]
    assert errs[1] < 0.5 * errs[0]


def test_k_outlier_channel_does_not_spoil_other_channels() -> None:
    x = kv_array((1, 64, 16), np.float32) * 0.1
    x[..., 3] *= 1000  # an outlier channel
    codec = QuantCodec(4)
    err = np.abs(codec.decode(codec.encode(x, kind="k"), x.shape, np.float32) - x)
    others = np.delete(err, 3, axis=-1)
    assert others.max() < 0.1 * err[..., 3].max()


def test_constant_groups_are_exact() -> None:
    x = np.full((2, 5, 6), 1.5, np.float32)
    for name in ("int8", "int4-g4"):
        for kind in ("k", "v"):
            codec = get_codec(name)
            assert np.array_equal(codec.decode(codec.encode(x, kind=kind), x.shape, np.float32), x)


def test_int4_layout_by_hand() -> None:
    x = np.array([[[0.0, 15.0, 7.0]]], np.float32)  # V: one group of 3, min 0, max 15: scale 1, zero 0
    payload = QuantCodec(4).encode(x, kind="v")
    header = b"KQ" + bytes([1, 4, 1, 0]) + struct.pack("<H", 3)
    scale, zero = np.array([1.0], "<f2").tobytes(), np.array([0.0], "<f2").tobytes()
    assert payload == header + scale + zero + bytes([0xF0, 0x07])
    assert np.array_equal(QuantCodec(4).decode(payload, x.shape, np.float32), x)


def test_int8_k_layout_by_hand() -> None:
    x = np.array([[[0.0, -1.0], [255.0, 1.0]]], np.float32)  # K: channels over 2 tokens
    payload = QuantCodec(8).encode(x, kind="k")
    assert payload[:8] == b"KQ" + bytes([1, 8, 0, 0, 0, 0])
    scales = np.frombuffer(payload[8:12], "<f2")
    zeros = np.frombuffer(payload[12:16], "<f2")
    assert scales[0] == 1.0 and zeros.tolist() == [0.0, -1.0]
    assert list(payload[16:]) == [0, 0, 255, 255]


def test_rotated_k_token_group_layout_by_hand() -> None:
    x = np.array([[[1.0, 1.0], [3.0, 3.0], [0.0, 2.0]]], np.float32)  # K, 3 tokens, head_dim 2
    payload = get_codec("int8-t2-rot").encode(x, kind="k")
    assert payload[:8] == b"KQ" + bytes([1, 8, 0, 1]) + struct.pack("<H", 2)  # flags: rotated; 2 tokens a group
    # rotated by [[1, 1], [1, -1]] / sqrt(2): tokens (sqrt 2, 0), (3 sqrt 2, 0), (sqrt 2, -sqrt 2); 2 token groups
    zeros = np.frombuffer(payload[8 + 8 : 8 + 16], "<f2").reshape(2, 2)
    assert abs(zeros[0, 1]) < 1e-6 and zeros[1, 1] <= -np.sqrt(2) < zeros[1, 1] + 2**-8  # 0 up to float32 fma
    assert len(payload) == 8 + 4 * 2 * 2 + 6
    assert np.allclose(get_codec("int8-t2-rot").decode(payload, x.shape, np.float32), x, atol=0.02)


def test_decoder_reads_the_variant_from_the_header() -> None:
    x = kv_array((2, 40, 64), np.float32)
    payload = get_codec("int4-t32-s3-rot").encode(x, kind="k")
    assert payload[5] == 1 | 3 << 1  # options: rotated, 3 sink tokens
    assert np.array_equal(get_codec("int4").decode(payload, x.shape, np.float32),
                          get_codec("int4-t32-s3-rot").decode(payload, x.shape, np.float32))
    with pytest.raises(ValueError, match="expected"):  # the options say 3 fp16 tokens: the length must agree
        get_codec("int4").decode(payload[:5] + bytes([1]) + payload[6:], x.shape, np.float32)


def test_pack_int4() -> None:
    assert pack_int4(np.array([1, 2, 3], np.uint8)).tolist() == [0x21, 0x03]
    codes = np.random.default_rng(0).integers(0, 16, size=101).astype(np.uint8)
    assert np.array_equal(unpack_int4(pack_int4(codes), 101), codes)


def test_quantiser_rejects_bad_input() -> None:
    codec = QuantCodec(8)
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(np.array([[[np.nan, 1.0]]], np.float32))
    with pytest.raises(ValueError, match="fp16"):
        codec.encode(np.array([[[-1e6, 1e6]]], np.float32))
    with pytest.raises(ValueError, match="kind"):
        codec.encode(np.zeros((1, 2, 2), np.float32), kind="q")
    with pytest.raises(ValueError, match="float16 or float32"):
        codec.encode(np.zeros((1, 2, 2), np.int32))
    payload = codec.encode(np.ones((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expected"):
        codec.decode(payload, (1, 3, 2), np.float32)
    with pytest.raises(ValueError, match="not a int4"):
        QuantCodec(4).decode(payload, (1, 2, 2), np.float32)


# ---- sizes ----


@settings(max_examples=60, deadline=None)
@given(
    heads=st.integers(1, 3),
    tokens=st.integers(1, 37),
    dim=st.integers(1, 70),
    dtype=st.sampled_from(DTYPES),
    name=st.sampled_from(FIXED),
    kind=st.sampled_from(["k", "v"]),
    layer=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_fixed_size_codecs_round_trip_any_shape(
    heads: int, tokens: int, dim: int, dtype: type, name: str, kind: str, layer: int, seed: int
) -> None:
    codec = get_codec(name)
    x = kv_array((heads, tokens, dim), dtype, seed)
    payload = codec.encode(x, kind=kind, layer=layer)
    assert codec.fixed_size and len(payload) == codec.wire_bytes(x.shape, dtype, kind=kind, layer=layer)
    y = codec.decode(payload, x.shape, dtype)
    assert y.shape == x.shape and y.dtype == x.dtype
    zstd = get_codec(name.split(",")[-1] + "+zstd") if "," not in name else None
    if zstd is not None:
        assert not zstd.fixed_size
        assert np.array_equal(zstd.decode(zstd.encode(x, kind=kind), x.shape, dtype), y)


def test_quantised_sizes() -> None:
    shape = (3, 512, 64)
    fp16 = 2 * 3 * 512 * 64
    assert get_codec("int8").wire_bytes(shape, np.float16, kind="k") == 8 + 4 * 3 * 64 + fp16 // 2
    assert get_codec("int4").wire_bytes(shape, np.float16, kind="v") == 8 + 4 * 3 * 512 + fp16 // 4
    assert get_codec("int4-g32").wire_bytes(shape, np.float16, kind="v") == 8 + 4 * 3 * 512 * 2 + fp16 // 4
    assert get_codec("int4").wire_bytes((1, 1, 3), np.float32) == 8 + 4 * 3 + 2  # odd count: one padded nibble
    t32 = get_codec("int4-t32-rot")
    assert t32.wire_bytes(shape, np.float16, kind="k") == 8 + 4 * 3 * 16 * 64 + fp16 // 4  # 16 token groups
    assert t32.wire_bytes(shape, np.float16, kind="v") == 8 + 4 * 3 * 512 + fp16 // 4
    assert get_codec("int4-t32").wire_bytes((3, 440, 64), np.float32, kind="k") == 8 + 4 * 3 * 14 * 64 + 3 * 440 * 32


def test_sink_sizes() -> None:
    codec = get_codec("int4-t32-s1-rot")
    sink = 2 * 3 * 64  # one fp16 token of 3 heads
    assert codec.wire_bytes((3, 512, 64), np.float32, kind="k") == 8 + sink + 4 * 3 * 16 * 64 + 3 * 511 * 32
    assert codec.wire_bytes((3, 512, 64), np.float32, kind="v") == 8 + sink + 4 * 3 * 511 + 3 * 511 * 32
    x = kv_array((2, 2, 8), np.float32)  # fewer tokens than sinks: all fp16, nothing quantised
    few = get_codec("int4-t4-s3")
    assert len(few.encode(x, kind="k")) == few.wire_bytes(x.shape, np.float32, kind="k") == 8 + 2 * 2 * 2 * 8
    assert np.array_equal(few.decode(few.encode(x, kind="k"), x.shape, np.float32), x.astype(np.float16))


@pytest.mark.parametrize(("name", "total"), [("int4-t32-rot", 116_752), ("int4-t32-s1-rot", 117_316)])
def test_int4_t32_variants_are_under_30_percent_of_fp16(name: str, total: int) -> None:
    """SmolLM2's cells: 3 KV heads, head_dim 64, 512 tokens; K and V together."""
    codec, shape = get_codec(name), (3, 512, 64)
    got = sum(codec.wire_bytes(shape, np.float32, kind=kind) for kind in ("k", "v"))
    assert got == total and got / (2 * 2 * 3 * 512 * 64) < 0.30


# ---- per layer and zstd ----


def test_layerwise_picks_codec_by_layer() -> None:
    codec = get_codec("int8:0-3,fp32:7,int4")
    assert isinstance(codec, LayerwiseCodec)
    assert [codec.for_layer(n).name for n in (0, 3, 4, 7, 8)] == ["int8", "int8", "int4", "fp32", "int4"]
    x = kv_array((2, 8, 16), np.float32)
    payload = codec.encode(x, kind="v", layer=7)
    assert payload[0] == 1 and np.array_equal(codec.decode(payload, x.shape, np.float32), x)
    assert codec.decode(codec.encode(x, layer=2), x.shape, np.float32).dtype == np.float32
    assert codec.name == "int8:0-3,fp32:7,int4" and not codec.lossless
    no_default = get_codec("int8:0-1")
    with pytest.raises(ValueError, match="layer 2"):
        no_default.encode(x, layer=2)


def test_zstd_wire_bytes_is_inner_times_measured_ratio() -> None:
    codec = get_codec("int8+zstd")
    assert isinstance(codec, ZstdCodec) and not codec.fixed_size
    k, _ = synthetic_kv((3, 256, 64), np.float32)
    predicted = codec.wire_bytes(k.shape, np.float32, kind="k")
    assert predicted == int(np.ceil(get_codec("int8").wire_bytes(k.shape, np.float32) * codec.ratio(np.float32)))
    with pytest.raises(ValueError, match="zstd"):
        codec.decode(b"not zstd", k.shape, np.float32)


@pytest.mark.parametrize(("name", "ratio"), [("int4-g32+zstd", 0.91), ("int4-t32-rot+zstd", 0.95),
                                             ("int4-g32-t32-s1-rot+zstd", 0.95), ("int4-t64+zstd", 0.91),
                                             ("raw+zstd", 0.86), ("int8:0,int4+zstd", 0.91)])
def test_zstd_ratio_key_drops_group_and_sinks_then_falls_back_to_the_base(name: str, ratio: float) -> None:
    codec = get_codec(name)
    inner = codec.for_layer(1) if isinstance(codec, LayerwiseCodec) else codec
    assert isinstance(inner, ZstdCodec) and inner.ratio(np.float32) == ratio


# ---- names ----


@pytest.mark.parametrize(
    "name",
    ["", "int3", "fp8", "fp16-g32", "int4-g0", "int4+lz4", "int8:0-3,int4,fp16", "int8:a-b,int4", "int8:3-1",
     "int4-t0", "int4-t70000", "int4-rot-g32", "int4-t32-g32", "int4-rot-rot", "int4-rotate", "fp16-rot", "bf16-t32",
     "raw-t8-rot", "int4-t", "int4+zstd-rot", "int4-s0", "int4-s128", "int4-rot-s1", "int4-s1-t32", "fp16-s1"],
)
def test_bad_names_are_user_errors(name: str) -> None:
    with pytest.raises(UserError):
        get_codec(name)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(UserError) as err:
        get_codec("int2")
    assert all(base in str(err.value) for base in CODEC_NAMES)


def test_overlapping_ranges_rejected() -> None:
    with pytest.raises(UserError, match="overlap"):
        get_codec("int8:0-3,fp16:3-5,int4")


@pytest.mark.parametrize("name", [*FIXED, "int4+zstd", "int8:0-3,int4-g32+zstd", " INT4 ", "int4-g32-t64-s2-rot+zstd"])
def test_names_round_trip(name: str) -> None:
    codec = get_codec(name)
    assert get_codec(codec.name) == codec


def test_variant_names_parse_to_their_options() -> None:
    assert get_codec("int4-g32-t64-rot") == QuantCodec(4, group=32, tokens=64, rotate=True)
    assert get_codec("int8-rot") == QuantCodec(8, rotate=True) and get_codec("int4-t32").name == "int4-t32"
    assert get_codec("INT4-T32-ROT").name == "int4-t32-rot"
    assert get_codec("int4-g32-t64-s2-rot") == QuantCodec(4, 32, 64, rotate=True, sinks=2)
    with pytest.raises(ValueError, match="tokens"):
        QuantCodec(4, tokens=0)
    with pytest.raises(ValueError, match="sinks"):
        QuantCodec(4, sinks=128)


def test_measure_codec() -> None:
    m = measure_codec(get_codec("int4"), (2, 64, 32), np.float16, repeats=3)
    assert m.bytes_per_cell == m.predicted_bytes_per_cell
    assert m.fp16_bytes_per_cell == 2 * (2 * 2 * 64 * 32)  # K and V, 2 bytes each
    assert 0.25 < m.ratio_vs_fp16 < 0.35 and m.encode_s > 0 and m.decode_s > 0 and m.data == "synthetic"
    with pytest.raises(ValueError, match="repeats"):
        measure_codec(get_codec("raw"), (1, 1, 1), np.float32, repeats=0)
