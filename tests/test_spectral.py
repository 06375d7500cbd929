"""FFT correlation: one transform of the whole image, and overlap-save tiles when its spectrum would not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slidesim
from slidesim._scoring import Geometry
from slidesim.engines._spectral import choose_tile, fft_correlate

from .conftest import tolerance


def _expected(image: torch.Tensor, kernel: torch.Tensor, stride, dilation) -> torch.Tensor:
    Bk = kernel.shape[0]
    if Bk == 1:
        return F.conv2d(image, kernel[0], stride=stride, dilation=dilation)
    B, C, H, W = image.shape
    out = F.conv2d(image.reshape(1, B * C, H, W), kernel.flatten(0, 1), stride=stride, dilation=dilation, groups=B)
    return out.reshape(B, kernel.shape[1], *out.shape[-2:])


@pytest.mark.parametrize("tile", [None, (16, 20), (32, 32)])
@pytest.mark.parametrize(
    ("size", "tsize", "stride", "dilation", "per_image"),
    [
        ((37, 41), (5, 4), (1, 1), (1, 1), False),
        ((50, 33), (3, 6), (2, 3), (1, 1), False),
        ((45, 45), (4, 3), (1, 2), (2, 2), True),
        ((29, 64), (7, 7), (3, 1), (1, 1), True),
    ],
)
def test_tiles_and_whole_transform_match_conv2d(size, tsize, stride, dilation, per_image, tile) -> None:
    rng = np.random.default_rng(sum(size) + sum(tsize))
    image = torch.from_numpy(rng.standard_normal((2, 3, *size))).float()
    kernel = torch.from_numpy(rng.standard_normal((2 if per_image else 1, 5, 3, *tsize))).float()
    expected = _expected(image, kernel, stride, dilation)
    geom = Geometry(stride, dilation, expected.shape[-2], expected.shape[-1], tsize)
    got = fft_correlate(image, kernel, geom, chunk_bytes=2**16, tile=tile)
    torch.testing.assert_close(got, expected, **tolerance(torch.float32, scale=10.0))


def test_tiles_are_chosen_only_when_the_whole_spectrum_does_not_fit() -> None:
    assert choose_tile((1, 1, 1024, 1024), (32, 32), 1, 4, 64 * 2**20) is None
    th, tw = choose_tile((1, 1, 1024, 1024), (32, 32), 1, 4, 2**20)
    assert 128 <= th < 1024 and 128 <= tw < 1024


@pytest.mark.parametrize("metric", ["zncc", "ccorr", "ncc"])
def test_a_small_memory_limit_tiles_and_keeps_the_numbers(metric: str) -> None:
    rng = np.random.default_rng(5)
    image = torch.from_numpy(rng.random((1, 2, 300, 260), dtype=np.float32))
    bank = image[0, :, 40:52, 70:79][None].repeat(3, 1, 1, 1) + torch.rand(3, 2, 12, 9) * 0.1
    limit = 2**20  # the whole spectrum (about 0.6 MiB) is over a quarter of it
    assert choose_tile(tuple(image.shape), (12, 9), 3, 4, limit // 4) is not None
    scores = slidesim.similarity(image, bank, metric=metric, method="fft", memory_limit=limit, stride=(1, 2))
    expected = slidesim.reference.similarity(image.double(), bank.double(), metric=metric, stride=(1, 2))
    torch.testing.assert_close(scores.double(), expected, **tolerance(torch.float32, scale=50.0))
