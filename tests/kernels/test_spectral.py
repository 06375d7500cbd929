"""FFT correlation: one transform of the whole image, and overlap-save tiles when its spectrum would not fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slidesim
from slidesim._geometry import Geometry
from slidesim.kernels.spectral import choose_tile, fft_correlate, next_fast_length

from ..conftest import conv2d_bank, correlation_case, tolerance


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
    image, kernel = correlation_case(size, tsize, per_image)
    expected = conv2d_bank(image, kernel, stride, dilation)
    geom = Geometry(stride, dilation, expected.shape[-2], expected.shape[-1], tsize)
    got = fft_correlate(image, kernel, geom, chunk_bytes=2**16, tile=tile)
    torch.testing.assert_close(got, expected, **tolerance(torch.float32, scale=10.0))


def test_tiles_when_the_whole_spectrum_does_not_fit_and_strips_when_it_is_large() -> None:
    assert choose_tile((1, 1, 768, 768), (32, 32), 1, 4, 64 * 2**20) is None
    assert choose_tile((1, 3, 512, 512), (32, 32), 1, 4, 64 * 2**20) is None
    th, tw = choose_tile((1, 1, 1024, 1024), (32, 32), 1, 4, 2**20)
    assert 128 <= th < 1024 and 128 <= tw < 1024
    assert choose_tile((1, 1, 1024, 1024), (32, 32), 1, 4, 64 * 2**20) == (384, 384)  # square tiles in cache
    assert choose_tile((1, 1, 1024, 1024), (64, 64), 1, 4, 64 * 2**20) == (384, 384)
    assert choose_tile((1, 1, 1024, 1024), (100, 100), 1, 4, 64 * 2**20) is None  # 4 tiles of 600²: 1.37× the pixels
    assert choose_tile((1, 1, 1200, 1200), (40, 40), 1, 4, 64 * 2**20) is None  # 16 tiles of 384²: 1.64×
    assert choose_tile((1, 1, 1024, 1024), (200, 32), 1, 4, 64 * 2**20) is None  # tiles as tall as the image
    assert choose_tile((1, 1, 1024, 1024), (32, 32), 1, 4, 64 * 2**20, stride=(400, 1)) is None
    assert choose_tile((1, 1, 2048, 2048), (64, 64), 1, 4, 256 * 2**20) == (256, 2048)  # full-width strips
    assert choose_tile((1, 1, 2048, 2048), (200, 64), 1, 4, 256 * 2**20) == (800, 2048)
    assert choose_tile((1, 1, 2048, 2048), (600, 64), 1, 4, 256 * 2**20) is None  # strips as tall as the image
    assert choose_tile((1, 1, 2048, 2048), (64, 64), 1, 4, 256 * 2**20, stride=(300, 1)) is None


@pytest.mark.parametrize(
    ("shape", "tile"), [((1600, 1536), (256, 1536)), ((1024, 1000), (384, 384))], ids=["strips", "tiles"]
)
@pytest.mark.parametrize("stride", [(1, 1), (3, 2)])
def test_strips_and_tiles_keep_the_numbers(shape, tile, stride) -> None:
    rng = np.random.default_rng(6)
    image = torch.from_numpy(rng.random((1, 1, *shape), dtype=np.float32))
    template = image[:, :, 700:740, 900:933] + torch.rand(1, 1, 40, 33) * 0.1
    assert choose_tile(tuple(image.shape), (40, 33), 1, 4, 2**28, stride) == tile  # not the whole image
    expected = F.conv2d(image, template, stride=stride)  # float32 oneDNN: float64 conv2d would unfold 25 GB
    geom = Geometry(stride, (1, 1), *expected.shape[-2:], (40, 33))
    cross = fft_correlate(image, template[None], geom, 2**28)
    torch.testing.assert_close(cross, expected, **tolerance(torch.float32, scale=300.0))
    got = slidesim.similarity(image, template, metric="zncc", method="fft", stride=stride)
    want = slidesim.similarity(image, template, metric="zncc", method="conv", stride=stride)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


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


@pytest.mark.parametrize(("channels", "templates"), [(1, 1), (2, 3)])
@pytest.mark.parametrize("tile", [None, (16, 16)], ids=["whole", "tiles"])
def test_gradients_through_the_products_formed_in_place(channels: int, templates: int, tile) -> None:
    torch.manual_seed(channels + templates)
    # 19 × 18 outputs, 12 × 13 per 16² tile: two tiles each way, the second one cut (a gradcheck costs two
    # forward passes per input element, so the image is kept small)
    image = torch.rand(1, channels, 23, 21, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(1, templates, channels, 5, 4, dtype=torch.float64, requires_grad=True)
    geom = Geometry((1, 1), (1, 1), 19, 18, (5, 4))
    assert torch.autograd.gradcheck(lambda i, k: fft_correlate(i, k, geom, 2**20, tile=tile), (image, kernel))


@pytest.mark.parametrize("tile", [None, (16, 20)], ids=["whole", "tiles"])
def test_a_shift_centres_and_widens_each_piece_as_it_is_read(tile) -> None:
    """With a per-channel shift the transforms run in the kernel's dtype on the centred image."""
    rng = np.random.default_rng(11)
    image = torch.from_numpy(rng.integers(0, 256, (2, 3, 37, 41)).astype(np.float32))
    kernel = torch.from_numpy(rng.standard_normal((1, 2, 3, 5, 4)))  # float64
    shift = torch.tensor([[100.0, 30.0, 250.0], [7.0, 0.0, 128.0]], dtype=torch.float32)[..., None, None]
    geom = Geometry((1, 1), (1, 1), 33, 38, (5, 4))
    got = fft_correlate(image, kernel, geom, chunk_bytes=2**20, tile=tile, shift=shift)
    expected = conv2d_bank(image.double() - shift.double(), kernel, (1, 1), (1, 1))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    narrowed = fft_correlate(image, kernel, geom, chunk_bytes=2**20, tile=tile, shift=shift, out_dtype=torch.float32)
    assert narrowed.dtype == torch.float32
    torch.testing.assert_close(narrowed, expected.float())


@pytest.mark.parametrize("channels", [1, 3])
def test_kept_tile_spectra_serve_the_later_chunks_of_a_bank(monkeypatch, channels: int) -> None:
    """A bank scored chunk by chunk on one image (a rotation search) transforms the image's tiles once: the
    later chunks reuse the kept spectra, and every chunk's scores equal conv2d's."""
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, channels, 70, 90, generator=generator)
    chunks = [torch.rand(1, 3, channels, 7, 9, generator=generator) for _ in range(3)]
    geom = Geometry((1, 1), (1, 1), 64, 82, (7, 9))
    forward = []
    real_rfft2 = torch.fft.rfft2
    monkeypatch.setattr(torch.fft, "rfft2", lambda *a, **k: forward.append(a[0].shape) or real_rfft2(*a, **k))
    spectra: dict = {}
    for kernel in chunks:
        got = fft_correlate(image, kernel, geom, chunk_bytes=2**22, tile=(32, 32), spectra=spectra)
        torch.testing.assert_close(got, conv2d_bank(image, kernel, (1, 1), (1, 1)), **tolerance(torch.float32, 10.0))
    tiles = -(-64 // 26) * -(-82 // 24)  # tiles advance by the tile less the span: 26 rows, 24 columns
    assert len(forward) == tiles  # the first chunk's; the others read the kept spectra
    # another span places the tiles elsewhere: its spectra are not the kept ones
    smaller = torch.rand(1, 2, channels, 5, 5, generator=generator)
    narrow = Geometry((1, 1), (1, 1), 66, 86, (5, 5))
    got = fft_correlate(image, smaller, narrow, chunk_bytes=2**22, tile=(32, 32), spectra=spectra)
    torch.testing.assert_close(got, conv2d_bank(image, smaller, (1, 1), (1, 1)), **tolerance(torch.float32, 10.0))
    assert len(forward) > tiles
    # without room for every tile's spectrum, nothing is kept: every chunk (and every few templates within one,
    # as the small budget splits them) transforms the tiles again
    forward.clear()
    spectra = {}
    for kernel in chunks:
        fft_correlate(image, kernel, geom, chunk_bytes=2**12, tile=(32, 32), spectra=spectra)
    assert len(forward) >= 3 * tiles
    assert not spectra


def _largest_prime_factor(n: int) -> int:
    factor, largest = 2, 1
    while n > 1:
        while n % factor == 0:
            n, largest = n // factor, factor
        factor += 1
    return largest


@pytest.mark.parametrize("n", [1, 2, 3, 7, 17, 100, 172, 175, 303, 315, 448, 850, 1080, 1100, 1920, 2032, 4001])
def test_transform_lengths_are_smooth_and_avoid_odd_real_axes(n: int) -> None:
    for last_axis in (False, True):
        m = next_fast_length(n, last_axis=last_axis)
        assert n <= m <= 1 << max(0, (n - 1).bit_length())
        assert _largest_prime_factor(m) <= 7
        if last_axis and n > 2:
            assert m % 2 == 0, "an odd real-transform length runs about 3 times slower per point"


def test_transform_lengths_pad_odd_lengths_to_multiples_of_four() -> None:
    assert next_fast_length(175, last_axis=True) % 4 == 0  # 7-smooth but odd
    assert next_fast_length(315) % 2 == 0
    assert next_fast_length(1080, last_axis=True) == 1080  # already fast: no padding
