"""Masked window sums with exact zeros through a float64 FFT (slidesim.kernels.area_sums): the guarantees of tap
sums (exact zeros, accuracy relative to each window) at the cost of a transform, and what the masked statistics
build on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim._geometry import Geometry
from slidesim.kernels import area_sums
from slidesim.kernels.area_sums import FFT_EXACT_TAPS, AreaSumReductions
from slidesim.kernels.conv import conv_correlate


def _geometry(image_shape: tuple[int, int], size: tuple[int, int]) -> Geometry:
    (H, W), (h, w) = image_shape, size
    return Geometry((1, 1), (1, 1), H - h + 1, W - w + 1, size)


def _disk(side: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    centre = (side - 1) / 2
    return (((yy - centre) ** 2 + (xx - centre) ** 2) <= (side / 2) ** 2).to(torch.float64)


def _dark_picture(fractional: bool) -> torch.Tensor:
    """A photograph-like plane: a black band (zeros), a faint band and a bright textured one."""
    rng = np.random.default_rng(5)
    image = np.zeros((70, 90))
    image[:, 30:50] = rng.integers(0, 3, (70, 20))  # faint: values 0-2
    image[:, 50:] = rng.integers(0, 256, (70, 40))
    if fractional:
        image = image / 255
    return torch.from_numpy(image)[None, None]


def _count_transforms(monkeypatch) -> list[bool]:
    """A list that gets an entry for every transform the window sums run from now on."""
    transformed: list[bool] = []
    fft_correlate = area_sums.fft_correlate

    def counting(*args, **kwargs):
        transformed.append(True)
        return fft_correlate(*args, **kwargs)

    monkeypatch.setattr(area_sums, "fft_correlate", counting)
    return transformed


@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("in_place", [True, False])
def test_exact_zero_sums_match_tap_sums(fractional: bool, in_place: bool, monkeypatch) -> None:
    """The sums agree with conv2d's, whether the dark windows are summed again in place (numba) or gathered (the
    path of other devices, or without numba); the rounding bound returned covers every window."""
    if in_place:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(area_sums, "fused_statistics_available", lambda: False)
    image = _dark_picture(fractional)
    squares = image * image
    weights = _disk(12)[None, None, None]
    assert weights.shape[-1] * weights.shape[-2] > FFT_EXACT_TAPS
    geom = _geometry((70, 90), (12, 12))
    transformed = _count_transforms(monkeypatch)
    sums, bound = AreaSumReductions(geom, 2**20).window_sum_bounded(squares, weights)
    taps = conv_correlate(squares, weights, geom)
    assert transformed  # the transform ran, not conv2d
    assert float((sums - taps).abs().max()) <= bound
    assert (bound == 0) == (not fractional)  # integers are exact
    zero = taps == 0
    assert zero.any() and (sums[zero] == 0).all()  # the black band's windows: exactly zero
    if fractional:
        torch.testing.assert_close(sums, taps, rtol=1e-9, atol=0)  # relative to each window, faint ones too
    else:
        assert torch.equal(sums, taps)  # integers: rounded to the exact sums


@pytest.mark.parametrize("metric", ["ncc", "ssd", "ssd_normed", "zncc"])
@pytest.mark.parametrize("fractional", [False, True])
def test_masked_metrics_on_dark_pictures_agree_with_the_reference(metric: str, fractional: bool) -> None:
    image = _dark_picture(fractional)[0, 0].numpy()
    template = image[20:36, 44:60].copy()  # half faint, half bright
    mask = _disk(16).numpy()
    scores = slidesim.similarity(image, template, metric=metric, mask=mask, method="fft")
    expected = slidesim.similarity(image, template, metric=metric, mask=mask, method="reference")
    np.testing.assert_array_equal(np.isnan(scores), np.isnan(expected))
    finite = ~np.isnan(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max()))
    np.testing.assert_allclose(scores[finite], expected[finite], rtol=1e-9, atol=1e-9 * scale)


def test_masked_zncc_of_integer_pictures_decides_flatness_from_exact_sums(monkeypatch) -> None:
    """uint8 pixels under 0/1 weights: n·Σ I² − (Σ I)² is an exact integer, zero exactly for flat windows, so the
    tap-by-tap flat test (a min and max per tap and window) does not run."""
    from slidesim.kernels.taps import TapReductions

    def no_tap_loop(*args, **kwargs):
        raise AssertionError("the tap-by-tap flat test ran")

    monkeypatch.setattr(TapReductions, "window_flat", no_tap_loop)
    image = _dark_picture(False)[0, 0].numpy().astype(np.uint8)
    template = image[20:36, 44:60].copy()
    mask = _disk(16).numpy()
    scores = slidesim.similarity(image, template, metric="zncc", mask=mask, method="fft")
    monkeypatch.undo()
    expected = slidesim.similarity(image, template, metric="zncc", mask=mask, method="reference")
    np.testing.assert_array_equal(np.isnan(scores), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert (expected == 0).any()  # the black band's windows are flat: zncc scores them 0
    np.testing.assert_allclose(scores[finite], expected[finite], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize(
    ("size", "stride", "dilation"), [((5, 7), (1, 1), (1, 1)), ((9, 9), (2, 3), (1, 1)), ((4, 6), (1, 2), (2, 1)),
                                     ((12, 12), (1, 1), (1, 1))]
)  # fmt: skip
def test_masked_flatness_by_neighbour_counts_matches_the_direct_loop(size, stride, dilation) -> None:
    """Connected supports count differing neighbour pairs (exact window sums, FFT above 64 taps) and agree with
    the direct min/max loop, NaN and flat regions included; a support in two pieces takes the loop."""
    from slidesim.kernels.taps import TapReductions

    rng = np.random.default_rng(0)
    (h, w), (sy, sx), (dy, dx) = size, stride, dilation
    H, W = 40, 50
    plane = torch.from_numpy(rng.integers(0, 3, (2, 1, H, W))).double()
    plane[:, :, :20, :25] = 1.0  # a flat region
    plane[1, 0, 30, 30] = float("nan")
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - (h - 1) / 2) ** 2 / (h / 2) ** 2 + (xx - (w - 1) / 2) ** 2 / (w / 2) ** 2 <= 1
    pieces = np.zeros_like(disk)
    pieces[0, 0] = pieces[-1, -1] = True
    out = ((H - dy * (h - 1) - 1) // sy + 1, (W - dx * (w - 1) - 1) // sx + 1)
    geom = Geometry((sy, sx), (dy, dx), *out, (h, w))
    for masks in ([disk, np.ones_like(disk)], [pieces]):
        support = torch.from_numpy(np.stack(masks))[None, :, None]
        got = AreaSumReductions(geom, 2**20).window_flat(plane, support, (3, out[0] - 1))
        want = TapReductions(geom, 2**20).window_flat(plane, support, (3, out[0] - 1))
        assert torch.equal(got, want)
        assert got.any() and not got.all()


def test_connectedness_of_supports() -> None:
    """The row-run shortcut and the grown region agree on random supports; rings and C shapes (two runs in a row)
    are connected, two pieces are not, an empty support counts as connected."""
    from slidesim.kernels.area_sums import _connected, _grown_connected

    rng = np.random.default_rng(1)
    for _ in range(500):
        h, w = rng.integers(1, 7, 2)
        support = torch.from_numpy(rng.random((h, w)) < rng.random())
        assert bool(_connected(support[None])[0]) == _grown_connected(support)
    yy, xx = np.mgrid[:9, :9]
    distance = np.hypot(yy - 4, xx - 4)
    ring = torch.from_numpy((distance <= 4.5) & (distance >= 2.5))
    c_shape = torch.ones(5, 5, dtype=torch.bool)
    c_shape[1:4, 2:] = False
    pieces = torch.zeros(5, 5, dtype=torch.bool)
    pieces[0, 0] = pieces[4, 4] = True
    empty = torch.zeros(5, 5, dtype=torch.bool)
    disk = _disk(12) > 0
    assert _connected(torch.stack([c_shape, pieces, empty])).tolist() == [True, False, True]
    assert bool(_connected(disk[None])[0]) and bool(_connected(ring[None])[0])


@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize(("stride", "dilation"), [((1, 1), (1, 1)), ((2, 3), (1, 1)), ((1, 2), (2, 1))])
def test_rectangle_footprints_sum_by_box_sums(fractional: bool, stride, dilation, monkeypatch) -> None:
    """Weights that are one whole value on a rectangle (a scaled template's footprint) sum integer planes by
    summed-area tables, exactly and without a transform; fractional planes (or weights of other shapes) keep the
    transform."""
    image = _dark_picture(fractional)
    weights = torch.zeros(1, 3, 1, 13, 15, dtype=torch.float64)
    weights[0, 0, 0, 2:11, 3:12] = 1.0
    weights[0, 1, 0, :, :] = 1.0
    weights[0, 2, 0, 4:9, 0:7] = 3.0  # another whole value
    (H, W), (h, w) = (70, 90), (13, 15)
    (dy, dx), (sy, sx) = dilation, stride
    geom = Geometry(stride, dilation, (H - dy * (h - 1) - 1) // sy + 1, (W - dx * (w - 1) - 1) // sx + 1, (h, w))
    transformed = _count_transforms(monkeypatch)
    prims = AreaSumReductions(geom, 2**20)
    want = conv_correlate(image, weights, geom)
    for sums in (prims.window_sum(image, weights, exact_zeros=False), prims.window_sum_bounded(image, weights)[0]):
        if fractional:
            torch.testing.assert_close(sums, want, rtol=1e-9, atol=1e-12)
        else:
            assert torch.equal(sums, want)
    assert bool(transformed) == fractional
    transformed.clear()
    notched = weights.clone()
    notched[0, 0, 0, 5, 5] = 0.0  # no longer a rectangle
    prims.window_sum(image.round(), notched, exact_zeros=False)
    assert transformed


@pytest.mark.skipif(not area_sums.fused_statistics_available(), reason="needs numba")
@pytest.mark.parametrize("stride", [(1, 1), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64])
def test_rectangle_squares_match_the_windows_deviations(stride, dtype) -> None:
    """n · variance over each rectangle of 0/1 weights, from the fused pass run over the rectangle: equal to the
    brute-force Σ (I − m)² of every window; given a tolerance, its inverse root with 0 for flat windows; None for
    weights that are not 1 on a rectangle."""
    image = _dark_picture(False)
    image[..., 10:40, :] = 7.0  # a flat band: whole windows of it
    plane = image.to(dtype)
    shift = torch.full((1, 1, 1, 1), 100.0, dtype=torch.float64)
    weights = torch.zeros(1, 3, 1, 13, 15, dtype=torch.float64)
    weights[0, 0, 0, 2:11, 3:12] = 1.0
    weights[0, 1, 0, :, :] = 1.0
    weights[0, 2, 0, 4:9, 0:7] = 1.0
    (H, W), (h, w), (sy, sx) = (70, 90), (13, 15), stride
    geom = Geometry(stride, (1, 1), (H - h) // sy + 1, (W - w) // sx + 1, (h, w))
    prims = AreaSumReductions(geom, 2**20)
    values = image[0, 0].to(torch.float64)
    want = torch.empty(1, 3, geom.out_height, geom.out_width, dtype=torch.float64)
    for t in range(3):
        inside = weights[0, t, 0] > 0
        for y in range(geom.out_height):
            for x in range(geom.out_width):
                window = values[y * sy : y * sy + h, x * sx : x * sx + w][inside]
                want[0, t, y, x] = ((window - window.mean()) ** 2).sum()
    got = prims.rectangle_squares(plane, shift, weights)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-9)
    assert bool((want == 0).any()) and bool((got[want == 0] == 0).all())  # flat windows: exactly 0
    factors = prims.rectangle_squares(plane, shift, weights, 0.25, torch.float32)
    assert factors.dtype == torch.float32
    expected = torch.where(want > 0.25, want.clamp_min(0.25).rsqrt(), 0.0).to(torch.float32)
    torch.testing.assert_close(factors, expected, rtol=1e-6, atol=0.0)
    scaled, notched = weights.clone(), weights.clone()
    scaled[0, 2] *= 2.0  # a rectangle of another value
    notched[0, 0, 0, 5, 5] = 0.0
    assert prims.rectangle_squares(plane, shift, scaled) is None
    assert prims.rectangle_squares(plane, shift, notched) is None
