"""Coarse-to-fine pose search: match(..., search="pyramid") on photographs from scikit-image, against the
exhaustive search over the same grid and against the known pose; degenerate calls; interval().

Scenes are the photograph (blurred by σ = 0.7 px, so that resampling it is well defined) turned and scaled about
the template's centre with OpenCV's cubic warp: the template, cut from the unwarped photograph, then sits at that
centre under the known angle and scale. Trials are seeded and few.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import slidesim
from slidesim import planner, pose_search
from slidesim.errors import SlidesimTypeError, SlidesimValueError

skimage_data = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")


def _photo(name: str) -> np.ndarray:
    image = getattr(skimage_data, name)().astype(np.float32) / 255
    image = image.mean(axis=-1) if image.ndim == 3 else image
    return cv2.GaussianBlur(image, (0, 0), 0.7)


def _scene(photo: np.ndarray, centre: tuple[float, float], angle: float, scale: float) -> np.ndarray:
    """The photo turned by ``angle`` (counter-clockwise as displayed) and scaled about ``centre`` (y, x)."""
    turn = cv2.getRotationMatrix2D((centre[1], centre[0]), angle, scale)
    height, width = photo.shape
    return cv2.warpAffine(photo, turn, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _trial(name: str, size: int, angle: float, scale: float, crop: int = 320, seed: int = 0):
    """(scene, template, true centre (y, x)) of a size² template cut where the photo has texture."""
    photo = _photo(name)
    rng = np.random.default_rng(seed)
    crop = min(crop, *photo.shape)
    margin = int(size * 1.5 * max(1.0, scale)) // 2 + 4
    H, W = photo.shape
    while True:
        top, left = (int(v) for v in rng.integers(0, (H - crop + 1, W - crop + 1)))
        y = int(rng.integers(margin, crop - margin - size))
        x = int(rng.integers(margin, crop - margin - size))
        region = photo[top : top + crop, left : left + crop]
        if region[y : y + size, x : x + size].std() > 0.08:
            break
    centre = (y + (size - 1) / 2, x + (size - 1) / 2)
    scene = _scene(region, centre, angle, scale)
    return np.ascontiguousarray(scene), region[y : y + size, x : x + size].copy(), centre


def _turn(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


@pytest.mark.parametrize(
    ("name", "angle"), [("camera", 37.3), ("astronaut", 211.8), ("coins", 123.4), ("brick", 301.7), ("text", 72.9)]
)
def test_pyramid_finds_any_angle_to_a_tenth_of_a_pixel_and_degree(name, angle) -> None:
    scene, template, (cy, cx) = _trial(name, 64, angle, 1.0, seed=int(angle))
    found = slidesim.match(scene, template, rotations=slidesim.interval(0, 360), search="pyramid")
    assert len(found) == 1
    assert abs(found.y[0] - cy) <= 0.1 and abs(found.x[0] - cx) <= 0.1
    assert _turn(found.angle[0], angle) <= 0.1
    assert found.score[0] > 0.99


@pytest.mark.parametrize(("name", "angle", "scale"), [("astronaut", 15.2, 1.13), ("camera", 250.6, 0.84)])
def test_pyramid_finds_angle_and_scale(name, angle, scale) -> None:
    scene, template, (cy, cx) = _trial(name, 64, angle, scale, seed=3)
    found = slidesim.match(
        scene,
        template,
        rotations=slidesim.interval(0, 360),
        scales=slidesim.interval(0.8, 1.25),
        search="pyramid",
    )
    assert abs(found.y[0] - cy) <= 0.1 and abs(found.x[0] - cx) <= 0.1
    assert _turn(found.angle[0], angle) <= 0.1
    assert abs(found.scale[0] / scale - 1) <= 0.002


def test_noisy_blurred_dimmer_scene_is_still_found() -> None:
    scene, template, (cy, cx) = _trial("coins", 64, 141.0, 1.0, seed=5)
    rng = np.random.default_rng(6)
    scene = 0.8 * cv2.GaussianBlur(scene, (0, 0), 0.6) + 0.1 + rng.normal(0, 0.01, scene.shape).astype(np.float32)
    found = slidesim.match(scene, template, rotations=slidesim.interval(0, 360), search="pyramid")
    assert abs(found.y[0] - cy) <= 0.3 and abs(found.x[0] - cx) <= 0.3
    assert _turn(found.angle[0], 141.0) <= 0.3


@pytest.mark.parametrize(("name", "angle", "seed"), [("camera", 93.0, 1), ("astronaut", 200.0, 2), ("brick", 8.0, 4)])
def test_pyramid_finds_the_pose_of_the_exhaustive_search_over_the_same_grid(name, angle, seed) -> None:
    scene, template, _ = _trial(name, 48, angle, 1.0, crop=192, seed=seed)
    grid = list(range(0, 360, 3))
    options = {"rotations": grid, "subpixel": False}
    pyramid = slidesim.match(scene, template, search="pyramid", **options)
    exhaustive = slidesim.match(scene, template, search="exhaustive", **options)
    assert exhaustive.maps is not None and pyramid.maps is None
    assert pyramid.score[0] >= exhaustive.score[0] - 1e-5  # the same pose, or one that scores better
    if pyramid.score[0] <= exhaustive.score[0] + 1e-5:
        assert (pyramid.y[0], pyramid.x[0], pyramid.angle[0]) == (exhaustive.y[0], exhaustive.x[0], exhaustive.angle[0])
    assert float(pyramid.angle[0]) in grid


def test_a_small_pose_near_the_edge_is_found_where_the_largest_would_not_fit() -> None:
    # at scale 0.75 the part fits 60 px from the edge, where a 1.4 × turned footprint (127 px) cannot: each scale is
    # searched wherever its own footprint fits
    photo = _photo("camera")
    size, angle, scale = 64, 97.0, 0.75
    region = photo[100:300, 150:350]
    y, x = 30, 110
    centre = (y + (size - 1) / 2, x + (size - 1) / 2)
    scene = np.ascontiguousarray(_scene(region, centre, angle, scale))
    template = region[y : y + size, x : x + size].copy()
    found = slidesim.match(
        scene, template, rotations=slidesim.interval(0, 360), scales=slidesim.interval(0.7, 1.4), search="pyramid"
    )
    assert abs(found.y[0] - centre[0]) <= 0.5 and abs(found.x[0] - centre[1]) <= 0.5
    assert _turn(found.angle[0], angle) <= 0.5 and abs(found.scale[0] / scale - 1) <= 0.01


def _coarse_maps(entries, shape=(12, 12)):
    """best [1, 1, H, W] and which [1, 1, H, W] with score s and pose r at each (y, x, s, r) of ``entries``."""
    best = torch.full((1, 1, *shape), -math.inf, dtype=torch.float64)  # no pose fits there
    which = torch.zeros((1, 1, *shape), dtype=torch.int64)
    for y, x, score, pose in entries:
        best[0, 0, y, x], which[0, 0, y, x] = score, pose
    return best, which


def test_coarse_peaks_near_each_other_are_kept_when_their_poses_differ() -> None:
    stream = slidesim.banks.TransformStream(torch.ones(1, 1, 1, 9, 9), None, [0.0, 10.0, 20.0, 90.0, 180.0], [1.0])
    steps = (10.0, 0.05)
    # a wrong pose (0°) outscores the right one (180°) two positions away; a third peak near both turns by only
    # one step from the first, a fourth of yet another pose finds the place full
    best, which = _coarse_maps([(5, 5, 0.9, 0), (6, 7, 0.8, 4), (4, 4, 0.7, 1), (5, 7, 0.6, 3), (0, 11, 0.5, 2)])
    peaks = pose_search._diverse_peaks(best, which, stream, 8, 3, True, steps)
    assert [(c.y, c.x, c.angle) for c in peaks] == [(5, 5, 0.0), (6, 7, 180.0), (0, 11, 20.0)]
    # the beam bounds them
    assert len(pose_search._diverse_peaks(best, which, stream, 2, 3, True, steps)) == 2


def test_every_band_of_scales_keeps_candidates_of_its_own() -> None:
    # two bands of scales; the small one's map is full of chance peaks that all outscore the large one's only peak
    stream = slidesim.banks.TransformStream(torch.ones(1, 1, 1, 9, 9), None, [0.0], [0.7, 0.75, 1.3, 1.4])
    steps = (10.0, 0.05)
    small, small_poses = _coarse_maps([(2 * i, 2 * j, 0.9 - 0.01 * (3 * i + j), 0) for i in range(3) for j in range(3)])
    large, large_poses = _coarse_maps([(7, 7, 0.5, 3)])
    best, which = torch.cat([small, large], dim=1), torch.cat([small_poses, large_poses], dim=1)
    peaks = pose_search._diverse_peaks(best, which, stream, 4, 1, True, steps)
    assert len(peaks) == 4
    assert (7.0, 7.0, 1.4) in [(c.y, c.x, c.scale) for c in peaks]
    assert [c.score for c in peaks] == sorted((c.score for c in peaks), reverse=True)  # best first


@pytest.mark.parametrize("metric", sorted(slidesim.METRICS))
def test_every_metric_scores_the_pose_exactly(metric) -> None:
    scene, template, (cy, cx) = _trial("camera", 40, 60.0, 1.0, crop=160, seed=7)
    found = slidesim.match(scene, template, metric=metric, rotations=range(0, 360, 5), search="pyramid", subpixel=False)
    if metric not in ("ccorr", "ccoeff"):  # unnormalized: a brighter window can outscore the copy
        assert abs(found.y[0] - cy) <= 1 and abs(found.x[0] - cx) <= 1 and _turn(found.angle[0], 60) <= 2.5
    # the score is the metric at the returned pose, as similarity computes it for that turned template
    bank = slidesim.banks.transform_bank(torch.from_numpy(template)[None, None, None], None, [found.angle[0]], [1])
    Hc, Wc = bank.templates.shape[-2:]
    top, left = round(found.y[0] - (Hc - 1) / 2), round(found.x[0] - (Wc - 1) / 2)
    window = torch.from_numpy(scene)[top : top + Hc, left : left + Wc]
    expected = slidesim.similarity(window, bank.templates[0, 0, 0], metric=metric, mask=bank.mask[0, 0, 0])
    assert float(found.score[0]) == pytest.approx(float(expected.reshape(())), rel=1e-5, abs=1e-5)


def test_k_instances_threshold_and_min_distance() -> None:
    photo = _photo("camera")[100:196, 100:196].copy()
    template = photo[24:72, 24:72].copy()
    scene = np.full((200, 420), 0.5, dtype=np.float32)
    scene[10:106, 10:106] = photo
    scene[90:186, 150:246] = np.rot90(photo).copy()  # the template turned by 90°
    scene[40:136, 300:396] = np.rot90(photo, 2).copy()
    options = {"rotations": slidesim.interval(0, 360), "search": "pyramid", "k": 3}
    found = slidesim.match(scene, template, **options)
    centres = sorted(zip(found.x.tolist(), found.y.tolist(), strict=True))
    np.testing.assert_allclose(centres, [(57.5, 57.5), (197.5, 137.5), (347.5, 87.5)], atol=0.1)
    angles = {round(float(a)) % 360 for a in found.angle}
    assert angles == {0, 90, 180}
    assert len(slidesim.match(scene, template, threshold=0.99, **{**options, "k": 5})) == 3
    assert len(slidesim.match(scene, template, min_distance=400, **options)) == 1


def test_no_match_above_threshold_returns_nothing() -> None:
    scene, _, _ = _trial("brick", 48, 30.0, 1.0, crop=192, seed=8)
    other = _photo("text")[40:88, 100:148].copy()
    found = slidesim.match(scene, other, rotations=slidesim.interval(0, 360), search="pyramid", threshold=0.99)
    assert len(found) == 0 and found.y.shape == (0,)


def test_flat_template_and_flat_scene_do_not_crash() -> None:
    scene, _, _ = _trial("coins", 48, 0.0, 1.0, crop=160, seed=9)
    flat = np.full((48, 48), 0.5, dtype=np.float32)
    found = slidesim.match(scene, flat, rotations=slidesim.interval(0, 360), search="pyramid")
    assert len(found) <= 1 and np.isfinite(found.score).all()
    found = slidesim.match(np.zeros_like(scene), flat, rotations=range(0, 360, 10), search="pyramid", metric="ssd")
    assert len(found) == 1 and 0 < found.score[0] <= 0.25 * flat.size  # 0.25 per pixel the turned template keeps


def test_tiny_template_is_searched_exhaustively() -> None:
    scene, template, _ = _trial("astronaut", 16, 20.0, 1.0, crop=96, seed=10)
    options = {"rotations": range(0, 360, 10), "subpixel": False}
    pyramid = slidesim.match(scene, template, search="pyramid", **options)
    exhaustive = slidesim.match(scene, template, search="exhaustive", **options)
    assert pyramid.maps is not None  # no pyramid level fits: the exhaustive search ran
    assert pyramid.to_records() == exhaustive.to_records()


def test_template_too_large_for_deeper_levels_gets_fewer_of_them() -> None:
    photo = _photo("camera")
    scene = photo[100:226, 50:450].copy()
    template = scene[18:108, 150:240].copy()  # 90² in 126 rows: turned by 30°, its canvas fits 1 level only
    assert pose_search.COARSEST_SIDE * 4 <= 90  # it would take 2 levels by its size alone
    found = slidesim.match(scene, template, rotations=[0, 30], search="pyramid")
    assert abs(found.y[0] - 62.5) <= 0.1 and abs(found.x[0] - 194.5) <= 0.1 and found.angle[0] == 0
    with pytest.raises(SlidesimValueError, match="`levels` must be at most 1"):
        slidesim.match(scene, template, rotations=[0, 30], search="pyramid", levels=2)


def test_mask_colour_batches_and_banks() -> None:
    colour = skimage_data.astronaut().astype(np.float32) / 255
    colour = cv2.GaussianBlur(colour, (0, 0), 0.7)[100:292, 150:342]
    angle = 47.0
    scene = np.stack([_scene(colour[..., c], (95.5, 95.5), angle, 1.0) for c in range(3)])
    template = colour[64:128, 64:128].transpose(2, 0, 1).copy()
    other = colour[10:74, 110:174].transpose(2, 0, 1).copy()
    images = np.stack([scene, colour.transpose(2, 0, 1).copy()])
    bank = np.stack([template, other])
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[8:56, 4:60] = 1
    found = slidesim.match(images, bank, mask=mask, rotations=slidesim.interval(0, 360), search="pyramid")
    rows = {(r["batch"], r["template"]): r for r in found.to_records()}
    assert set(rows) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert abs(rows[0, 0]["y"] - 95.5) <= 0.1 and abs(rows[0, 0]["x"] - 95.5) <= 0.1
    assert _turn(rows[0, 0]["angle"], angle) <= 0.1
    assert abs(rows[1, 1]["y"] - 41.5) <= 0.1 and abs(rows[1, 1]["x"] - 141.5) <= 0.1
    assert _turn(rows[1, 1]["angle"], 0) <= 0.1
    torch_found = slidesim.match(
        torch.from_numpy(images), torch.from_numpy(bank), mask=torch.from_numpy(mask),
        rotations=slidesim.interval(0, 360), search="pyramid",
    )  # fmt: skip
    assert isinstance(torch_found.y, torch.Tensor)
    np.testing.assert_allclose(torch_found.y.numpy(), found.y, atol=1e-6)


def test_auto_takes_the_pyramid_for_many_poses_and_the_exhaustive_search_otherwise() -> None:
    scene, template, _ = _trial("camera", 64, 10.0, 1.0, crop=256, seed=11)
    assert slidesim.match(scene, template, rotations=slidesim.interval(0, 360)).maps is None
    assert slidesim.match(scene, template).maps is not None  # one pose: exhaustive
    assert slidesim.match(scene, template, rotations=range(0, 360, 5)).maps is not None  # a sequence keeps its meaning
    assert slidesim.match(scene, template, rotations=range(0, 360, 5), search="pyramid").maps is None
    assert slidesim.match(scene, template, rotations=range(0, 360, 5), mode="same").maps is not None


def test_pyramid_refuses_what_it_cannot_search() -> None:
    scene, template, _ = _trial("camera", 48, 10.0, 1.0, crop=160, seed=12)
    with pytest.raises(SlidesimValueError, match="`search` 'pyramid' cannot search mode 'same'"):
        slidesim.match(scene, template, rotations=[0, 10], search="pyramid", mode="same")
    with pytest.raises(SlidesimValueError, match="`search` 'pyramid' cannot search stride"):
        slidesim.match(scene, template, rotations=[0, 10], search="pyramid", stride=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"search": "fast"}, SlidesimValueError, "`search` must be one of 'auto', 'pyramid', 'exhaustive'; got 'fast'"),
        ({"search": 3}, SlidesimTypeError, "`search` must be one of"),
        ({"levels": -1}, SlidesimValueError, "`levels` must be at least 0"),
        ({"levels": 1.5}, SlidesimTypeError, "`levels` must be an int or None"),
        ({"beam": 0}, SlidesimValueError, "`beam` must be at least 1"),
        ({"scales": slidesim.interval(-1, 2)}, SlidesimValueError, "`scales` must be a range of positive factors"),
    ],
)
def test_bad_search_arguments(kwargs, error, text) -> None:
    image = np.zeros((40, 40), dtype=np.float32)
    with pytest.raises(error, match=text):
        slidesim.match(image, image[:8, :8], **kwargs)


@pytest.mark.parametrize(
    ("args", "error", "text"),
    [
        ((0, "360"), SlidesimTypeError, r"`stop` of an interval must be a real number; got '360' \(str\)"),
        ((True, 2), SlidesimTypeError, "`start` of an interval must be a real number"),
        ((0, math.inf), SlidesimValueError, "`stop` of an interval must be finite; got inf"),
        ((10, 10), SlidesimValueError, r"`stop` of an interval must be above `start`; got interval\(10, 10\)"),
        ((2, 1), SlidesimValueError, "Swap them"),
    ],
)
def test_interval_validation(args, error, text) -> None:
    with pytest.raises(error, match=text):
        slidesim.interval(*args)


def test_interval_is_a_frozen_value_and_its_grid_follows_the_template_size() -> None:
    whole = slidesim.interval(0, 360)
    assert whole == slidesim.interval(0.0, 360.0) and hash(whole) == hash(slidesim.interval(0, 360))
    with pytest.raises(AttributeError):
        whole.start = 1  # type: ignore[misc]
    small = pose_search.pose_space((16, 16), None, None, whole, None)
    large = pose_search.pose_space((128, 128), None, None, whole, None)
    assert 40 <= len(small.angles) < len(large.angles) <= 600
    assert small.angles[0] == 0 and small.angles[-1] < 360
    # one step turns the farthest pixel of the template by about one pixel
    radius = 0.5 * math.hypot(127, 127)
    assert math.radians(large.angle_spacing) * radius == pytest.approx(1, rel=0.02)
    scales = pose_search.pose_space((64, 64), None, None, None, slidesim.interval(0.8, 1.25)).scales
    assert scales[0] == pytest.approx(0.8) and scales[-1] == pytest.approx(1.25)


def test_exhaustive_search_over_an_interval_refines_the_angle_below_its_step() -> None:
    scene, template, (cy, cx) = _trial("astronaut", 40, 33.3, 1.0, crop=128, seed=13)
    found = slidesim.match(scene, template, rotations=slidesim.interval(20, 50), search="exhaustive")
    assert found.maps is not None
    assert _turn(found.angle[0], 33.3) <= 0.1
    assert abs(found.y[0] - cy) <= 0.1 and abs(found.x[0] - cx) <= 0.1


# explain: what a match search will do, why, and roughly at what cost


def _texture(side: int = 200) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.kron(rng.random((side // 8, side // 8)), np.ones((8, 8))).astype(np.float32)


def test_explain_says_the_pyramid_its_levels_coarsest_grid_beam_why_and_cost() -> None:
    image = _texture()
    text = slidesim.explain(image, image[40:104, 60:124].copy(), rotations=slidesim.interval(0, 360))
    lines = text.splitlines()
    assert lines[0].startswith("search: pyramid: 2 levels, coarsest template 16x16, ")
    assert " angles x 1 scale at the coarsest level, beam 8 (the full-resolution grid: " in lines[0]
    assert lines[1] == "  why: the pyramid is estimated cheaper"
    assert lines[2].startswith("  cost: roughly ") and "of the exhaustive search's" in lines[2]
    assert "slidesim plan: zncc" in text  # the planner's table follows, for the transformed bank
    text = slidesim.explain(
        image, image[40:104, 60:124].copy(), rotations=slidesim.interval(0, 90), search="pyramid", levels=1, beam=5
    )
    assert text.startswith("search: pyramid: 1 level, coarsest template 32x32, ") and "beam 5" in text
    assert "why: search='pyramid'" in text


def test_default_beam_widens_when_scales_are_searched_too() -> None:
    image, template = _texture(), _texture()[40:104, 60:124].copy()
    turned = slidesim.explain(image, template, rotations=slidesim.interval(0, 360), search="pyramid", k=5)
    assert ", beam 10 (" in turned.splitlines()[0]
    scaled = slidesim.explain(
        image, template, rotations=slidesim.interval(0, 360), scales=slidesim.interval(0.9, 1.1), search="pyramid"
    )
    assert " scales at the coarsest level, beam 64 (" in scaled.splitlines()[0]


def test_explain_says_when_and_why_the_search_is_exhaustive() -> None:
    image = _texture()
    text = slidesim.explain(image, image[40:104, 60:124].copy(), rotations=range(0, 360, 10), scales=[0.9, 1.1])
    assert text.startswith("search: exhaustive: 72 poses (36 angles x 2 scales) at every position\n")
    assert "why: a sequence of poses is searched exhaustively" in text and "x 72 poses x 1 template" in text
    text = slidesim.explain(image, image[40:60, 60:80].copy(), rotations=slidesim.interval(0, 360))
    assert "search: exhaustive: " in text
    assert "why: the template is too small for a pyramid (under 24 pixels a side)" in text
    text = slidesim.explain(image, image[40:104, 60:124].copy(), rotations=slidesim.interval(0, 360), mode="same")
    assert "why: the pyramid cannot search mode 'same'" in text


def test_explain_without_match_options_is_the_planners_and_refuses_what_match_refuses() -> None:
    image = _texture()
    template = image[40:104, 60:124].copy()
    assert slidesim.explain(image, template, metric="sad") == planner.explain(image, template, metric="sad")
    with pytest.raises(SlidesimValueError, match="`levels` must be at most"):
        slidesim.explain(image, template, rotations=slidesim.interval(0, 360), search="pyramid", levels=9)


@pytest.mark.parametrize("metric", ["zncc", "ncc", "ssd", "ccoeff"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_local_scores_in_place_agree_with_similarity(metric, dtype, monkeypatch) -> None:
    """A local search's windows scored in place in one pass (the dense kernel) and through slidesim.similarity:
    the same scores, per crop and turned template, to float32 round-off of similarity's."""
    pytest.importorskip("numba")
    from slidesim._validate import DEFAULT_OPTIONS, canonicalize
    from slidesim.banks import TransformStream

    photo = torch.from_numpy(np.rint(_photo("camera") * 255)).to(dtype)
    template = photo[200:232, 240:272].clone()
    stream = TransformStream(template.float()[None, None, None], None, [10.0, 47.5, 200.0], [0.9, 1.1])
    pictures, drawn = stream.draw(0, stream.members)
    Hc, Wc = pictures.shape[-2:]
    crops = torch.stack([photo[None, 190 : 196 + Hc, 230 : 235 + Wc], photo[None, 100 : 106 + Hc, 60 : 65 + Wc]])
    pictures, drawn = pictures.expand(2, -1, -1, -1, -1), drawn.expand(2, -1, -1, -1, -1)
    options = {**DEFAULT_OPTIONS, "metric": metric}
    canon = canonicalize(crops, pictures, **{k: v for k, v in options.items() if k != "mask"}, mask=drawn)
    in_place = pose_search._local_similarity(canon, crops, pictures, drawn)
    monkeypatch.setattr(pose_search, "_in_place", lambda *args: False)
    through = pose_search._local_similarity(canon, crops, pictures, drawn)
    assert in_place.shape == through.shape == (2, 6, 7, 6)
    assert in_place.dtype == torch.float64  # the kernel's float64, where similarity gives float32
    scale = float(through.abs().amax())
    np.testing.assert_allclose(in_place.numpy(), through.double().numpy(), rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize(("h", "w"), [(9, 9), (8, 13)])
def test_sector_footprints_lie_within_every_member_and_keep_most_of_the_template(h, w) -> None:
    """Each angle's sector mask is common to the sector (one mask, shared statistics), lies within the angle's own
    turned footprint (the template has pixels under every weight) and keeps more than the inscribed disk."""
    from slidesim.banks import TransformStream

    templates = torch.rand(1, 1, 1, h, w, dtype=torch.float64)
    angles = pose_search.sector_order([float(a) for a in range(0, 360, 7)], h, w, 15.0)
    canvas = pose_search.canvas_size(h, w, angles, [1.1])
    stream = pose_search.SectorStream(templates, angles, 1.1, canvas, 15.0)
    pictures, masks = stream.draw(0, stream.members)
    own = TransformStream(templates, None, angles, [1.1])
    own.canvas = canvas
    _, footprints = own.draw(0, own.members)
    assert bool((masks <= footprints).all())
    assert bool((pictures[masks == 0] == 0).all())
    sectors = stream.sector_of
    assert sectors == sorted(sectors)  # grouped, so that a streamed bank meets each mask in one run
    for i in range(1, len(angles)):
        if sectors[i] == sectors[i - 1]:
            assert torch.equal(masks[:, i], masks[:, i - 1])
    radius = 1.1 * (min(h, w) - 1) / 2
    disk = math.pi * radius**2
    assert float(masks.sum(dim=(-1, -2, -3)).min()) > 1.1 * disk


def test_select_between_levels_keeps_distinct_poses_at_one_place() -> None:
    # two candidates a pixel apart: by position alone the worse one goes; with `distinct`, it stays when its pose
    # is far enough from the better one's (a wrong angle can outscore the right one beside it at a coarse level)
    best = pose_search.Candidate(0, 0, 10.0, 10.0, 40.0, 1.0, 0.9)
    turned = pose_search.Candidate(0, 0, 11.0, 10.0, 50.0, 1.0, 0.8)
    scaled = pose_search.Candidate(0, 0, 10.0, 11.0, 40.0, 1.2, 0.7)
    twin = pose_search.Candidate(0, 0, 11.0, 11.0, 41.0, 1.01, 0.6)
    found = [twin, scaled, turned, best]
    assert pose_search.select(found, 4, 2, None, True) == [best]
    kept = pose_search.select(found, 4, 2, None, True, distinct=(5.0, 0.1))
    assert kept == [best, turned, scaled]
    # across the circle: 359° and 1° are 2° apart
    wrapped = [pose_search.Candidate(0, 0, 10.0, 10.0, 359.0, 1.0, 0.9), replace_angle(best, 1.0, 0.5)]
    assert len(pose_search.select(wrapped, 4, 2, None, True, distinct=(5.0, 0.1))) == 1


def replace_angle(c: pose_search.Candidate, angle: float, score: float) -> pose_search.Candidate:
    return pose_search.Candidate(c.b, c.t, c.y, c.x, angle, c.scale, score)
