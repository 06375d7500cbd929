"""Sub-pixel refinement on the data (slidesim._refine): accuracy on photographs shifted by known fractions of a
pixel, the compute dtype with its float64 checks, and results that do not depend on the batch of shifts.

Scenes are a photograph blurred by a lens-like point spread (Gaussian, σ = 0.7 px) and shifted with cubic splines
(the resampler's own model, so the true optimum is the shift itself) or in the Fourier domain (a band-limited
shift, which the splines only approximate).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim import _refine, _refine_many

skimage_data = pytest.importorskip("skimage.data")
ndimage = pytest.importorskip("scipy.ndimage")

_OPTIONS = {"mode": "valid", "padding": "constant", "channels": "joint"}


def _scene(shift: tuple[float, float], fourier: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(photograph [512, 512] float64 in 0..255, the same shifted by ``shift``)."""
    photo = ndimage.gaussian_filter(skimage_data.camera().astype(np.float64), 0.7)
    if fourier:
        shifted = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(photo), shift)).real
    else:
        shifted = ndimage.shift(photo, shift, order=3, mode="reflect")
    return photo, shifted


_CORNERS = [(200, 240), (100, 200), (150, 330), (420, 300)]  # textured 32 × 32 patches of the camera man
_SHIFTS = [(0.3, -0.4), (-0.45, 0.15), (0.1, 0.35), (-0.2, -0.25)]


def _refine_at(image: np.ndarray, template: np.ndarray, centre, metric: str, **options):
    """The refined (y, x, score) of one peak, as match and find_peaks refine it."""
    peak = _refine_many.Peak(torch.from_numpy(image)[None], torch.from_numpy(template)[None], None, centre)
    higher = slidesim.metrics.resolve_metric(metric).higher_is_better
    return _refine_many.refine_peaks([peak], (1, 1), higher, {**_OPTIONS, "metric": metric, **options})[0]


class _Counter:
    """Windows scored by refinement, per dtype."""

    def __init__(self, monkeypatch) -> None:
        self.windows: dict[torch.dtype, int] = {}
        original = _refine_many._Surfaces._scores

        def counted(surfaces, index, windows):
            self.windows[windows.dtype] = self.windows.get(windows.dtype, 0) + windows.shape[0] * windows.shape[1]
            return original(surfaces, index, windows)

        monkeypatch.setattr(_refine_many._Surfaces, "_scores", counted)


@pytest.mark.parametrize("metric", ["zncc", "ssd", "sad"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_known_shifts_are_recovered_scoring_few_windows_in_the_compute_dtype(metric, dtype, monkeypatch) -> None:
    """Spline-shifted photographs: the refined centre is within 0.015 px of the true one for every metric and
    input dtype (resampling the shifted samples with splines again is not exact: the float64 search leaves up to
    0.011 px here). Each peak scores at most 175 windows (seven 5 × 5 grids), float32 ones for float32 and uint8
    inputs, and at most 30 in float64 (the checks and the score returned); the search once scored 245 or more, all
    in float64."""
    counter = _Counter(monkeypatch)
    for (y, x), (fy, fx) in zip(_CORNERS, _SHIFTS, strict=True):
        photo, scene = _scene((fy, fx))
        template = photo[y : y + 32, x : x + 32]
        if dtype == "uint8":
            scene, template = (np.clip(np.round(a), 0, 255).astype(np.uint8) for a in (scene, template))
            scene, template = scene.astype(np.float32), template.astype(np.float32)  # as the core converts them
        else:
            scene, template = (a.astype(np.float32) / 255 for a in (scene, template))
        before = dict(counter.windows)
        cy, cx, _ = _refine_at(scene, template, (y + 15.5 + round(fy), x + 15.5 + round(fx)), metric)
        assert abs(cy - (y + 15.5 + fy)) < 0.015 and abs(cx - (x + 15.5 + fx)) < 0.015, (y, x, cy, cx)
        scored = {d: n - before.get(d, 0) for d, n in counter.windows.items()}
        assert scored.get(torch.float32, 0) <= 175 and scored.get(torch.float64, 0) <= 30, scored


@pytest.mark.parametrize("metric", ["zncc", "ncc", "ssd", "sad", "ccoeff"])
def test_float32_refinement_agrees_with_float64(metric) -> None:
    """The same data as float32 and as float64: positions within 1e-3 px, and scores (float64 at the refined
    position) within 1e-6 relative; 1e-4 for sad, whose surface has kinks (a position 1e-4 px away changes it to
    first order), and for ssd, whose minimum here is 1e-5 of its terms."""
    for (y, x), shift in zip(_CORNERS, _SHIFTS, strict=True):
        photo, scene = (a / 255 for a in _scene(shift, fourier=True))
        template = photo[y : y + 32, x : x + 32]
        centre = (y + 15.5, x + 15.5)
        wide = _refine_at(scene, template, centre, metric)
        narrow = _refine_at(scene.astype(np.float32), template.astype(np.float32), centre, metric)
        assert abs(wide[0] - narrow[0]) < 1e-3 and abs(wide[1] - narrow[1]) < 1e-3, (wide, narrow)
        assert abs(wide[2] - narrow[2]) <= (1e-4 if metric in ("sad", "ssd") else 1e-6) * abs(wide[2]), (wide, narrow)


@pytest.mark.parametrize("metric", ["zncc", "sad"])
def test_results_do_not_depend_on_the_batch_of_shifts(metric) -> None:
    """memory_limit sets how many shifts are scored at once (a whole grid, or more): the refined position and score
    are the same to the last bit. Below a grid, the search of one shift at a time through the reference's formulas
    agrees to round-off."""
    photo, scene = _scene((0.3, -0.4))
    template = photo[200:232, 240:272].astype(np.float32)
    scene = scene.astype(np.float32)
    fixed, per_shift = _refine.refinement_bytes(1, (32, 32), (1, 1))
    results = {
        batch: _refine_at(scene, template, (215.5, 255.5), metric, memory_limit=fixed + batch * per_shift)
        for batch in (25, 30, 60, 1000)
    }
    assert len(set(results.values())) == 1, results
    for batch in (1, 7, 24):
        alone = _refine_at(scene, template, (215.5, 255.5), metric, memory_limit=fixed + batch * per_shift)
        np.testing.assert_allclose(alone[:2], results[25][:2], atol=1e-3, rtol=0)
        np.testing.assert_allclose(alone[2], results[25][2], rtol=1e-4)


@pytest.mark.parametrize("metric", ["sad", "ssd", "zncc", "ncc", "mad"])
def test_exact_copies_with_sharp_edges_keep_their_exact_score(metric) -> None:
    """A screenshot-like uint8 scene (flat panels, one-pixel strokes) holding exact copies of a button: refined,
    each copy stays at its whole-pixel position with its exact score (sad, mad and ssd 0, zncc and ncc 1). The
    quadratic's vertex once fell 0.005 px beside the copy, where sad is 43, and a window resampled at a whole
    position scored 1e-10 instead of 0."""
    rng = np.random.default_rng(11)
    scene = np.full((120, 200), 236, dtype=np.uint8)
    button = np.full((18, 40), 200, dtype=np.uint8)
    button[[0, -1], :] = 90  # a dark frame
    button[:, [0, -1]] = 90
    button[6:12, 8:32] = np.where(rng.random((6, 24)) < 0.4, 20, 200)  # a word of one-pixel strokes
    corners = [(10, 12), (60, 30), (40, 150)]
    for y, x in corners:
        scene[y : y + 18, x : x + 40] = button
    found = slidesim.match(scene, button, metric=metric, k=3)
    assert sorted(zip(found.y.tolist(), found.x.tolist(), strict=True)) == sorted(
        (y + 8.5, x + 19.5) for y, x in corners
    )
    assert found.score.tolist() == [1.0 if metric in ("zncc", "ncc") else 0.0] * 3
