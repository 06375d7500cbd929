"""Pictures: drawn at the image's own size (or within --max-size), heatmaps on the image's pixel grid with the
matches marked where they are, best scores bright for every metric, files in the format their extension names.

The command line runs in a subprocess, as a user runs it; the pictures are read back from the files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import slidesim
from slidesim import draw
from slidesim.errors import SlidesimValueError

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")

MAGENTA = np.array([255, 0, 255])  # draw.PEAK_COLOUR
VIRIDIS_TOP = np.array([253, 231, 37])  # the colour of the best score, whichever way the metric points


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """A textured 200 × 150 RGB image (PNG) and a 21 × 17 template cut from it at rows 60..80, columns 90..106."""
    folder = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(1)
    image = np.kron(rng.random((15, 20, 3)), np.ones((10, 10, 1))) + 0.3 * rng.random((150, 200, 3))
    image = (255 * image / image.max()).astype(np.uint8)
    paths = {"image": folder / "image.png", "part": folder / "part.png"}
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(image[60:81, 90:107]).save(paths["part"])
    return paths


def _slidesim(*argv) -> subprocess.CompletedProcess:
    """``python -m slidesim ARGV`` on the package these tests import."""
    source = str(Path(slidesim.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "slidesim", *map(str, argv), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _read(path) -> tuple[str, np.ndarray]:
    with Image.open(path) as picture:
        return picture.format, np.asarray(picture.convert("RGB")).astype(int)


def _marker_centre(pixels: np.ndarray, y: float, x: float, reach: int = 15) -> tuple[float, float]:
    """Mean (y, x) of the magenta pixels within ``reach`` of (y, x)."""
    top, left = max(0, round(y) - reach), max(0, round(x) - reach)
    window = pixels[top : round(y) + reach + 1, left : round(x) + reach + 1]
    rows, columns = np.nonzero(np.abs(window - MAGENTA).max(axis=-1) < 60)
    assert len(rows) > 10, "no peak marker near the match"
    return top + rows.mean(), left + columns.mean()


def test_pictures_are_drawn_at_the_image_size_with_the_peak_marked_on_the_map(scene, tmp_path) -> None:
    overlay, heatmap = tmp_path / "overlay.png", tmp_path / "heatmap.png"
    done = _slidesim("match", scene["image"], scene["part"], "--json", "--overlay", overlay, "--heatmap", heatmap)
    assert done.returncode == 0, done.stderr
    match = json.loads(done.stdout)[0]
    assert (match["y"], match["x"]) == pytest.approx((70.0, 98.0), abs=0.01)
    fmt, pixels = _read(overlay)
    assert fmt == "PNG" and pixels.shape[:2] == (150, 200)
    fmt, pixels = _read(heatmap)
    assert fmt == "PNG" and pixels.shape[0] == 150  # the map's rows are the image's rows; the colour bar is beside
    assert _marker_centre(pixels, match["y"], match["x"]) == pytest.approx((match["y"], match["x"]), abs=1.5)
    # the map itself is aligned: the best score (brightest colour) is the pixel under the marker
    assert np.abs(pixels[70, 98] - VIRIDIS_TOP).max() < 12


def test_minimized_metrics_show_the_best_match_bright(scene, tmp_path) -> None:
    heatmap = tmp_path / "heatmap.png"
    done = _slidesim("match", scene["image"], scene["part"], "--metric", "sad", "--json", "--heatmap", heatmap)
    assert done.returncode == 0, done.stderr
    match = json.loads(done.stdout)[0]
    _, pixels = _read(heatmap)
    assert _marker_centre(pixels, match["y"], match["x"]) == pytest.approx((70.0, 98.0), abs=1.5)
    assert np.abs(pixels[70, 98] - VIRIDIS_TOP).max() < 12  # sad 0: the lowest, best score is bright


def test_max_size_and_formats_follow_the_options_and_extensions(scene, tmp_path) -> None:
    overlay, heatmap, figure = tmp_path / "o.jpg", tmp_path / "h.TIFF", tmp_path / "f.jpeg"
    done = _slidesim(
        "match", scene["image"], scene["part"], "--max-size", 100, "--overlay", overlay, "--heatmap", heatmap,
        "--figure", figure,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    fmt, pixels = _read(overlay)
    assert fmt == "JPEG" and pixels.shape[:2] == (75, 100)  # the longer side capped, the aspect kept
    fmt, pixels = _read(heatmap)
    assert fmt == "TIFF" and pixels.shape[0] == 75
    assert _marker_centre(pixels, 35, 49, reach=8) == pytest.approx((35, 49), abs=1.5)  # (70, 98) halved
    fmt, pixels = _read(figure)
    assert fmt == "JPEG" and pixels.shape[0] == 75 and pixels.shape[1] > 200  # overlay and heatmap side by side


def test_an_unsupported_extension_is_refused_with_the_option_named(scene, tmp_path) -> None:
    done = _slidesim("match", scene["image"], scene["part"], "--overlay", tmp_path / "found.bmp")
    assert done.returncode == 2
    assert "`--overlay`" in done.stderr and ".png, .jpg" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "found.bmp").exists()
    done = _slidesim("match", scene["image"], scene["part"], "--max-size", "0")
    assert done.returncode == 2 and "--max-size" in done.stderr


@pytest.mark.parametrize(("h", "w"), [(7, 5), (6, 8)])
def test_align_map_gives_the_scores_of_mode_same(h, w) -> None:
    rng = np.random.default_rng(2)
    image = rng.random((40, 50), dtype=np.float32)
    template = image[10 : 10 + h, 20 : 20 + w]
    valid = slidesim.similarity(image, template, metric="ssd")
    same = slidesim.similarity(image, template, metric="ssd", mode="same")
    aligned = draw.align_map(valid, (40, 50), (h, w))
    inside = np.isfinite(aligned)
    assert inside.sum() == valid.size  # every window once, the border without one left empty
    np.testing.assert_allclose(aligned[inside], same[inside], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(draw.align_map(same, (40, 50), (h, w), mode="same"), same)


def test_align_map_of_a_turned_bank_puts_the_best_score_at_the_match() -> None:
    from slidesim.cli import demo_scene

    scene, bank, truth = demo_scene()
    found = slidesim.match(scene, bank[3:], rotations=range(0, 360, 10), subpixel=False)
    aligned = draw.align_map(found.maps[0, 0], (240, 320), (24, 32), rotations=range(0, 360, 10))
    y, x = np.unravel_index(np.nanargmax(aligned), aligned.shape)
    assert abs(y - truth[3][0]) <= 1 and abs(x - truth[3][1]) <= 1


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_labels_overlap_neither_each_other_nor_other_boxes() -> None:
    boxes = [(100 + 30 * i, 100, 125 + 30 * i, 120) for i in range(6)]  # a row of small, close boxes
    sizes = [(80.0, 14.0)] * len(boxes)
    corners = draw.place_labels(boxes, sizes, 400, 300)
    labels = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes, strict=True)]
    for i, label in enumerate(labels):
        assert min(label[0], label[1]) >= 0 and label[2] <= 400 and label[3] <= 300
        assert all(not _overlaps(label, other) for other in labels[:i])
        assert all(not _overlaps(label, box) for box in boxes)


def test_picture_arguments_are_checked(tmp_path) -> None:
    with pytest.raises(SlidesimValueError, match=r"`path`.*found\.gif"):
        draw.draw_overlay(tmp_path / "found.gif", np.zeros((1, 8, 8)), [], [], [])
    with pytest.raises(SlidesimValueError, match="`max_size`"):
        draw.render_overlay(np.zeros((1, 8, 8)), [], [], [], max_size=3)
    assert draw.picture_size(1080, 1920, 960) == (540, 960)
    assert draw.picture_size(1080, 1920, 4000) == (1080, 1920)  # never enlarged


def test_demo_heatmap_is_aligned_with_its_scene(tmp_path) -> None:
    done = _slidesim("demo", "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    assert _read(tmp_path / "overlay.png")[1].shape[:2] == (240, 320)
    fmt, pixels = _read(tmp_path / "heatmap.png")
    assert fmt == "PNG"
    from slidesim.cli import demo_scene

    for t, (y, x, _) in enumerate(demo_scene()[2]):  # one block per template, 240 rows and a gap apart
        top = t * (240 + 8)
        assert _marker_centre(pixels, top + y, x) == pytest.approx((top + y, x), abs=2)
        centre = pixels[top + round(y) - 1 : top + round(y) + 2, round(x) - 1 : round(x) + 2]
        assert np.abs(centre - VIRIDIS_TOP).max(axis=-1).min() < 40  # the best score under the marker


def test_heatmap_options_are_checked() -> None:
    maps, sizes, labels = [np.zeros((4, 4))], [(5, 5)], ["a"]
    with pytest.raises(TypeError, match="`padding` is not an option of a heatmap"):
        draw.render_heatmap(np.zeros((1, 8, 8)), maps, [], sizes, labels, "zncc", padding="reflect")
    with pytest.raises(ValueError, match="`mode`"):
        draw.render_heatmap(np.zeros((1, 8, 8)), maps, [], sizes, labels, "zncc", mode="middle")
    with pytest.raises(ValueError, match="one entry per template"):
        draw.render_heatmap(np.zeros((1, 8, 8)), maps, [], sizes, [], "zncc")


def test_heatmaps_take_rotations_and_scales_per_template() -> None:
    """Where some rotations did not fit one template, each template's map is aligned with its own transforms:
    the picture of two templates with a list per template is the pictures of each, one below the other."""
    rng = np.random.default_rng(4)
    image = rng.random((1, 60, 80))
    big, small = image[:, 10:30, 12:30].copy(), image[:, 30:38, 40:46].copy()
    turned = slidesim.match(image[None], big[None], rotations=[0, 30], k=1)
    plain = slidesim.match(image[None], small[None], k=1)
    rows = [{**turned.to_records()[0], "template": 0}, {**plain.to_records()[0], "template": 1}]
    both = draw.render_heatmap(
        image,
        [turned.maps[0, 0], plain.maps[0, 0]],
        rows,
        [(20, 18), (8, 6)],
        ["big", "small"],
        "zncc",
        rotations=[[0, 30], None],
    )
    first = draw.render_heatmap(image, [turned.maps[0, 0]], rows[:1], [(20, 18)], ["big"], "zncc", rotations=[0, 30])
    second = draw.render_heatmap(image, [plain.maps[0, 0]], [{**rows[1], "template": 0}], [(8, 6)], ["small"], "zncc")
    assert np.array_equal(both[: first.shape[0]], first)
    assert np.array_equal(both[-second.shape[0] :], second)
    with pytest.raises(SlidesimValueError, match="`rotations` given per template"):
        draw.render_heatmap(image, [plain.maps[0, 0]], rows[1:], [(8, 6)], ["small"], "zncc", rotations=[[0], [30]])
