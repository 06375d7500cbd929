"""Refinement of many peaks at once (slidesim._refine_many): the same answers as the one-peak search, whatever
peaks share a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim import _refine, _refine_many
from slidesim._refine_many import Peak, refine_peaks

ndimage = pytest.importorskip("scipy.ndimage")
skimage_data = pytest.importorskip("skimage.data")


def _peaks(dtype: torch.dtype, channels: int = 1, masked: bool = False, count: int = 7) -> list[Peak]:
    """Peaks of 24 × 20 templates cut from a blurred photograph at random places, the scene shifted by a fraction
    of a pixel; with ``channels`` channels (the photograph and brighter copies) and a random mask."""
    photo = ndimage.gaussian_filter(skimage_data.camera().astype(np.float64), 0.7) / 255
    scene = ndimage.shift(photo, (0.3, -0.2), order=3, mode="reflect")
    photo = np.stack([photo * (1 + 0.2 * c) for c in range(channels)])
    scene = torch.from_numpy(np.stack([scene * (1 + 0.2 * c) for c in range(channels)])).to(dtype)
    rng = np.random.default_rng(5)
    peaks = []
    for _ in range(count):
        y, x = (int(v) for v in rng.integers(40, 440, 2))
        template = torch.from_numpy(photo[:, y : y + 24, x : x + 20].copy()).to(dtype)
        mask = torch.from_numpy(rng.random((1, 24, 20)) + 0.1).to(dtype) if masked else None
        peaks.append(Peak(scene, template, mask, (y + 11.5, x + 9.5)))
    return peaks


def _options(metric: str, channels: str = "joint") -> dict:
    return {"mode": "valid", "padding": "constant", "channels": channels, "metric": metric}


def _one_by_one(peaks: list[Peak], options: dict) -> list[tuple[float, float, float]]:
    higher = slidesim.metrics.resolve_metric(options["metric"]).higher_is_better
    return [_refine.refine_on_data(p.image, p.template, p.mask, p.centre, (1, 1), higher, options) for p in peaks]


@pytest.mark.parametrize("metric", ["zncc", "ncc", "ccoeff", "ccorr", "ssd", "ssd_normed", "sad", "mad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_peaks_get_the_answers_of_one_at_a_time(metric, dtype) -> None:
    """Positions and scores are those of the one-peak search to the last bit (each shift's window comes from
    products of the same shapes), with float32 and float64 data."""
    peaks = _peaks(dtype)
    options = _options(metric)
    higher = slidesim.metrics.resolve_metric(metric).higher_is_better
    assert refine_peaks(peaks, (1, 1), higher, options) == _one_by_one(peaks, options)


@pytest.mark.parametrize("channels", ["joint", "mean"])
def test_colour_and_masks_get_the_answers_of_one_at_a_time(channels) -> None:
    """Three channels and a weighted mask: the same positions, and the same float64 scores to a few units of
    round-off (the masked sums are reduced in another order)."""
    peaks = _peaks(torch.float32, channels=3, masked=True)
    options = _options("zncc", channels)
    got, want = refine_peaks(peaks, (1, 1), True, options), _one_by_one(peaks, options)
    assert [row[:2] for row in got] == [row[:2] for row in want]
    np.testing.assert_allclose([row[2] for row in got], [row[2] for row in want], rtol=1e-15, atol=0)


def test_answers_do_not_depend_on_the_peaks_that_share_a_batch(monkeypatch) -> None:
    """Batches of 2 peaks, or of all of them, or peaks in another order: the same answer for every peak."""
    peaks = _peaks(torch.float32, count=9)
    options = _options("zncc")
    together = refine_peaks(peaks, (1, 1), True, options)
    monkeypatch.setattr(_refine_many, "MOST_PEAKS", 2)
    assert refine_peaks(peaks, (1, 1), True, options) == together
    assert refine_peaks(peaks[::-1], (1, 1), True, options) == together[::-1]


def test_peaks_beside_holes_and_of_other_shapes_are_refined_too() -> None:
    """A crop holding NaN goes through the one-peak search; templates of two shapes form two batches; results
    come back in the peaks' order."""
    peaks = _peaks(torch.float32, count=4)
    holed = peaks[1].image.clone()
    y, x = (int(v) for v in peaks[1].centre)
    holed[:, y + 14, x - 3] = torch.nan
    peaks[1] = Peak(holed, peaks[1].template, None, peaks[1].centre)
    peaks[2] = Peak(
        peaks[2].image,
        peaks[2].template[:, :20, :16].contiguous(),
        None,
        (peaks[2].centre[0] - 2, peaks[2].centre[1] - 2),
    )
    options = _options("sad")
    got = refine_peaks(peaks, (1, 1), False, options)
    assert got == _one_by_one(peaks, options)
    assert all(np.isfinite(v) for row in got for v in row)


def test_progress_counts_batches() -> None:
    calls = []
    peaks = _peaks(torch.float32, count=3)
    refine_peaks(peaks, (1, 1), True, _options("zncc"), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 3), (3, 3)]
