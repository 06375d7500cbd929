"""find_peaks: k best, suppression, thresholds, borders, minima, sub-pixel surface fit, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim.peaks import top_scores

from .conftest import python_calls


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


def test_suppression_work_grows_with_the_candidates_not_their_square() -> None:
    """Asking for every peak of a map with many must not compare each candidate with every kept one: Python-level
    work stays within a few calls per candidate (a per-pair check made millions here)."""
    rng = np.random.default_rng(4)
    scores = np.zeros((120, 120), np.float32)
    scores[1::3, 1::3] = rng.random((40, 40)) + 1  # 1600 separate peaks, 3 px apart
    scores[60:90, :30] = 0.5  # and a plateau, where ties decide
    found = []
    calls = python_calls(lambda: found.append(slidesim.find_peaks(scores, k=10**6, min_distance=2, metric="ncc")))
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
    for name in ("batch", "template"):
        assert np.array_equal(getattr(got, name), getattr(want, name))
    # refinement runs in float32: the two layouts reach its matrix products with different strides
    for name, tolerance in (("y", 1e-5), ("x", 1e-5), ("score", 1e-6)):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=tolerance)
    assert abs(float(got.y[0]) - 11) < 0.01 and abs(float(got.x[0]) - 7) < 0.01


def _definition(maps: np.ndarray, k: int, min_distance: int, threshold, border: int, higher: bool) -> np.ndarray:
    """Integer peaks (b, t, y, x) [N, 4] of maps [B, T, H, W] by the definition, with numpy and Python loops: a
    position may be a peak where its score is finite, passes the threshold (compared in float64) and lies
    outside the border; a peak is the best of its (2r + 1)² window (r = max(1, min(min_distance − 1, max(H, W))));
    peaks go best first, ties in row-major order, each kept unless a kept one is closer than min_distance, at most
    k per map."""
    B, T, H, W = maps.shape
    r = max(1, min(min_distance - 1, max(H, W)))
    rows = []
    for b in range(B):
        for t in range(T):
            score = maps[b, t].astype(np.float64)
            ok = np.isfinite(score)
            if threshold is not None:
                ok &= score >= threshold if higher else score <= threshold
            ok[:border], ok[H - border :], ok[:, :border], ok[:, W - border :] = False, False, False, False
            key = np.where(ok, score if higher else -score, -np.inf)
            padded = np.pad(key, r, constant_values=-np.inf)
            window = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1)).max(axis=(2, 3))
            ys, xs = np.nonzero(ok & (key == window))
            kept: list[tuple[int, int]] = []
            for i in sorted(range(len(ys)), key=lambda i: (-key[ys[i], xs[i]], ys[i] * W + xs[i])):
                y, x = int(ys[i]), int(xs[i])
                if len(kept) < k and all(max(abs(y - ky), abs(x - kx)) >= min_distance for ky, kx in kept):
                    kept.append((y, x))
            rows += [(b, t, y, x) for y, x in kept]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def _plateau_maps(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 maps [B, T, H, W] of few levels (plateaus and ties), some noise, NaN and infinities (+inf in one
    map only: a row holding one is searched whatever the threshold)."""
    maps = rng.integers(0, 4, shape).astype(np.float32)
    maps += np.where(rng.random(shape) < 0.2, rng.random(shape), 0).astype(np.float32)
    maps[..., 5:17, 8:30] = 4.0  # a wide plateau on top, and a lower one
    maps[..., 25:37, 3:20] = 2.0
    maps[rng.random(shape) < 0.03] = np.nan
    maps[..., 0, 1, :, :] = np.where(rng.random(shape[-2:]) < 0.01, np.inf, maps[..., 0, 1, :, :])
    maps[rng.random(shape) < 0.01] = -np.inf
    maps[..., -6:, -8:] = -np.inf  # a corner where nothing is finite
    return maps


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("higher", [True, False])
def test_peaks_equal_the_definition_with_thresholds_borders_and_batches(seed, higher) -> None:
    """Integer peaks of batched maps with plateaus, ties, NaN and infinities equal the definition, for thresholds
    that pass nothing, everything (even beyond float32), a few rows (searched alone) or most of the map (searched
    whole), thresholds on a level and between two float32 numbers, borders, and k far beyond the peaks."""
    rng = np.random.default_rng(seed)
    maps = _plateau_maps(rng, (2, 2, 41, 53))
    if not higher:
        maps = -maps
    sign = 1 if higher else -1
    maps[1, 0, 30, 40] = sign * 3.5  # thresholds just above and below it, with no float32 in between
    # a few rows above 4: beside the plateau, near the top of a map, near the bottom of the map before
    maps[0, 0, 10, 30], maps[1, 1, 2, 50], maps[1, 1, 3, 50], maps[1, 0, 39, 50] = sign * np.array([4.5, 4.7, 4.7, 4.9])
    thresholds = [None, -1e30, -1e300, 10.0, 1e300, 3.2, 2.0, 3.5 + 1e-12, 3.5 - 1e-12, 0.5, 4.0, 4.2]
    thresholds = [None if t is None else sign * t for t in thresholds]
    for threshold in thresholds:
        for k, min_distance, border in [(1, 1, 0), (1000, 1, 3), (3, 2, 0), (10**6, 3, 2), (10**6, 7, 0), (5, 90, 1)]:
            found = slidesim.find_peaks(
                maps,
                k=k,
                min_distance=min_distance,
                threshold=threshold,
                exclude_border=border,
                subpixel=False,
                higher_is_better=higher,
            )
            got = np.stack([found.batch, found.template, found.y.astype(np.int64), found.x.astype(np.int64)], 1)
            want = _definition(maps, k, min_distance, threshold, border, higher)
            np.testing.assert_array_equal(got, want, err_msg=f"{threshold=} {k=} {min_distance=} {border=}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_peaks_of_float64_and_half_maps_compare_the_threshold_exactly(dtype) -> None:
    """The threshold is compared with each score as given, also where the map's dtype cannot hold it."""
    rng = np.random.default_rng(7)
    maps = torch.from_numpy(_plateau_maps(rng, (1, 2, 30, 40))).to(dtype)
    maps[0, 1, 20, 20] = 1 / 3
    for threshold in (float(maps[0, 1, 20, 20]), float(maps[0, 1, 20, 20]) + 1e-15, 1 / 3, 2.0, None):
        for min_distance in (1, 4):
            found = slidesim.find_peaks(
                maps, k=10**6, min_distance=min_distance, threshold=threshold, subpixel=False, metric="zncc"
            )
            got = torch.stack([found.batch, found.template, found.y.long(), found.x.long()], 1).numpy()
            want = _definition(maps.double().numpy(), 10**6, min_distance, threshold, 0, True)
            np.testing.assert_array_equal(got, want, err_msg=f"{threshold=} {min_distance=}")


def test_huge_plateaus_are_suppressed_in_rounds_not_point_by_point() -> None:
    """A plateau of thousands of tied candidates (a flat region of a sad or zncc map) is decided a few cells at
    a time in vectorized rounds: Python-level work grows with the plateau's side, not with its points."""
    from slidesim.peaks import locate_peaks

    maps = torch.full((1, 1, 90, 90), torch.nan)
    maps[0, 0, 5:85, 5:85] = 1.0  # 6400 tied candidates with min_distance 2
    found = []
    calls = python_calls(lambda: found.append(locate_peaks(maps, 10**6, 2, None, 0, True)))
    assert len(found[0]) == 40 * 40
    assert calls < 6400 // 4  # one per candidate or more before


@pytest.mark.parametrize("seed", range(3))
def test_suppression_of_scattered_points_equals_the_greedy_definition(seed) -> None:
    """suppress_points on points of several maps spread over a plane far larger than they are (cells looked up,
    not counted on a grid), in clusters with ties: the first k survivors of a greedy, point by point."""
    from slidesim.peaks import suppress_points

    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 10**6, (12, 2))
    points = centres[rng.integers(0, 12, 3000)] + rng.integers(-6, 7, (3000, 2))
    group = rng.integers(0, 3, 3000)
    key = rng.integers(0, 3, 3000)  # ties: the earlier in the given order goes first
    order = np.lexsort((np.arange(3000), -key, group))
    group, points = group[order], points[order]
    for k, d in [(1, 2), (5, 3), (10**6, 2), (10**6, 5), (40, 14)]:
        want = np.zeros(3000, dtype=bool)
        kept: dict[int, list[np.ndarray]] = {}
        for i in range(3000):
            mine = kept.setdefault(int(group[i]), [])
            if len(mine) < k and all(np.abs(points[i] - p).max() >= d for p in mine):
                mine.append(points[i])
                want[i] = True
        ys, xs = torch.from_numpy(points[:, 0]), torch.from_numpy(points[:, 1])
        got = suppress_points(torch.from_numpy(group), ys, xs, k, d).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"{k=} {d=}")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("higher", [True, False])
def test_few_peaks_from_the_best_scores_equal_those_of_the_whole_maps(seed, higher, monkeypatch) -> None:
    """k up to 16 is looked for among the best of blocks of min_distance² positions, then among each map's best
    scores (their number growing while ties or close peaks leave the answer open, compared pairwise and then
    searched in their rows): the same peaks as the window maxima of whole maps, on smooth maps with many peaks of
    close scores, quantized maps (ties), maps with plateaus on top, a flat map (a flat template's zncc), a map
    that nothing passes and one with NaN and infinities, with and without thresholds, for maxima and minima."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((3, 181, 243)), (0, 3, 3)).astype(np.float32)
    holes = smooth[0].copy()
    holes[rng.random(holes.shape) < 0.01] = np.nan
    holes[rng.random(holes.shape) < 0.001] = np.inf
    holes[rng.random(holes.shape) < 0.001] = -np.inf
    maps = np.stack([smooth[0], np.round(smooth[1] * 40) / 40, smooth[2], np.zeros((181, 243), np.float32), holes])
    maps[2, 50:60, 70:90] = maps[2].max()  # a plateau on top
    maps = maps[None] if higher else -maps[None]  # [1, 5, 181, 243]
    sign = 1 if higher else -1
    for k, min_distance, threshold in [
        (1, 1, None),
        (2, 5, None),
        (5, 16, None),
        (16, 3, None),
        (16, 8, 0.5),
        (5, 16, 2.0),
        (1, 4, 0.52),
        (10, 12, None),
        (7, 6, 0.51),
    ]:
        threshold = None if threshold is None else sign * threshold
        metric = "zncc" if higher else "ssd"
        options = {"k": k, "min_distance": min_distance, "threshold": threshold, "subpixel": False, "metric": metric}
        fast = slidesim.find_peaks(maps, **options)
        with monkeypatch.context() as patched:
            patched.setattr(slidesim.peaks, "_BEST_FIRST", (4, 1))  # a few best scores first,
            patched.setattr(slidesim.peaks, "_MOST_BEST", 300)  # then past 300 their rows are searched
            by_rows = slidesim.find_peaks(maps, **options)
        with monkeypatch.context() as patched:
            patched.setattr(slidesim.peaks, "_BLOCKS_FIRST", (1, 1))  # a few blocks first, growing fourfold,
            patched.setattr(slidesim.peaks, "_BLOCK_WINDOWS", 1e-3)  # up to all of them (small maps gave up)
            by_blocks = slidesim.find_peaks(maps, **options)
        with monkeypatch.context() as patched:
            patched.setattr(slidesim.peaks, "_FEW_PEAKS", 0)
            whole = slidesim.find_peaks(maps, **options)
        for field in ("batch", "template", "y", "x"):
            for name, got in (("fast", fast), ("by rows", by_rows), ("by blocks", by_blocks)):
                np.testing.assert_array_equal(getattr(got, field), getattr(whole, field), f"{name} {field} {options}")


def test_the_best_scores_of_large_maps_are_those_of_a_full_selection() -> None:
    """The M best scores of large maps come from a strided sample's estimate, a comparison and a selection among
    the values above it: the same values as topk, the same positions where they are distinct, also for a flat
    map and one with a plateau on top (where the sample's estimate fails and the map is selected whole)."""
    rng = np.random.default_rng(8)
    key = torch.from_numpy(rng.random((4, 300_000)).astype(np.float32))
    key[1] = 0.25  # flat
    key[2, :50_000] = 2.0  # a plateau above everything
    key[3, rng.random(300_000) < 0.5] = -torch.inf
    for M in (64, 300):
        values, index = top_scores(key, M)
        full = key.topk(M, dim=1)
        assert torch.equal(values, full.values)
        assert torch.equal(key.gather(1, index), values)
        for g in (0, 3):
            assert set(index[g].tolist()) == set(full.indices[g].tolist())


@pytest.mark.parametrize("seed", range(3))
def test_core_candidates_from_blocks_equal_the_window_maxima_of_the_core(seed, monkeypatch) -> None:
    """The best candidates of a chunk's core (with the halo its windows reach, and −inf beyond the maps) and the
    best one left out come from the best of blocks as from the window maxima of the whole block: smooth maps,
    quantized ones (ties), a flat one and one where nothing passes, square and unequal radii, few and many,
    thresholds and borders, maxima and minima."""
    from slidesim import peaks

    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((3, 90, 101)), (0, 2, 2)).astype(np.float32)
    key = np.stack([smooth[0], np.round(smooth[1] * 30) / 30, np.full((90, 101), 0.5, np.float32), smooth[2]])
    key[3] = -np.inf
    key[0, :4] = -np.inf  # beyond the maps above this chunk
    maps = torch.from_numpy(key)
    everywhere = (0, 90, 0, 101)
    for radius, core, count, threshold, allowed, higher in [
        ((4, 4), (4, 80, 6, 95), 3, None, everywhere, True),
        ((2, 5), (2, 88, 5, 96), 40, 0.5, (3, 85, 0, 101), True),
        ((7, 3), everywhere, 1, None, (10, 80, 10, 90), False),
        ((3, 3), (4, 80, 6, 95), 5, -0.52, everywhere, False),
    ]:
        scores = maps if higher else -maps
        passing = (scores >= threshold) if threshold is not None and higher else torch.isfinite(scores)
        if threshold is not None and not higher:
            passing = scores <= threshold
        rows, cols = torch.arange(90)[:, None], torch.arange(101)[None, :]
        inside = (rows >= allowed[0]) & (rows < allowed[1]) & (cols >= allowed[2]) & (cols < allowed[3])
        key = torch.where(passing & inside, scores if higher else -scores, -torch.inf)
        y0, y1 = max(core[0], allowed[0]), min(core[1], allowed[1])
        x0, x1 = max(core[2], allowed[2]), min(core[3], allowed[3])
        want_next = torch.full((4,), -torch.inf)
        want = peaks._dense_core_candidates(key, torch.arange(4), radius, (y0, y1, x0, x1), count, want_next)
        with monkeypatch.context() as patched:
            patched.setattr(peaks, "_BLOCK_WINDOWS", 1e-3)  # blocks however many,
            patched.setattr(peaks, "_BLOCKS_FIRST", (0, 0))  # from count + 1 of them, growing fourfold
            got = peaks.core_candidates(scores, threshold, higher, allowed, radius, core, count)
        for a, b in zip(got[:4], want, strict=True):
            assert torch.equal(a.to(b.dtype), b), f"{radius=} {core=} {count=}"
        assert torch.equal(got[4], want_next)
