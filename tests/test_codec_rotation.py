"""The Walsh-Hadamard rotation of head_dim used before quantisation: orthogonal, its own inverse."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.cost_models.codecs.rotation import blocks, fwht, hadamard, rotate, rotation_matrix


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 128])
def test_hadamard_is_symmetric_orthogonal_with_equal_magnitudes(n: int) -> None:
    h = hadamard(n)
    assert np.array_equal(h, h.T)
    assert np.allclose(h @ h, np.eye(n), atol=1e-12)
    assert np.allclose(np.abs(h), 1 / np.sqrt(n))


def test_hadamard_needs_a_power_of_two() -> None:
    for n in (0, 3, 6, 96):
        with pytest.raises(ValueError, match="power-of-two"):
            hadamard(n)


def test_blocks_are_the_binary_digits() -> None:
    assert blocks(64) == [64] and blocks(96) == [64, 32] and blocks(7) == [4, 2, 1] and blocks(1) == [1]
    with pytest.raises(ValueError, match="head_dim"):
        blocks(0)


@pytest.mark.parametrize("dim", range(1, 71))
def test_rotation_is_orthogonal_and_its_own_inverse(dim: int) -> None:
    r = rotation_matrix(dim).astype(np.float64)
    assert r.shape == (dim, dim) and np.array_equal(r, r.T)
    assert np.allclose(r @ r.T, np.eye(dim), atol=1e-6)
    x = np.random.default_rng(dim).standard_normal((3, 5, dim)).astype(np.float32) * 10
    y = rotate(x)
    assert y.dtype == np.float32 and np.allclose(rotate(y), x, rtol=0, atol=1e-5)
    assert np.allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-6)


def test_rotation_spreads_one_channel_over_all() -> None:
    x = np.zeros((1, 64), np.float32)
    x[0, 5] = 8.0
    assert np.allclose(np.abs(rotate(x)), 1.0)  # 8 / sqrt(64) in every channel


def test_rotation_matrix_is_read_only() -> None:
    with pytest.raises(ValueError):
        rotation_matrix(64)[0, 0] = 2.0


@pytest.mark.parametrize("dim", [1, 2, 7, 64, 96, 128])
def test_fast_transform_equals_the_matrix(dim: int) -> None:
    x = np.random.default_rng(dim).standard_normal((2, 33, dim)).astype(np.float32)
    want = x.astype(np.float64) @ rotation_matrix(dim).astype(np.float64)
    assert np.allclose(rotate(x), want, rtol=0, atol=1e-5)
    assert np.allclose(fwht(x[..., :1]), x[..., :1])  # H_1 = [1]
    assert rotate(np.zeros((2, 0, dim), np.float32)).shape == (2, 0, dim)
