"""match(): positions, angles and scales found on photographs that ship with scikit-image; banks; errors.

Accuracy trials are seeded. Templates are cut where the photograph has texture (standard deviation over 0.1 of
the range): a patch of uniform sky has no position to find. Scenes with a fractional shift are rendered from the
photograph blurred by a lens-like point spread (Gaussian, σ = 0.7 px) and shifted with cubic splines, so that the
true shift is well defined; scikit-image's sample photographs are sharp to the pixel, and shifting aliased detail
changes it as well as moving it.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch

import slidesim
from slidesim import _refine_many
from slidesim.banks import canvas_size, transform_bank
from slidesim.errors import SlidesimTypeError, SlidesimValueError

from .conftest import python_calls

skimage_data = pytest.importorskip("skimage.data")
skimage_transform = pytest.importorskip("skimage.transform")
ndimage = pytest.importorskip("scipy.ndimage")


def _photo(name: str) -> np.ndarray:
    image = getattr(skimage_data, name)().astype(np.float64) / 255
    return image.mean(axis=-1) if image.ndim == 3 else image


def _textured_corner(rng: np.random.Generator, photo: np.ndarray, size: int, margin: int) -> tuple[int, int]:
    while True:
        y, x = (int(v) for v in rng.integers(margin, np.array(photo.shape) - size - margin))
        if photo[y : y + size, x : x + size].std() > 0.1:
            return y, x


@pytest.mark.parametrize("name", ["camera", "astronaut", "coffee"])
def test_templates_cut_from_photographs_are_found_at_their_centre(name) -> None:
    rng = np.random.default_rng(11)
    photo = _photo(name).astype(np.float32)
    for _ in range(4):
        h, w = (int(v) for v in rng.integers(17, 49, 2))
        y, x = _textured_corner(rng, photo, max(h, w), 1)
        found = slidesim.match(photo, photo[y : y + h, x : x + w].copy())
        assert abs(found.y[0] - (y + (h - 1) / 2)) <= 0.5
        assert abs(found.x[0] - (x + (w - 1) / 2)) <= 0.5
        assert found.score[0] > 0.999


@pytest.mark.parametrize("name", ["camera", "astronaut", "chelsea"])
def test_fractional_shift_is_recovered(name) -> None:
    rng = np.random.default_rng(12)
    photo = ndimage.gaussian_filter(_photo(name), 0.7)
    for _ in range(4):
        y, x = _textured_corner(rng, photo, 32, 8)
        fy, fx = rng.uniform(-0.5, 0.5, 2)
        scene = ndimage.shift(photo, (fy, fx), order=3, mode="reflect").astype(np.float32)
        found = slidesim.match(scene, photo[y : y + 32, x : x + 32].astype(np.float32))
        assert abs(found.y[0] - (y + 15.5 + fy)) <= 0.05
        assert abs(found.x[0] - (x + 15.5 + fx)) <= 0.05


def test_rotated_objects_are_found_with_their_angle() -> None:
    rng = np.random.default_rng(13)
    photo = _photo("camera")[96:416, 96:416]
    step = 10
    for angle in rng.uniform(0, 360, 4):
        y, x = _textured_corner(rng, photo, 48, 100)
        cy, cx = y + 23.5, x + 23.5
        scene = skimage_transform.rotate(photo, angle, center=(cx, cy), order=1, mode="reflect")
        found = slidesim.match(
            scene.astype(np.float32), photo[y : y + 48, x : x + 48].astype(np.float32), rotations=range(0, 360, step)
        )
        assert abs(found.y[0] - cy) <= 2 and abs(found.x[0] - cx) <= 2
        assert abs((found.angle[0] - angle + 180) % 360 - 180) <= step / 2


def test_scaled_objects_are_found_with_their_scale() -> None:
    rng = np.random.default_rng(14)
    photo = _photo("astronaut")
    scales = np.round(np.arange(0.8, 1.2501, 0.05), 2)
    for scale in rng.uniform(0.8, 1.25, 4):
        y, x = _textured_corner(rng, photo, 40, 80)
        cy, cx = y + 19.5, x + 19.5
        scene = skimage_transform.rescale(photo, scale, order=1, anti_aliasing=scale < 1)
        found = slidesim.match(
            scene.astype(np.float32), photo[y : y + 40, x : x + 40].astype(np.float32), scales=scales
        )
        # skimage maps pixel centres: output i sits at input (i + 0.5) / scale − 0.5
        assert abs(found.y[0] - ((cy + 0.5) * scale - 0.5)) <= 3
        assert abs(found.x[0] - ((cx + 0.5) * scale - 0.5)) <= 3
        assert abs(found.scale[0] - scale) <= 0.025 + 1e-9


@pytest.mark.parametrize("angle", [0, 30, 90, 135, 200])
def test_bank_rotation_matches_scikit_image(angle) -> None:
    photo = _photo("camera")
    template = photo[200:249, 240:281]  # 49 × 41
    bank = transform_bank(torch.from_numpy(template)[None, None, None], None, [angle], [1.0])
    got, mask = bank.templates[0, 0, 0].numpy(), bank.mask[0, 0, 0].numpy()
    Hc, Wc = got.shape
    assert (Hc, Wc) == canvas_size(49, 41, [angle], [1.0])
    big = photo[224 - 60 : 224 + 61, 260 - 60 : 260 + 61]  # centred on the template's centre (224, 260)
    rotated = skimage_transform.rotate(big, angle, center=(60, 60), order=1)
    expected = rotated[60 - (Hc - 1) // 2 : 60 + Hc // 2 + 1, 60 - (Wc - 1) // 2 : 60 + Wc // 2 + 1]
    inner = ndimage.binary_erosion(mask > 0.5, iterations=2)
    np.testing.assert_allclose(got[inner], expected[inner], atol=1e-9)
    assert mask[(Hc - 1) // 2, (Wc - 1) // 2] == 1 and mask[0, 0] == (1 if angle in (0,) else 0)


def test_results_per_image_and_template_best_first_and_numpy_or_torch() -> None:
    rng = np.random.default_rng(15)
    images = rng.random((2, 1, 60, 70)).astype(np.float32)
    bank = np.stack([images[0, :, 5:16, 7:20], images[1, :, 30:41, 40:53]])
    found = slidesim.match(images, bank, k=2)
    assert found.batch.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert found.template.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert found.score[0] >= found.score[1] and found.score[6] >= found.score[7]
    assert (round(found.y[0], 3), round(found.x[0], 3)) == (10.0, 13.0)
    assert (round(found.y[6], 3), round(found.x[6], 3)) == (35.0, 46.0)
    as_torch = slidesim.match(torch.from_numpy(images), torch.from_numpy(bank), k=2)
    assert isinstance(as_torch.y, torch.Tensor)
    np.testing.assert_allclose(as_torch.y.numpy(), found.y)
    assert len(found.rows()) == 8 and found.rows() == found.to_records()
    assert list(found.to_records()[0]) == [
        "batch", "template", "y", "x", "top", "left", "height", "width", "score", "angle", "scale"
    ]  # fmt: skip


@pytest.mark.parametrize("metric", ["sad", "ssd", "l1_similarity", "ncc", "ssd_normed"])
def test_every_metric_finds_the_copy(metric) -> None:
    rng = np.random.default_rng(16)
    image = rng.random((50, 60)).astype(np.float32)
    found = slidesim.match(image, image[12:25, 30:39].copy(), metric=metric, rotations=[0, 90])
    assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (18.0, 34.0)
    assert found.angle[0] == 0


def test_threshold_min_distance_and_k() -> None:
    rng = np.random.default_rng(17)
    image = rng.random((80, 80)).astype(np.float32)
    template = image[10:20, 10:20].copy()
    image[50:60, 40:50] = template  # a second copy
    found = slidesim.match(image, template, k=5, threshold=0.9, subpixel=False)
    assert sorted((float(y), float(x)) for y, x in zip(found.y, found.x, strict=True)) == [(14.5, 14.5), (54.5, 44.5)]
    assert len(slidesim.match(image, template, k=5, threshold=1.1)) == 0


def test_masked_template_and_mask_rotates_with_it() -> None:
    rng = np.random.default_rng(18)
    image = rng.random((70, 70)).astype(np.float32)
    template = image[20:35, 30:45].copy()
    mask = np.ones((15, 15), np.float32)
    mask[:5] = 0
    template[:5] = 9.0  # hidden by the mask
    found = slidesim.match(image, template, mask=mask, rotations=[0, 45, 90])
    assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (27.0, 37.0)
    assert found.angle[0] == 0


def test_progress_reports_every_chunk() -> None:
    calls = []
    image = np.random.default_rng(19).random((40, 40)).astype(np.float32)
    slidesim.match(
        image, image[5:15, 5:15].copy(), rotations=range(0, 360, 30), progress=lambda d, t: calls.append((d, t))
    )
    bank = calls[: calls.index((0, 1))]  # then one match is refined
    assert bank and bank[-1] == (12, 12)
    assert [d for d, _ in bank] == sorted(d for d, _ in bank)


def test_progress_reports_the_refinement_of_the_matches() -> None:
    """With a large k refinement is a phase of its own, and it reports too, counting from 0 after the bank's phase:
    after each batch of peaks refined together."""
    calls = []
    image = np.random.default_rng(19).random((40, 40)).astype(np.float32)
    found = slidesim.match(image, image[5:15, 5:15].copy(), k=4, progress=lambda d, t: calls.append((d, t)))
    assert len(found) == 4
    assert calls == [(1, 1), (0, 4), (4, 4)]
    calls.clear()
    many = _refine_many.MOST_PEAKS + 5
    wide = np.random.default_rng(20).random((200, 200)).astype(np.float32)
    found = slidesim.match(wide, wide[5:10, 5:10].copy(), k=many, progress=lambda d, t: calls.append((d, t)))
    assert len(found) == many
    assert calls == [(1, 1), (0, many), (many - 5, many), (many, many)]
    calls.clear()
    slidesim.match(image, image[5:15, 5:15].copy(), k=4, subpixel=False, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 1)]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"rotations": []}, ValueError, "`rotations`"),
        ({"rotations": [float("nan")]}, ValueError, "`rotations`"),
        ({"rotations": "0:90"}, TypeError, "`rotations`"),
        ({"scales": [0.0]}, ValueError, "`scales`"),
        ({"scales": [-1.0]}, ValueError, "`scales`"),
        ({"k": 0}, ValueError, "`k`"),
        ({"channels": "separate"}, ValueError, "`channels`"),
        ({"metric": "nope"}, ValueError, "metric"),
        ({"subpixel": "yes"}, TypeError, "`subpixel` must be True or False"),
        ({"threshold": float("nan")}, ValueError, "`threshold` .* got NaN"),
    ],
)
def test_bad_arguments(kwargs, error, text) -> None:
    image = np.zeros((20, 20), np.float32)
    with pytest.raises(error, match=text):
        slidesim.match(image, image[:5, :5].copy(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"rotations": ["a"]}, "`rotations` must be a sequence of real numbers (finite angles in degrees); got 'a'"),
        ({"rotations": [None]}, "`rotations` must be a sequence of real numbers (finite angles in degrees); got None"),
        ({"scales": ["a"]}, "`scales` must be a sequence of real numbers (positive finite factors); got 'a'"),
        ({"scales": [1.0, True]}, "`scales` must be a sequence of real numbers (positive finite factors); got True"),
    ],
)
def test_rotations_and_scales_that_are_not_numbers(kwargs, text) -> None:
    """float() took strings and gave its own errors on the rest."""
    image = np.zeros((20, 20), np.float32)
    with pytest.raises(SlidesimTypeError) as caught:
        slidesim.match(image, image[:5, :5].copy(), **kwargs)
    assert text in str(caught.value)


@pytest.mark.parametrize("scale", [0.05, 0.1, 8.5, 20.0])
def test_scales_outside_the_usable_range(scale) -> None:
    """A 16 × 16 template keeps 2 pixels from scale 0.125; on 128 × 128 its canvas fits up to scale 8.4."""
    rng = np.random.default_rng(3)
    image = rng.random((128, 128), dtype=np.float32)
    with pytest.raises(SlidesimValueError) as caught:
        slidesim.match(image, image[10:26, 20:36].copy(), scales=[1.0, scale])
    message = str(caught.value)
    assert "`scales` must lie within the usable scales 0.125 to 8.4 for 16x16 templates on 128x128" in message
    assert f"got {scale:g}" in message
    for usable in (0.125, 8.4):
        slidesim.match(image, image[10:26, 20:36].copy(), scales=[usable])


def test_rotations_that_leave_the_image() -> None:
    image = np.random.default_rng(4).random((40, 40), dtype=np.float32)
    with pytest.raises(SlidesimValueError, match="`rotations` turn 36x36 templates beyond the 40x40 images"):
        slidesim.match(image, image[2:38, 2:38].copy(), rotations=[0, 45])


def test_a_transform_without_weight_is_refused() -> None:
    """A 2 × 2 template turned by 45° lands between the canvas pixels: the mask check said "`mask` must have a
    positive total weight" when no mask was given."""
    image = np.random.default_rng(5).random((20, 20), dtype=np.float32)
    with pytest.raises(SlidesimValueError, match="`scales` and `rotations` must leave every template some weight"):
        slidesim.match(image, image[3:5, 3:5].copy(), rotations=[45])


def test_bank_is_drawn_in_chunks_within_memory_limit(monkeypatch) -> None:
    """A small memory_limit draws the transformed bank a chunk at a time (each within a quarter of the limit) and
    finds the matches of a bank drawn at once."""
    from slidesim import banks

    rng = np.random.default_rng(6)
    image = rng.random((48, 52), dtype=np.float32)
    template = np.rot90(image[10:22, 20:31]).copy()
    options = {"rotations": range(0, 360, 6), "scales": [0.9, 1.0], "k": 2}
    whole = slidesim.match(image, template, **options)
    drawn = []
    draw = banks.TransformStream.draw
    monkeypatch.setattr(
        banks.TransformStream, "draw", lambda self, j0, j1: (drawn.append((self, j0, j1)), draw(self, j0, j1))[1]
    )
    limit = 2**20
    chunked = slidesim.match(image, template, memory_limit=limit, **options)
    ranges = [(j0, j1) for _, j0, j1 in drawn if j1 - j0 > 1]  # single members are drawn again for refinement
    assert len(ranges) > 1 and ranges[0][0] == 0 and ranges[-1][1] == 120
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert max(j1 - j0 for j0, j1 in ranges) * drawn[0][0].member_bytes() <= limit // 4
    for name in ("batch", "template", "angle", "scale"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    for name in ("y", "x", "score"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), atol=1e-4)
    np.testing.assert_allclose(chunked.maps, whole.maps, atol=1e-5)


@pytest.mark.parametrize(
    ("metric", "method"),
    [("zncc", "fft"), ("ncc", "conv"), ("ccoeff", "fft"), ("ssd_normed", "direct"), ("sad", "direct"),
     ("ssd", "direct")],
)  # fmt: skip
def test_chunked_bank_streams_through_one_call_with_the_scores_of_one_chunk(monkeypatch, metric, method) -> None:
    """A masked bank drawn in many chunks streams through one engine call: the images are padded (and centred)
    once, not once per chunk, and the best maps and transforms equal those of the bank scored as one chunk."""
    from slidesim.engines import base
    from slidesim.scoring import statistics

    rng = np.random.default_rng(31)
    image = rng.random((2, 2, 36, 40), dtype=np.float32)
    image[1, 0, 5, 7] = np.nan  # a hole: filled and marked per chunk
    template = image[0, :, 8:17, 10:19].copy()[None]
    mask = (rng.random((1, 1, 9, 9)) > 0.3) * rng.uniform(0.5, 1.0, (1, 1, 9, 9))
    options = {"metric": metric, "method": method, "mask": mask.astype(np.float32), "rotations": range(0, 360, 15)}
    options |= {"scales": [0.9, 1.0], "subpixel": False, "k": 2}
    whole = slidesim.match(image, template, **options)

    calls = {"padded": 0, "centred": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(base, "padded_images", counted("padded", base.padded_images))
    monkeypatch.setattr(statistics, "finite_channel_mean", counted("centred", statistics.finite_channel_mean))
    chunked = slidesim.match(image, template, memory_limit=200_000, **options)
    assert calls["padded"] == 1
    assert calls["centred"] == (1 if metric in ("zncc", "ccoeff") else 0)
    np.testing.assert_array_equal(chunked.maps, whole.maps)
    for name in ("batch", "template", "y", "x", "score", "angle", "scale"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def test_public_names_stay_callable_after_every_module_loads() -> None:
    import importlib

    for module in ("matching", "peaks", "banks", "planner", "_similarity"):
        importlib.import_module(f"slidesim.{module}")
    assert callable(slidesim.match) and callable(slidesim.find_peaks) and callable(slidesim.similarity)


def test_per_image_banks_with_rotations_and_channel_mean() -> None:
    rng = np.random.default_rng(22)
    images = rng.random((2, 2, 48, 56)).astype(np.float32)
    banks = np.stack([images[0, :, 4:15, 6:17][None], np.rot90(images[1, :, 20:31, 30:41], axes=(1, 2))[None]])
    found = slidesim.match(images, banks.copy(), rotations=[0, 90, 180, 270])
    assert found.batch.tolist() == [0, 1]
    assert [(round(float(y), 2), round(float(x), 2)) for y, x in zip(found.y, found.x, strict=True)] == [
        (9.0, 11.0),
        (25.0, 35.0),
    ]
    assert found.angle.tolist() == [0.0, 270.0]
    mean = slidesim.match(images, images[:1, :, 4:15, 6:17].copy(), channels="mean", method="reference", k=1)
    assert (round(float(mean.y[0]), 2), round(float(mean.x[0]), 2)) == (9.0, 11.0)


def test_matches_are_best_first_after_refinement() -> None:
    """Refinement moves scores: on a smooth texture the 12 best integer peaks reorder once refined."""
    ndi = pytest.importorskip("scipy.ndimage")
    image = ndi.gaussian_filter(np.random.default_rng(0).random((96, 96)), 1.5).astype(np.float32)
    template = image[30:41, 40:51].copy()
    for metric in ("zncc", "sad"):
        found = slidesim.match(image, template, metric=metric, k=12, min_distance=3)
        unrefined = slidesim.match(image, template, metric=metric, k=12, min_distance=3, subpixel=False)
        assert len(found) == 12
        scores = np.asarray(found.score)
        assert np.all(np.diff(scores) <= 0) if metric == "zncc" else np.all(np.diff(scores) >= 0), scores
        assert np.all(np.diff(unrefined.score) <= 0) if metric == "zncc" else np.all(np.diff(unrefined.score) >= 0)


def _assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """The same matches; refined positions and scores within float32 refinement's round-off (the two layouts reach
    the resampling's matrix products with different strides)."""
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert {k: a[k] for k in ("batch", "template", "angle", "scale")} == {
            k: b[k] for k in ("batch", "template", "angle", "scale")
        }
        assert abs(a["y"] - b["y"]) < 1e-3 and abs(a["x"] - b["x"]) < 1e-3, (a, b)  # as float32 against float64
        assert abs(a["score"] - b["score"]) <= 1e-5 * max(1.0, abs(b["score"])), (a, b)


def _channels_first(array):
    """A channels-last array [..., h, w, C] as the contiguous channels-first array [..., C, h, w]."""
    if isinstance(array, torch.Tensor):
        return torch.movedim(array, -1, -3).contiguous()
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize(
    "options",
    [
        {"k": 2},
        {"k": 2, "rotations": [0, 90], "mask": "weights", "metric": "ssd"},
        {"k": 1, "scales": [0.9, 1.0], "channels": "mean", "subpixel": False},
    ],
)
def test_channels_last_matches_equal_the_transposed_call(options: dict, kind: str) -> None:
    rng = np.random.default_rng(11)
    images = ndimage.gaussian_filter(rng.random((2, 44, 47, 3)), (0, 1.5, 1.5, 0)).astype(np.float32)
    bank = np.stack([images[0, 9:20, 12:21], images[1, 25:36, 4:13]])  # [T, h, w, C]
    options = dict(options)
    if options.get("mask") == "weights":
        options["mask"] = (rng.random((11, 9, 3)) + 0.2).astype(np.float32)  # [h, w, C]
    if kind == "torch":
        images, bank = torch.from_numpy(images), torch.from_numpy(bank)
        if "mask" in options:
            options["mask"] = torch.from_numpy(options["mask"])
    first = {**options, "mask": _channels_first(options["mask"])} if "mask" in options else options
    got = slidesim.match(images, bank, channels_last=True, **options)
    want = slidesim.match(_channels_first(images), _channels_first(bank), **first)
    _assert_same_rows(got.rows(), want.rows())
    assert type(got.maps) is type(want.maps) and got.maps.shape == want.maps.shape and got.maps.shape[:2] == (2, 2)
    assert np.array_equal(np.asarray(got.maps), np.asarray(want.maps))
    # one [H, W, C] image: its matches are those of image 0, and the maps keep their batch axis
    single = slidesim.match(images[0], bank[0], channels_last=True, **options)
    alone = slidesim.match(_channels_first(images[0])[None], _channels_first(bank[0])[None], **first)
    _assert_same_rows(single.rows(), alone.rows())
    assert single.maps.shape == (1, 1, *want.maps.shape[2:])


@pytest.mark.parametrize("metric", ["zncc", "sad"])
def test_many_integer_matches_are_the_peaks_of_the_maps_without_a_python_object_each(metric) -> None:
    """Without refinement, thousands of matches are the peaks of the returned maps at the template's centre, best
    first, in columns made without Python-level work per match."""
    rng = np.random.default_rng(3)
    image = rng.random((2, 1, 90, 120)).astype(np.float32)
    template = image[:1, :, 10:17, 20:25].copy()
    found = []
    slidesim.match(image, template, metric=metric, k=1, subpixel=False)  # imports and compiles: not per-match work
    calls = python_calls(
        lambda: found.append(slidesim.match(image, template, metric=metric, k=10**6, min_distance=2, subpixel=False))
    )
    found = found[0]
    peaks = slidesim.find_peaks(found.maps, k=10**6, min_distance=2, subpixel=False, metric=metric)
    assert len(found) == len(peaks) > 2000
    assert calls < len(found) // 2  # a Python tuple and a sort key per match made more than one each
    np.testing.assert_array_equal(found.batch, peaks.batch)
    np.testing.assert_array_equal(found.template, peaks.template)
    np.testing.assert_array_equal(found.y, peaks.y + 3)  # (7 − 1) / 2 below the top-left corner
    np.testing.assert_array_equal(found.x, peaks.x + 2)
    assert found.score.dtype == np.float64 and found.y.dtype == np.float64
    np.testing.assert_array_equal(found.score, peaks.score.astype(np.float64))
    assert not found.angle.any() and (found.scale == 1).all()


def test_integer_matches_of_a_rotated_bank_carry_the_transform_that_won_there() -> None:
    """Without refinement, each match of a bank rotated by 0 and 180 degrees (drawn exactly; sad sums them
    exactly) takes the angle whose map is better at its position, ties to the first, as the maps of the two
    templates alone say."""
    metric = "sad"
    rng = np.random.default_rng(5)
    image = rng.random((2, 1, 60, 80)).astype(np.float32)
    template = image[:1, :, 10:17, 20:25].copy()
    found = slidesim.match(image, template, metric=metric, k=300, rotations=[0, 180], subpixel=False)
    upright = slidesim.similarity(image, template, metric=metric)
    turned = slidesim.similarity(image, template[..., ::-1, ::-1].copy(), metric=metric)
    better = turned < upright
    np.testing.assert_array_equal(found.maps, np.where(better, turned, upright))
    b, t = found.batch, found.template
    y, x = (found.y - 3).astype(np.int64), (found.x - 2).astype(np.int64)
    assert len(found) > 100
    np.testing.assert_array_equal(found.angle, np.where(better[b, t, y, x], 180.0, 0.0))
    np.testing.assert_array_equal(found.score, found.maps[b, t, y, x].astype(np.float64))
    assert (found.scale == 1).all()


def test_matches_carry_the_window_as_top_left_corner_and_size() -> None:
    """Untransformed templates: top, left is the window's first pixel and height × width its size, whatever the
    mode, stride and dilation; in mode "valid" it is the peak of the similarity map, as OpenCV users read it."""
    rng = np.random.default_rng(30)
    image = rng.random((70, 90)).astype(np.float32)
    template = image[21:34, 40:49].copy()  # 13 × 9 at (21, 40)
    for options in ({}, {"mode": "same"}, {"mode": "full", "stride": 3}, {"subpixel": False}):
        found = slidesim.match(image, template, **options)
        assert (round(float(found.top[0]), 2), round(float(found.left[0]), 2)) == (21.0, 40.0), options
        assert (float(found.height[0]), float(found.width[0])) == (13.0, 9.0)
        assert float(found.top[0]) == pytest.approx(float(found.y[0]) - 6) and found.top.dtype == np.float64
    top, left = (round(float(v[0])) for v in (found.top, found.left))
    np.testing.assert_array_equal(image[top : top + 13, left : left + 9], template)
    peaks = slidesim.find_peaks(slidesim.similarity(image, template), metric="zncc", subpixel=False)
    assert (int(peaks.y[0]), int(peaks.x[0])) == (top, left)
    taps = image[10:35:2, 30:47:2].copy()  # dilation 2: 13 × 9 taps over 25 × 17 pixels from (10, 30)
    found = slidesim.match(image, taps, dilation=2, subpixel=False)
    assert [float(v[0]) for v in (found.top, found.left, found.height, found.width)] == [10.0, 30.0, 25.0, 17.0]


@pytest.mark.parametrize(
    ("angle", "scale", "height", "width"),
    [
        (90, 1.0, 9.0, 13.0),
        (180, 1.0, 13.0, 9.0),
        (45, 1.0, 22 / 2**0.5, 22 / 2**0.5),
        (30, 1.0, 13 * 3**0.5 / 2 + 9 / 2, 13 / 2 + 9 * 3**0.5 / 2),
        (0, 1.5, 19.5, 13.5),
    ],
)
def test_turned_and_scaled_boxes_are_the_bounding_box_of_the_turned_rectangle(angle, scale, height, width) -> None:
    rng = np.random.default_rng(31)
    image = rng.random((60, 70)).astype(np.float32)
    template = image[10:23, 20:29].copy()  # 13 × 9
    found = slidesim.match(image, template, rotations=[angle], scales=[scale], k=2, subpixel=False)
    np.testing.assert_allclose(found.height, height, rtol=1e-12)
    np.testing.assert_allclose(found.width, width, rtol=1e-12)
    np.testing.assert_allclose(found.top, found.y - (height - 1) / 2, rtol=1e-12)
    np.testing.assert_allclose(found.left, found.x - (width - 1) / 2, rtol=1e-12)
    as_torch = slidesim.match(torch.from_numpy(image), torch.from_numpy(template), rotations=[angle], scales=[scale])
    assert isinstance(as_torch.height, torch.Tensor) and as_torch.height.dtype == torch.float64


def test_repr_is_short_and_never_shows_the_maps() -> None:
    rng = np.random.default_rng(32)
    images = rng.random((2, 1, 200, 240)).astype(np.float32)
    bank = np.stack([images[0, :, 5:16, 7:20], images[1, :, 30:41, 40:53]])
    found = slidesim.match(images, bank, k=20, subpixel=False)
    text = repr(found)
    lines = text.splitlines()
    assert lines[0] == "Matches: 80 matches of 2 templates in 2 images; maps [2, 2, 190, 228] float32 (not shown)"
    assert len(lines) <= 10 and len(text) < 1500 and str(found) == text
    assert "centre" in lines[1] and "top-left" in lines[1]
    # the best of each (image, template) first: the two exact copies score 1
    assert [line.split()[:2] for line in lines[3:7]] == [["0", "0"], ["0", "1"], ["1", "0"], ["1", "1"]]
    assert lines[3].split()[8] == "1.0000" and "75 more" in lines[-1]
    empty = slidesim.match(torch.from_numpy(images), torch.from_numpy(bank), threshold=2.0)
    shown = "Matches: 0 matches of 2 templates in 2 images; maps [2, 2, 190, 228] torch.float32 (not shown)"
    assert repr(empty) == shown


def test_to_records_and_to_pandas() -> None:
    rng = np.random.default_rng(33)
    image = rng.random((50, 60)).astype(np.float32)
    found = slidesim.match(image, image[12:25, 30:39].copy(), k=3, rotations=[0, 90])
    records = found.to_records()
    assert len(records) == 3 and all(type(r["batch"]) is int and type(r["top"]) is float for r in records)
    assert records[0]["y"] == float(found.y[0]) and records[2]["width"] == float(found.width[2])
    pandas = pytest.importorskip("pandas")
    frame = found.to_pandas()
    assert isinstance(frame, pandas.DataFrame) and list(frame.columns) == list(records[0]) and len(frame) == 3


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch) -> None:
    rng = np.random.default_rng(34)
    image = rng.random((40, 50)).astype(np.float32)
    found = slidesim.match(image, image[5:15, 5:15].copy())
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(SlidesimValueError, match=r"`Matches.to_pandas` needs pandas.*`pip install pandas`"):
        found.to_pandas()


def test_footprint_order_puts_angles_with_one_footprint_together() -> None:
    from slidesim.matching import footprint_order

    angles = [0.0, 5.0, 90.0, 95.0, 180.0, 185.0, 270.0, 275.0]
    assert footprint_order(angles, 9, 9) == [0.0, 90.0, 180.0, 270.0, 5.0, 95.0, 185.0, 275.0]
    assert footprint_order(angles, 9, 12) == [0.0, 180.0, 5.0, 185.0, 90.0, 270.0, 95.0, 275.0]
    assert footprint_order([-90.0, 450.0, 30.0], 5, 5) == [-90.0, 450.0, 30.0]


@pytest.mark.parametrize("memory_limit", [None, 2**20])  # one chunk, or a bank streamed a member or two at a time
def test_turned_footprints_share_their_window_statistics(memory_limit) -> None:
    from slidesim.scoring import statistics

    rng = np.random.default_rng(3)
    image = rng.random((90, 100)).astype(np.float32)
    template = image[30:51, 40:61].copy()
    rotations = [0, 37, 90, 127, 180, 217, 270, 307]  # two footprints of a square, four angles each
    computed, roots = [], []
    original = statistics.WindowStatistics._window_moments
    original_root = statistics.inverse_root

    def counting(self, mask, weights):
        computed.append(mask.shape[1])
        return original(self, mask, weights)

    def counting_roots(values, degenerate, dtype=torch.float64):
        roots.append(values.shape[1])
        return original_root(values, degenerate, dtype)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(statistics.WindowStatistics, "_window_moments", counting)
        patch.setattr(statistics, "inverse_root", counting_roots)
        options = {"rotations": rotations, "search": "exhaustive", "subpixel": False, "memory_limit": memory_limit}
        shared = slidesim.match(image, template, **options)
        assert sum(computed) == 2 and len(computed) == (1 if memory_limit is None else 2)
        assert roots == [1, 1]  # the zncc factors too: once per footprint
        computed.clear()
        roots.clear()
        patch.setattr(statistics.WindowStatistics, "_seen_footprint", lambda self, mask, weights, key: None)
        patch.setattr(statistics, "_same_footprint", lambda mask, weights, i, j: False)
        each = slidesim.match(image, template, **options)
        assert sum(computed) == len(rotations)
        assert sum(roots) == len(rotations)
    np.testing.assert_allclose(shared.maps, each.maps, rtol=1e-6, atol=1e-6)
    assert (shared.angle[0], shared.y[0], shared.x[0]) == (each.angle[0], each.y[0], each.x[0]) == (0.0, 40.0, 50.0)
