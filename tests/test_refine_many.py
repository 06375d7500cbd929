"""Refinement of many peaks at once (slidesim._refine_many): the same answer for a peak whatever peaks share its
batch, and the answers of the one-shift-at-a-time search through the reference's formulas to round-off."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slidesim
from slidesim import _refine, _refine_many
from slidesim._refine_many import Peak, refine_peaks

ndimage = pytest.importorskip("scipy.ndimage")
skimage_data = pytest.importorskip("skimage.data")


# Agreement of a float32 search with a float64 one: the searches compare smoothed windows, whose surface is
# flatter than the metric's, so float32 round-off moves the optimum by up to about 1e-3 px; the score reported is
# the metric's own there, which is not stationary on the smoothed optimum, so it moves by the same order
POSITIONS = 2e-3
SCORES = 1e-3


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
def test_many_peaks_agree_with_the_search_of_one_shift_at_a_time(metric, dtype) -> None:
    """The batched search (quick formulas, float32 for float32 data) and the one-shift-at-a-time search through
    the reference's formulas (what refinement falls back to beside holes, or when memory_limit holds less than a
    row of a grid): the same positions within 1e-3 px (float32 refinement's agreement with float64) and scores
    within 1e-4 relative."""
    peaks = _peaks(dtype)
    options = _options(metric)
    higher = slidesim.metrics.resolve_metric(metric).higher_is_better
    got, want = refine_peaks(peaks, (1, 1), higher, options), _one_by_one(peaks, options)
    np.testing.assert_allclose([row[:2] for row in got], [row[:2] for row in want], atol=POSITIONS, rtol=0)
    np.testing.assert_allclose([row[2] for row in got], [row[2] for row in want], rtol=SCORES, atol=1e-12)


@pytest.mark.parametrize("channels", ["joint", "mean"])
def test_colour_and_masks_agree_with_the_search_of_one_shift_at_a_time(channels) -> None:
    """Three channels and a weighted mask."""
    peaks = _peaks(torch.float32, channels=3, masked=True)
    options = _options("zncc", channels)
    got, want = refine_peaks(peaks, (1, 1), True, options), _one_by_one(peaks, options)
    np.testing.assert_allclose([row[:2] for row in got], [row[:2] for row in want], atol=POSITIONS, rtol=0)
    np.testing.assert_allclose([row[2] for row in got], [row[2] for row in want], rtol=SCORES)


def test_answers_do_not_depend_on_the_peaks_that_share_a_batch(monkeypatch) -> None:
    """Batches of 2 peaks, or of all of them, or peaks in another order: the same answer for every peak."""
    peaks = _peaks(torch.float32, count=9)
    options = _options("zncc")
    together = refine_peaks(peaks, (1, 1), True, options)
    assert [refine_peaks([peak], (1, 1), True, options)[0] for peak in peaks] == together
    monkeypatch.setattr(_refine_many, "MOST_PEAKS", 2)
    assert refine_peaks(peaks, (1, 1), True, options) == together
    assert refine_peaks(peaks[::-1], (1, 1), True, options) == together[::-1]


def test_a_memory_limit_below_a_whole_grid_scores_it_a_few_rows_at_a_time(monkeypatch) -> None:
    """Large templates whose 5 × 5 grid of shifts does not fit memory_limit are still searched together, a row or
    two of each grid at a time (not one shift at a time through the reference's formulas): the answers of whole
    grids, within the round-off of differently shaped products."""
    peaks = _peaks(torch.float32, count=3)
    options = _options("zncc")
    whole = refine_peaks(peaks, (1, 1), True, options)
    fixed, per_shift = _refine.refinement_bytes(1, (24, 20), (1, 1))
    monkeypatch.setattr(_refine_many, "refine_on_data", lambda *a: pytest.fail("a shift at a time"))
    for rows in (1, 2):
        limited = {**options, "memory_limit": fixed + rows * 5 * per_shift}
        got = refine_peaks(peaks, (1, 1), True, limited)
        np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6)


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
    assert got[1] == _one_by_one(peaks[1:2], options)[0]  # the holed crop: the one-shift search exactly
    assert got[2] == refine_peaks(peaks[2:3], (1, 1), False, options)[0]
    assert all(np.isfinite(v) for row in got for v in row)


def test_progress_counts_batches() -> None:
    calls = []
    peaks = _peaks(torch.float32, count=3)
    refine_peaks(peaks, (1, 1), True, _options("zncc"), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 3), (3, 3)]


@pytest.mark.parametrize("metric", ["zncc", "ncc", "ccoeff"])
@pytest.mark.parametrize("numba", [True, False])
def test_flat_templates_keep_their_integer_peak_without_a_search(metric, numba, monkeypatch) -> None:
    """A flat template (zero for ncc) scores 0 at every shift: its peak stays where it was found, scored exactly,
    and no grid is scored for it (each once went through the reference's formulas, grid after grid), by the numba
    search or by the torch search (without numba)."""
    peaks = _peaks(torch.float32, count=3)
    level = 0.0 if metric == "ncc" else 0.3
    peaks[1] = Peak(peaks[1].image, torch.full_like(peaks[1].template, level), None, peaks[1].centre)
    grids, searched = [], []
    original = _refine_many._Surfaces._grids
    monkeypatch.setattr(
        _refine_many._Surfaces,
        "_grids",
        lambda self, index, *a: grids.append(index.tolist()) or original(self, index, *a),
    )
    if numba:
        numba_refine = pytest.importorskip("slidesim.kernels.numba_refine")
        search = numba_refine.search_peaks
        monkeypatch.setattr(
            numba_refine, "search_peaks", lambda *a, **k: searched.append(a[4].tolist()) or search(*a, **k)
        )
    else:
        monkeypatch.setattr(_refine_many, "fused_statistics_available", lambda: False)
    got = refine_peaks(peaks, (1, 1), True, _options(metric))
    assert got[1] == (*peaks[1].centre, 0.0)
    assert all(1 not in index for index in grids)
    assert searched == [[True, False, True]] if numba else grids


@pytest.mark.parametrize("metric", ["zncc", "ncc", "ssd", "sad"])
@pytest.mark.parametrize(("channels", "masked"), [(1, False), (3, True)])
@pytest.mark.parametrize("search", ["numba", "numba rows"])
def test_the_numba_search_and_the_torch_search_agree(metric, channels, masked, search, monkeypatch) -> None:
    """Refinement by the numba search (a thread per peak), by the torch search over numba rows of grids (one peak
    of a large template) and by batched torch operations alone (float32 for float32 data, what runs without
    numba): the same positions within 1e-3 px, scores within 1e-4 relative."""
    pytest.importorskip("numba")
    peaks = _peaks(torch.float32, channels, masked, count=4)
    options = _options(metric)
    higher = slidesim.metrics.resolve_metric(metric).higher_is_better
    if search == "numba":
        with_kernel = refine_peaks(peaks, (1, 1), higher, options)
    else:
        monkeypatch.setattr(_refine_many, "_ONE_PEAK_SEARCH_TAPS", 0)
        with_kernel = [refine_peaks([peak], (1, 1), higher, options)[0] for peak in peaks]
    monkeypatch.setattr(_refine_many, "fused_statistics_available", lambda: False)
    without = refine_peaks(peaks, (1, 1), higher, options)
    np.testing.assert_allclose([row[:2] for row in with_kernel], [row[:2] for row in without], atol=POSITIONS, rtol=0)
    np.testing.assert_allclose([row[2] for row in with_kernel], [row[2] for row in without], rtol=SCORES)
    assert [row[:2] for row in with_kernel] != [tuple(p.centre) for p in peaks]  # the peaks moved off the pixels


@pytest.mark.parametrize("search", ["batched", "one shift at a time"])
def test_noise_does_not_pull_the_refined_position_to_half_pixels(search) -> None:
    """Resampling white noise at a fraction of a pixel lowers its variance (most at half a pixel), which raised
    zncc there: on a photograph shifted by a known fraction of a pixel with noise of σ = 5 grey levels, refined
    positions erred by 0.10 px (median) and up to 0.28 px. The search compares windows and template smoothed alike
    within the footprint, which takes the noise's highest frequencies out of the comparison: median error below
    0.03 px."""
    photo = ndimage.gaussian_filter(skimage_data.camera().astype(np.float64), 0.7)
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(10):
        shift = rng.uniform(-0.5, 0.5, 2)
        scene = ndimage.shift(photo, shift, order=3, mode="reflect") + rng.normal(0, 5, photo.shape)
        y, x = (int(v) for v in rng.integers(100, 380, 2))
        template = torch.from_numpy(photo[y : y + 48, x : x + 48].copy())[None].float()
        centre = (y + 23.5 + round(shift[0]), x + 23.5 + round(shift[1]))
        peak = Peak(torch.from_numpy(scene)[None].float(), template, None, centre)
        if search == "batched":
            found = refine_peaks([peak], (1, 1), True, _options("zncc"))[0]
        else:
            found = _one_by_one([peak], _options("zncc"))[0]
        errors.append(math.hypot(found[0] - (y + 23.5 + shift[0]), found[1] - (x + 23.5 + shift[1])))
    assert np.median(errors) < 0.03, errors
    assert max(errors) < 0.1, errors


def test_a_flat_window_is_handed_to_the_degenerate_rules(monkeypatch) -> None:
    """A peak whose windows are all zero (zero energy: ncc has no value by its formula) is handed back by the numba
    search to the torch search, which applies the reference's degenerate rules: the same answer as without numba."""
    pytest.importorskip("numba")
    peaks = _peaks(torch.float64, count=3)
    flat = peaks[1].image.clone()
    cy, cx = (int(v) for v in peaks[1].centre)
    flat[:, cy - 60 : cy + 61, cx - 60 : cx + 61] = 0.0  # the whole crop: its spline coefficients are zero too
    peaks[1] = Peak(flat, peaks[1].template, None, peaks[1].centre)
    handed = []
    numba_refine = pytest.importorskip("slidesim.kernels.numba_refine")
    search = numba_refine.search_peaks

    def spy(*args, **kwargs):
        found = search(*args, **kwargs)
        handed.append(found[3].tolist())
        return found

    monkeypatch.setattr(numba_refine, "search_peaks", spy)
    with_kernel = refine_peaks(peaks, (1, 1), True, _options("ncc"))
    assert handed == [[False, True, False]]
    monkeypatch.setattr(_refine_many, "fused_statistics_available", lambda: False)
    without = refine_peaks(peaks, (1, 1), True, _options("ncc"))
    assert with_kernel[1] == without[1] == (*peaks[1].centre, 0.0)
    np.testing.assert_allclose(with_kernel, without, atol=POSITIONS, rtol=0)
