"""find_peaks: k best, suppression, thresholds, borders, minima, sub-pixel surface fit, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim


def _map(peaks: dict[tuple[int, int], float], shape=(30, 40)) -> np.ndarray:
    scores = np.zeros(shape, np.float32)
    for (y, x), value in peaks.items():
        scores[y, x] = value
    return scores


def _positions(found) -> list[tuple[int, int]]:
    return [(round(float(y)), round(float(x))) for y, x in zip(found.y, found.x, strict=True)]


def test_k_best_in_order_with_threshold() -> None:
    scores = _map({(5, 5): 0.5, (20, 30): 0.9, (10, 20): 0.7})
    found = slidesim.find_peaks(scores, k=5, threshold=0.1, subpixel=False)
    assert _positions(found) == [(20, 30), (10, 20), (5, 5)]
    np.testing.assert_allclose(found.score, [0.9, 0.7, 0.5])
    assert _positions(slidesim.find_peaks(scores, k=2, threshold=0.1, subpixel=False)) == [(20, 30), (10, 20)]
    assert _positions(slidesim.find_peaks(scores, k=5, threshold=0.6, subpixel=False)) == [(20, 30), (10, 20)]


def test_min_distance_suppresses_the_weaker_neighbour() -> None:
    scores = _map({(10, 10): 0.9, (10, 14): 0.8, (25, 35): 0.3})
    both = slidesim.find_peaks(scores, k=3, threshold=0.1, min_distance=4, subpixel=False)
    assert _positions(both) == [(10, 10), (10, 14), (25, 35)]  # 4 apart: not closer than 4
    one = slidesim.find_peaks(scores, k=3, threshold=0.1, min_distance=5, subpixel=False)
    assert _positions(one) == [(10, 10), (25, 35)]


def test_plateau_ties_go_to_the_first_position() -> None:
    scores = _map({(8, 8): 1.0, (8, 9): 1.0, (9, 8): 1.0})
    found = slidesim.find_peaks(scores, k=3, threshold=0.5, min_distance=3, subpixel=False)
    assert _positions(found) == [(8, 8)]


def test_minima_for_distance_metrics_and_exclude_border() -> None:
    scores = np.full((20, 20), 5.0, np.float32)
    scores[0, 0], scores[10, 12], scores[15, 3] = 0.0, 1.0, 2.0
    found = slidesim.find_peaks(scores, k=2, metric="ssd", subpixel=False)
    assert _positions(found) == [(0, 0), (10, 12)]
    found = slidesim.find_peaks(scores, k=2, metric="ssd", exclude_border=2, threshold=3.0, subpixel=False)
    assert _positions(found) == [(10, 12), (15, 3)]
    assert _positions(slidesim.find_peaks(scores, k=1, higher_is_better=False, subpixel=False)) == [(0, 0)]


def test_non_finite_scores_are_never_peaks() -> None:
    scores = _map({(4, 4): 0.9})
    scores[10, 10] = np.nan
    scores[12, 12] = np.inf
    found = slidesim.find_peaks(scores, k=3, threshold=0.1)
    assert _positions(found) == [(4, 4)]


def test_batches_templates_and_torch_in_torch_out() -> None:
    scores = torch.zeros(2, 3, 16, 16)
    for b in range(2):
        for t in range(3):
            scores[b, t, 3 + b, 4 + t] = 1 + b + t
    found = slidesim.find_peaks(scores, k=1, threshold=0.5)
    assert isinstance(found.y, torch.Tensor)
    assert found.batch.tolist() == [0, 0, 0, 1, 1, 1]
    assert found.template.tolist() == [0, 1, 2, 0, 1, 2]
    assert [(round(float(y)), round(float(x))) for y, x in zip(found.y, found.x, strict=True)] == [
        (3 + b, 4 + t) for b in range(2) for t in range(3)
    ]


@pytest.mark.parametrize(("cy", "cx"), [(7.3, 9.6), (12.0, 4.45), (6.8, 6.2)])
def test_subpixel_surface_fit_recovers_a_quadratic_peak(cy, cx) -> None:
    yy, xx = np.mgrid[0:20, 0:20].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    surface = 1 - (2 * dy * dy + dx * dx + 1.2 * dy * dx)  # anisotropic, with a cross term
    found = slidesim.find_peaks(surface, k=1)
    assert abs(float(found.y[0]) - cy) < 1e-9 and abs(float(found.x[0]) - cx) < 1e-9
    assert abs(float(found.score[0]) - 1) < 1e-9
    minimum = slidesim.find_peaks(-surface, k=1, metric="sad")
    assert abs(float(minimum.y[0]) - cy) < 1e-9 and abs(float(minimum.x[0]) - cx) < 1e-9


def test_peak_on_the_edge_keeps_the_integer_position_along_that_axis() -> None:
    scores = _map({(0, 10): 1.0, (1, 10): 0.5, (0, 9): 0.6, (0, 11): 0.4})
    found = slidesim.find_peaks(scores, k=1)
    assert float(found.y[0]) == 0.0
    assert 9.5 <= float(found.x[0]) < 10.0


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"k": 0}, ValueError, "`k`"),
        ({"k": 1.5}, TypeError, "`k`"),
        ({"min_distance": 0}, ValueError, "`min_distance`"),
        ({"exclude_border": -1}, ValueError, "`exclude_border`"),
        ({"threshold": "high"}, TypeError, "`threshold`"),
        ({"metric": "nope"}, ValueError, "metric"),
        ({"higher_is_better": 1}, TypeError, "`higher_is_better`"),
    ],
)
def test_bad_arguments(kwargs, error, text) -> None:
    with pytest.raises(error, match=text):
        slidesim.find_peaks(np.zeros((5, 5), np.float32), **kwargs)


def test_bad_scores() -> None:
    with pytest.raises(ValueError, match=r"`scores` must be \[H', W'\] or \[B, T, H', W'\]"):
        slidesim.find_peaks(np.zeros((2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="`scores`"):
        slidesim.find_peaks([[0.0, 1.0]])
    with pytest.raises(TypeError, match="`scores`"):
        slidesim.find_peaks(np.zeros((4, 4), complex))


def test_refinement_on_the_data_beats_the_surface_fit() -> None:
    """A fractional shift of a textured image: the quadratic fit of the map is off by a visible fraction of a
    pixel, the refinement on the data is not. Positions are in score-map pixels (stride 1: the top-left corner)."""
    rng = np.random.default_rng(21)
    base = np.kron(rng.random((24, 24)), np.ones((4, 4)))
    ndimage = pytest.importorskip("scipy.ndimage")
    base = ndimage.gaussian_filter(base, 1.0)
    fy, fx = 0.3, -0.4
    scene = ndimage.shift(base, (fy, fx), order=3, mode="reflect").astype(np.float32)
    template = base[30:50, 40:60].astype(np.float32)
    scores = slidesim.similarity(scene, template)
    surface = slidesim.find_peaks(scores, k=1)
    data = slidesim.find_peaks(scores, k=1, images=scene, templates=template, metric="zncc")
    assert abs(data.y[0] - (30 + fy)) < 0.02 and abs(data.x[0] - (40 + fx)) < 0.02
    surface_error = max(abs(surface.y[0] - (30 + fy)), abs(surface.x[0] - (40 + fx)))
    assert surface_error > 2 * max(abs(data.y[0] - (30 + fy)), abs(data.x[0] - (40 + fx)))
    strided = slidesim.similarity(scene, template, stride=2)
    again = slidesim.find_peaks(strided, k=1, images=scene, templates=template, stride=2)
    assert abs(again.y[0] - (30 + fy) / 2) < 0.01 and abs(again.x[0] - (40 + fx) / 2) < 0.01
    with pytest.raises(ValueError, match="did not come from these images"):
        slidesim.find_peaks(strided, images=scene, templates=template)
