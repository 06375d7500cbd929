"""The conv2d correlation of the fast engines: bands of output rows written into one array."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
import slidesim.kernels.conv as fast
from slidesim._geometry import Geometry

from ..conftest import conv2d_bank, correlation_case, tolerance

CASES = [  # size, template size, stride, dilation, per-image bank
    ((37, 41), (5, 4), (1, 1), (1, 1), False),
    ((50, 33), (3, 6), (2, 3), (1, 1), False),
    ((45, 45), (4, 3), (3, 2), (2, 2), True),
    ((29, 64), (7, 7), (2, 1), (1, 3), True),
]


@pytest.fixture
def tiny_bands(monkeypatch) -> None:
    """Band every float32 output, a few rows at a time, so that small problems take the banded path."""
    monkeypatch.setattr(fast, "_BANDED_FROM", 0)
    monkeypatch.setattr(fast, "_BAND_BYTES", 1500)


@pytest.mark.parametrize(("size", "tsize", "stride", "dilation", "per_image"), CASES)
def test_bands_equal_one_conv2d(tiny_bands, size, tsize, stride, dilation, per_image) -> None:
    image, kernel = correlation_case(size, tsize, per_image)
    expected = conv2d_bank(image, kernel, stride, dilation)
    geom = Geometry(stride, dilation, expected.shape[-2], expected.shape[-1], tsize)
    got = fast.conv_correlate(image, kernel, geom)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, **tolerance(torch.float32, scale=10.0))


@pytest.mark.parametrize("metric", ["ccorr", "ncc", "ccoeff", "zncc"])
@pytest.mark.parametrize(("size", "tsize", "stride", "dilation", "per_image"), CASES)
def test_banded_conv_engine_matches_the_reference(tiny_bands, metric, size, tsize, stride, dilation, per_image) -> None:
    rng = np.random.default_rng(len(metric) + sum(size))
    images = torch.from_numpy(rng.random((2, 2, *size))).float()
    bank = torch.from_numpy(rng.random((2, 3, 2, *tsize) if per_image else (3, 2, *tsize))).float()
    options = {"metric": metric, "stride": stride, "dilation": dilation}
    got = slidesim.similarity(images, bank, method="conv", **options)
    want = slidesim.similarity(images.double(), bank.double(), method="reference", **options)
    torch.testing.assert_close(got.double(), want, **tolerance(torch.float32))


def test_autograd_takes_the_single_call(tiny_bands) -> None:
    """Bands write into a numpy array, which autograd cannot see through: with gradients the call is whole."""
    image = torch.rand(1, 1, 20, 24, requires_grad=True)
    kernel = torch.rand(1, 3, 1, 4, 5)
    geom = Geometry((1, 1), (1, 1), 17, 20, (4, 5))
    out = fast.conv_correlate(image, kernel, geom)
    out.sum().backward()
    torch.testing.assert_close(image.grad, torch.autograd.grad(conv2d_bank(image, kernel, 1, 1).sum(), image)[0])
    with torch.no_grad():
        assert fast.conv_correlate(image, kernel, geom).grad_fn is None


def test_large_outputs_are_banded_by_default(monkeypatch) -> None:
    """Default thresholds: a 64-template bank on 512² runs in bands, one template on 256² in one call."""
    calls = []
    conv = fast._conv
    monkeypatch.setattr(fast, "_conv", lambda *args: calls.append(args[0].shape[-2]) or conv(*args))
    for size, templates, want_calls in ((512, 64, 8), (256, 1, 1)):
        calls.clear()
        geom = Geometry((1, 1), (1, 1), size - 15, size - 15, (16, 16))
        out = fast.conv_correlate(torch.rand(1, 1, size, size), torch.rand(1, templates, 1, 16, 16), geom)
        assert out.shape == (1, templates, size - 15, size - 15)
        assert len(calls) >= want_calls if want_calls > 1 else calls == [size]
