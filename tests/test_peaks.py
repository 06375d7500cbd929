"""find_peaks: k best, suppression, thresholds, borders, minima, sub-pixel surface fit, errors."""

from __future__ import annotations

import sys

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
    found = slidesim.find_peaks(scores, k=5, threshold=0.1, subpixel=False, metric="zncc")
    assert _positions(found) == [(20, 30), (10, 20), (5, 5)]
    np.testing.assert_allclose(found.score, [0.9, 0.7, 0.5])
    assert _positions(slidesim.find_peaks(scores, k=2, threshold=0.1, subpixel=False, metric="zncc")) == [
        (20, 30),
        (10, 20),
    ]
    assert _positions(slidesim.find_peaks(scores, k=5, threshold=0.6, subpixel=False, metric="zncc")) == [
        (20, 30),
        (10, 20),
    ]


def test_min_distance_suppresses_the_weaker_neighbour() -> None:
    scores = _map({(10, 10): 0.9, (10, 14): 0.8, (25, 35): 0.3})
    both = slidesim.find_peaks(scores, k=3, threshold=0.1, min_distance=4, subpixel=False, metric="ncc")
    assert _positions(both) == [(10, 10), (10, 14), (25, 35)]  # 4 apart: not closer than 4
    one = slidesim.find_peaks(scores, k=3, threshold=0.1, min_distance=5, subpixel=False, metric="ncc")
    assert _positions(one) == [(10, 10), (25, 35)]


def test_plateau_ties_go_to_the_first_position() -> None:
    scores = _map({(8, 8): 1.0, (8, 9): 1.0, (9, 8): 1.0})
    found = slidesim.find_peaks(scores, k=3, threshold=0.5, min_distance=3, subpixel=False, higher_is_better=True)
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
    found = slidesim.find_peaks(scores, k=3, threshold=0.1, metric="zncc")
    assert _positions(found) == [(4, 4)]


def test_batches_templates_and_torch_in_torch_out() -> None:
    scores = torch.zeros(2, 3, 16, 16)
    for b in range(2):
        for t in range(3):
            scores[b, t, 3 + b, 4 + t] = 1 + b + t
    found = slidesim.find_peaks(scores, k=1, threshold=0.5, higher_is_better=True)
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
    found = slidesim.find_peaks(surface, k=1, metric="ccoeff")
    assert abs(float(found.y[0]) - cy) < 1e-9 and abs(float(found.x[0]) - cx) < 1e-9
    assert abs(float(found.score[0]) - 1) < 1e-9
    minimum = slidesim.find_peaks(-surface, k=1, metric="sad")
    assert abs(float(minimum.y[0]) - cy) < 1e-9 and abs(float(minimum.x[0]) - cx) < 1e-9


def test_peak_on_the_edge_keeps_the_integer_position_along_that_axis() -> None:
    scores = _map({(0, 10): 1.0, (1, 10): 0.5, (0, 9): 0.6, (0, 11): 0.4})
    found = slidesim.find_peaks(scores, k=1, metric="zncc")
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
        ({"k": True}, TypeError, "`k`"),
        ({"min_distance": -3}, ValueError, "`min_distance`"),
    ],
)
def test_bad_arguments(kwargs, error, text) -> None:
    with pytest.raises(error, match=text):
        slidesim.find_peaks(np.zeros((5, 5), np.float32), **{"metric": "zncc", **kwargs})


def test_bad_scores() -> None:
    with pytest.raises(ValueError, match=r"`scores` must be \[H', W'\] or \[B, T, H', W'\]"):
        slidesim.find_peaks(np.zeros((2, 5, 5), np.float32), metric="zncc")
    with pytest.raises(TypeError, match="`scores`"):
        slidesim.find_peaks([[0.0, 1.0]], metric="zncc")
    with pytest.raises(TypeError, match="`scores`"):
        slidesim.find_peaks(np.zeros((4, 4), complex), metric="zncc")


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"subpixel": "yes"}, TypeError, "`subpixel` must be True or False"),
        ({"subpixel": 1}, TypeError, "`subpixel` must be True or False"),
        ({"threshold": float("nan")}, ValueError, "`threshold` .* got NaN"),
        ({"metric": "ssd", "higher_is_better": True}, ValueError, "`higher_is_better=True` contradicts `metric='ssd'`"),
        ({"metric": "zncc", "higher_is_better": False}, ValueError, "contradicts `metric='zncc'`"),
        ({"metric": None, "higher_is_better": "yes"}, TypeError, "`higher_is_better`"),
        ({"images": np.zeros((5, 5), np.float32)}, ValueError, "`templates` must be given with `images`"),
        ({"templates": np.zeros((2, 2), np.float32)}, ValueError, "`images` must be given with `templates`"),
    ],
)
def test_malformed_options_get_the_projects_errors(kwargs, error, text) -> None:
    with pytest.raises(error, match=text):
        slidesim.find_peaks(np.zeros((5, 5), np.float32), **{"metric": "zncc", **kwargs})


@pytest.mark.parametrize("scores", [np.zeros((4, 4), np.float32), torch.zeros(1, 1, 4, 4)])
def test_the_direction_is_required(scores) -> None:
    """A map does not say whether it holds similarities or distances: guessing maxima returned an ssd map's worst
    position. Without ``metric`` or ``higher_is_better`` the call names both and the minimized metrics."""
    with pytest.raises(TypeError) as caught:
        slidesim.find_peaks(scores)
    message = str(caught.value)
    assert "`metric`" in message and "`higher_is_better`" in message
    assert "sad, mad, ssd, ssd_normed are minimized" in message and "metric='ssd'" in message
    distances = np.full((9, 9), 4.0, np.float32)
    distances[3, 5] = 0.0  # the best ssd position
    found = slidesim.find_peaks(distances, metric="ssd", subpixel=False)
    assert _positions(found) == [(3, 5)]
    assert _positions(slidesim.find_peaks(distances, higher_is_better=np.bool_(False), subpixel=False)) == [(3, 5)]


def test_refinement_on_the_data_needs_the_metric() -> None:
    image = np.random.default_rng(3).random((20, 20)).astype(np.float32)
    scores = slidesim.similarity(image, image[5:10, 5:10].copy(), metric="ssd")
    with pytest.raises(TypeError, match="`metric` must be given with `images`"):
        slidesim.find_peaks(scores, higher_is_better=False, images=image, templates=image[5:10, 5:10].copy())


@pytest.mark.parametrize(
    "scores",
    [
        np.zeros((0, 5), np.float32),
        np.zeros((1, 1, 0, 0), np.float32),
        np.zeros((0, 1, 5, 5), np.float32),
        torch.zeros(1, 0, 5, 5),
    ],
)
def test_an_empty_map_is_an_error_naming_scores(scores) -> None:
    """similarity never returns an empty map (templates larger than the image are refused), so an empty one is a
    mistake upstream: say so rather than let torch's pooling fail."""
    with pytest.raises(ValueError, match=r"`scores` must hold at least one score; got shape"):
        slidesim.find_peaks(scores, metric="zncc")


@pytest.mark.parametrize(
    ("scores", "error"),
    [
        (np.zeros(5, np.float32), ValueError),
        (np.zeros((1, 1, 1, 5, 5), np.float32), ValueError),
        (np.zeros((5, 5), bool), TypeError),
        (torch.zeros(5, 5, dtype=torch.bool), TypeError),
        (np.array([["a", "b"]]), TypeError),
    ],
)
def test_malformed_scores(scores, error) -> None:
    with pytest.raises(error, match="`scores`"):
        slidesim.find_peaks(scores, metric="zncc")


def _greedy_peaks(scores: np.ndarray, k: int, min_distance: int) -> list[tuple[int, int]]:
    """The definition, pixel by pixel: local maxima of the (2r + 1)² window (r = max(1, min_distance − 1)), best
    first with ties in row-major order, each kept unless a kept one lies closer than min_distance."""
    H, W = scores.shape
    r = max(1, min_distance - 1)
    key = np.where(np.isfinite(scores), scores, -np.inf)
    candidates = []
    for y in range(H):
        for x in range(W):
            window = key[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            if key[y, x] > -np.inf and key[y, x] == window.max():
                candidates.append((-key[y, x], y * W + x, y, x))
    kept: list[tuple[int, int]] = []
    for _, _, y, x in sorted(candidates):
        if all(max(abs(y - ky), abs(x - kx)) >= min_distance for ky, kx in kept) and len(kept) < k:
            kept.append((y, x))
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_suppression_matches_the_definition_on_plateaus_and_ties(seed) -> None:
    """Integer peaks agree with a pixel-by-pixel greedy suppression, on maps of few levels (plateaus, ties)."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, (23, 31)).astype(np.float32)
    scores += np.where(rng.random(scores.shape) < 0.3, rng.random(scores.shape), 0).astype(np.float32)
    scores[rng.random(scores.shape) < 0.05] = np.nan
    for k, min_distance in [(1, 1), (7, 2), (1000, 2), (1000, 3), (5, 6), (1000, 40)]:
        found = slidesim.find_peaks(scores, k=k, min_distance=min_distance, subpixel=False, metric="zncc")
        assert _positions(found) == _greedy_peaks(scores, k, min_distance), (k, min_distance)


def _python_calls(function) -> int:
    """Python-level calls and generator resumptions made while ``function`` runs."""
    count = 0

    def profile(frame, event, arg) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        function()
    finally:
        sys.setprofile(None)
    return count


def test_suppression_work_grows_with_the_candidates_not_their_square() -> None:
    """Asking for every peak of a map with many must not compare each candidate with every kept one: Python-level
    work stays within a few calls per candidate (a per-pair check made millions here)."""
    rng = np.random.default_rng(4)
    scores = np.zeros((120, 120), np.float32)
    scores[1::3, 1::3] = rng.random((40, 40)) + 1  # 1600 separate peaks, 3 px apart
    scores[60:90, :30] = 0.5  # and a plateau, where ties decide
    found = []
    calls = _python_calls(lambda: found.append(slidesim.find_peaks(scores, k=10**6, min_distance=2, metric="ncc")))
    assert len(found[0]) > 1600
    assert calls < 40 * len(found[0])


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
    surface = slidesim.find_peaks(scores, k=1, metric="zncc")
    data = slidesim.find_peaks(scores, k=1, images=scene, templates=template, metric="zncc")
    assert abs(data.y[0] - (30 + fy)) < 0.02 and abs(data.x[0] - (40 + fx)) < 0.02
    surface_error = max(abs(surface.y[0] - (30 + fy)), abs(surface.x[0] - (40 + fx)))
    assert surface_error > 2 * max(abs(data.y[0] - (30 + fy)), abs(data.x[0] - (40 + fx)))
    strided = slidesim.similarity(scene, template, stride=2)
    again = slidesim.find_peaks(strided, k=1, images=scene, templates=template, stride=2, metric="zncc")
    assert abs(again.y[0] - (30 + fy) / 2) < 0.01 and abs(again.x[0] - (40 + fx) / 2) < 0.01
    with pytest.raises(ValueError, match="did not come from these images"):
        slidesim.find_peaks(strided, images=scene, templates=template, metric="zncc")


@pytest.mark.parametrize("seed", range(4))
def test_suppression_of_points_gathered_elsewhere_is_that_of_the_maps(seed) -> None:
    """suppress_points (what slidesim.dask merges its chunks' candidates with) keeps the peaks of locate_peaks
    from the candidates alone, on maps with plateaus and ties: it finds which ones have a neighbour from cells of
    min_distance pixels, without the map."""
    from slidesim.peaks import local_maxima, locate_peaks, ranking_key, suppress_points

    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(rng.integers(0, 3, (2, 3, 29, 37)).astype(np.float32))
    maps += torch.where(torch.rand(maps.shape) < 0.3, torch.rand(maps.shape), 0.0)
    for k, min_distance in [(1, 1), (7, 2), (1000, 2), (1000, 3), (5, 6), (1000, 40)]:
        radius = max(1, min(min_distance - 1, 37))
        key = ranking_key(maps, None, 0, True).reshape(6, 1, 29, 37)
        group, flat = local_maxima(key, (radius, radius)).reshape(6, -1).nonzero(as_tuple=True)
        order = np.lexsort((flat.numpy(), -key.reshape(6, -1)[group, flat].numpy(), group.numpy()))
        group, y, x = group[order], flat[order] // 37, flat[order] % 37
        kept = suppress_points(group, y, x, k, min_distance)
        got = torch.stack([group[kept] // 3, group[kept] % 3, y[kept], x[kept]], dim=1)
        assert torch.equal(got, locate_peaks(maps, k, min_distance, None, 0, True)), (k, min_distance)


def test_refinement_on_channels_last_data_equals_the_transposed_call() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(12)
    scene = ndimage.gaussian_filter(rng.random((40, 43, 3)), (1.5, 1.5, 0)).astype(np.float32)  # [H, W, C]
    template = scene[11:22, 7:16].copy()
    scores = slidesim.similarity(scene, template, metric="zncc", channels_last=True)
    assert scores.shape == (30, 35)
    got = slidesim.find_peaks(scores, k=2, images=scene, templates=template, metric="zncc", channels_last=True)
    first = np.ascontiguousarray(scene.transpose(2, 0, 1))[None], np.ascontiguousarray(template.transpose(2, 0, 1))
    want = slidesim.find_peaks(scores, k=2, images=first[0], templates=first[1][None], metric="zncc")
    for name in ("batch", "template", "y", "x", "score"):
        assert np.array_equal(getattr(got, name), getattr(want, name))
    assert abs(float(got.y[0]) - 11) < 0.01 and abs(float(got.x[0]) - 7) < 0.01
