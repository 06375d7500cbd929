"""NaN pixels as holes for the FFT and conv engines (slidesim.scoring.holes): filled before their sums, marked after."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim._geometry import Geometry
from slidesim.metrics import PRODUCT_METRICS
from slidesim.scoring.holes import mark_holes

from ..conftest import tolerance

FAST = ["fft", "conv"]
CORRELATION = list(PRODUCT_METRICS)


def _holed_image(seed: int, shape=(2, 3, 19, 21), fraction: float = 0.01) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.random(shape))
    image[torch.from_numpy(rng.random(shape) < fraction)] = float("nan")
    image[0, -1, shape[2] // 2, shape[3] // 2] = float("nan")  # at least one hole in the middle
    return image


def _mask(kind: str, rng: np.random.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    shapes = {"shared": (4, 5), "per_channel": (3, 4, 5), "per_template": (2, 1, 4, 5), "per_image": (2, 2, 3, 4, 5)}
    mask = torch.from_numpy(rng.random(shapes[kind]) + 0.25)
    mask[mask < 0.5] = 0.0  # zero weights, different ones per template, channel and image where the mask differs
    return mask


@pytest.mark.parametrize("engine", FAST)
@pytest.mark.parametrize("metric", CORRELATION)
@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_channel", "per_template", "per_image"])
def test_holes_score_as_the_reference(engine, metric, mask_kind) -> None:
    """Every window that holds a NaN under a positive weight is NaN, every other window equals the reference."""
    rng = np.random.default_rng(11)
    image = _holed_image(1)
    bank = torch.from_numpy(rng.random((2, 2, 3, 4, 5)) if mask_kind == "per_image" else rng.random((2, 3, 4, 5)))
    mask = _mask(mask_kind, rng)
    want = slidesim.reference.similarity(image, bank, metric=metric, mask=mask)
    got = slidesim.similarity(image, bank, metric=metric, mask=mask, method=engine)
    assert bool(want.isnan().any()) and bool(want.isfinite().any())
    torch.testing.assert_close(got, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))


@pytest.mark.parametrize("engine", FAST)
@pytest.mark.parametrize(
    "options",
    [
        {"channels": "separate"},
        {"channels": "mean"},
        {"stride": (2, 3)},
        {"dilation": (2, 1)},
        {"mode": "same", "padding": "reflect"},
        {"mode": "full", "padding": "circular", "mask": "shared"},
        {"channels": "separate", "mask": "per_channel"},
    ],
    ids=str,
)
def test_holes_with_every_window_layout(engine, options) -> None:
    """Strides, dilation, padding that copies holes into the border, and per-channel scores see the same holes as
    the reference."""
    rng = np.random.default_rng(12)
    image = _holed_image(2)
    bank = torch.from_numpy(rng.random((2, 3, 4, 5)))
    options = dict(options)
    if "mask" in options:
        options["mask"] = _mask(options["mask"], rng)
    for metric in ("ncc", "zncc"):
        want = slidesim.reference.similarity(image, bank, metric=metric, **options)
        got = slidesim.similarity(image, bank, metric=metric, method=engine, **options)
        torch.testing.assert_close(got, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))


@pytest.mark.parametrize("engine", FAST)
def test_large_holes_and_float32(engine) -> None:
    """A quarter of the image missing in one block, in float32: the fill keeps the remaining windows as accurate
    as on a finite image (the same tolerance as the engine matrix)."""
    image = _holed_image(3, shape=(1, 1, 64, 64), fraction=0.002)
    image[0, 0, 32:, :32] = float("nan")
    image[0, 0, :, 40:] = 1e4 + image[0, 0, :, 40:]  # a bright, low-contrast part
    bank = image[0, :, None, 20:28, 20:29].nan_to_num(0.5).permute(1, 0, 2, 3).contiguous()
    image, bank = image.float(), bank.float()
    want = slidesim.reference.similarity(image.double(), bank.double())  # the float32 data, scored in float64
    got = slidesim.similarity(image, bank, method=engine)
    assert bool(want.isfinite().any())
    torch.testing.assert_close(got.double(), want, equal_nan=True, **tolerance(torch.float32))


@pytest.mark.parametrize("engine", FAST)
def test_infinities_stay_with_the_tap_loops(engine) -> None:
    image = torch.rand(1, 1, 16, 16)
    image[0, 0, 3, 3] = float("inf")
    with pytest.raises(slidesim.EngineUnavailableError, match="±inf"):
        slidesim.similarity(image, torch.rand(1, 1, 4, 4), method=engine)
    auto = slidesim.similarity(image, torch.rand(1, 1, 4, 4), metric="ncc")
    assert bool(auto[0, 0, 0, 0].isnan()) and bool(auto[0, 0, 8, 8].isfinite())


def test_gradients_flow_around_holes() -> None:
    """Windows clear of the hole have the gradients they have on the image without it (the tap loops on a filled
    copy), and the hole gets none."""
    image = _holed_image(4, shape=(1, 1, 16, 16), fraction=0.0)
    grads = {}
    for engine, data in (("direct", image.nan_to_num(0.5)), ("fft", image)):
        x = data.clone().requires_grad_()
        bank = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        bank.requires_grad_()
        scores = slidesim.similarity(x, bank, method=engine)
        scores[0, 0, :4, :4].sum().backward()  # windows clear of the hole at (8, 8)
        grads[engine] = (x.grad, bank.grad)
    assert float(grads["fft"][0][0, 0, 8, 8]) == 0.0
    for got, want in zip(grads["fft"], grads["direct"], strict=True):
        torch.testing.assert_close(got, want, **tolerance(torch.float64, scale=100.0))


def test_match_streams_holed_images_through_the_fast_engines() -> None:
    """The best-of-bank stream of slidesim.match (rotations: per-template masks) marks holes chunk by chunk: the
    windows that hold the hole under every rotation's mask are the worst score (NaN never wins), as with the tap
    loops, and the match beside the hole still refines to its sub-pixel position."""
    rng = np.random.default_rng(5)
    image = rng.random((48, 48))
    template = image[10:22, 14:26].copy()
    image[30, 30] = np.nan
    image[23, 20] = np.nan  # two rows below the template's window
    fast = slidesim.match(image, template, rotations=[0, 30, 60], method="fft")
    tap = slidesim.match(image, template, rotations=[0, 30, 60], method="direct")
    np.testing.assert_allclose(fast.maps, tap.maps, rtol=1e-6, atol=1e-6)
    assert np.isneginf(fast.maps[0, 0, 24, 24]) and np.isfinite(fast.maps[0, 0, 5, 5])
    assert abs(fast.y[0] - 15.5) < 0.01 and abs(fast.x[0] - 19.5) < 0.01 and abs(fast.score[0] - 1) < 1e-6


def test_mark_holes_counts_only_taps_under_positive_weights() -> None:
    holes = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    holes[0, 0, 2, 2] = True
    geom = Geometry((1, 1), (1, 1), 4, 4, (3, 3))
    mask = torch.ones(1, 2, 1, 3, 3)
    mask[0, 0, 0, 1, 1] = 0.0  # template 0 ignores its centre tap
    marked = mark_holes(torch.zeros(1, 2, 4, 4), holes, mask, geom, separate=False)
    assert bool(marked[0, 1, :3, :3].isnan().all()) and int(marked[0, 1].isnan().sum()) == 9
    assert not bool(marked[0, 0, 1, 1].isnan()) and int(marked[0, 0].isnan().sum()) == 8


@pytest.mark.parametrize("engine", FAST)
def test_holes_in_one_channel_with_per_template_masks(engine) -> None:
    """channels="separate": a channel without holes and a channel with them mark maps of the same shape."""
    rng = np.random.default_rng(13)
    image = torch.from_numpy(rng.random((1, 2, 40, 40)))
    image[0, 0, 20, 20] = float("nan")  # channel 0 only
    bank = torch.from_numpy(rng.random((4, 2, 9, 9)))
    mask = torch.from_numpy((rng.random((4, 1, 9, 9)) > 0.3) * 1.0)
    for channels in ("separate", "mean"):
        want = slidesim.reference.similarity(image, bank, metric="zncc", mask=mask, channels=channels)
        got = slidesim.similarity(image, bank, metric="zncc", mask=mask, channels=channels, method=engine)
        torch.testing.assert_close(got, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))


def _smooth(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A smooth pattern without symmetries, to sample at fractional positions."""
    return np.sin(0.31 * y + 0.5) + np.cos(0.23 * x) + 0.7 * np.sin(0.17 * (x + 1.3 * y)) + 0.3 * np.cos(0.41 * x)


@pytest.mark.parametrize("metric", ["zncc", "ssd", "sad", "l1_similarity"])
@pytest.mark.parametrize("channels", ["joint", "mean"])
def test_refinement_beside_a_hole_under_a_zero_weight(metric, channels) -> None:
    """A hole under a zero mask weight at the peak, with positive weights around it: resampled windows read it
    at every fractional shift, so their samples beside it leave the mask (they once made every shift NaN, and the
    peak kept its integer position, 0.3 px off). The summing metrics are scaled back to the full weight."""
    Y, X = np.mgrid[0:48, 0:48].astype(float)
    image = np.stack([_smooth(Y, X), _smooth(X + 3.0, Y)])[None]  # [1, 2, 48, 48]
    ty, tx = np.mgrid[0:12, 0:12].astype(float)
    template = np.stack([_smooth(ty + 14.3, tx + 16.8), _smooth(tx + 16.8 + 3.0, ty + 14.3)])[None]
    mask = np.ones((12, 12))
    mask[3, 4] = 0.0
    image[0, :, 14 + 3, 17 + 4] = np.nan
    found = slidesim.match(image, template, mask=mask, metric=metric, channels=channels, method="direct")
    assert abs(float(found.y[0]) - 19.8) < 0.01 and abs(float(found.x[0]) - 22.3) < 0.01


def test_refinement_when_every_weighted_tap_of_a_shift_reads_a_hole() -> None:
    """A 2 × 2 template with one zero weight beside a hole: some shifts keep no weighted tap. They have no score
    (they once made the reference raise for a mask without weight) and the others still refine."""
    Y, X = np.mgrid[0:48, 0:48].astype(float)
    image = _smooth(Y, X)
    template = _smooth(*np.mgrid[14:16, 17:19].astype(float))
    mask = np.ones((2, 2))
    mask[0, 0] = 0.0
    image[14, 16] = np.nan
    for metric in ("zncc", "ssd"):
        found = slidesim.match(image, template, mask=mask, metric=metric, method="direct")
        assert np.isfinite(found.y[0]) and np.isfinite(found.score[0])
