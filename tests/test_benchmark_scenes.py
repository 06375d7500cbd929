"""The real-image benchmark's scenes (benchmarks/scenes.py): deterministic uint8 pictures of the promised shapes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
pytest.importorskip("skimage")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "scenes.py"
_SPEC = importlib.util.spec_from_file_location("benchmark_scenes", _PATH)
scenes = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = scenes  # dataclasses look their module up while the file runs
_SPEC.loader.exec_module(scenes)


@pytest.fixture(scope="module")
def desktop() -> np.ndarray:
    return scenes.screenshot()


def test_screenshot_is_deterministic_uint8_rgb_1080p(desktop):
    assert desktop.shape == (1080, 1920, 3) and desktop.dtype == np.uint8
    np.testing.assert_array_equal(desktop, scenes.screenshot())
    assert not np.array_equal(desktop, scenes.screenshot(seed=1))  # the seed draws the words


def test_document_is_deterministic_uint8_grey_page():
    page = scenes.document()
    assert page.shape == scenes.PAGE_SIZE and page.dtype == np.uint8
    np.testing.assert_array_equal(page, scenes.document())
    assert 200 < page.mean() < 250  # mostly paper


def test_every_scene_is_uint8_with_matching_grey_and_colour():
    found = scenes.scenes()
    assert [s.name for s in found] == [
        "screenshot",
        "camera",
        "astronaut",
        "coffee",
        "coins",
        "brick",
        "text",
        "document",
    ]
    for scene in found:
        assert scene.grey.dtype == np.uint8 and scene.grey.ndim == 2
        if scene.rgb is not None:
            assert scene.rgb.dtype == np.uint8 and scene.rgb.shape == (*scene.grey.shape, 3)
            np.testing.assert_array_equal(scenes.grey_of(scene.rgb), scene.grey)


def test_layouts_for_opencv_and_slidesim():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    bgr, planes = scenes.to_bgr(rgb), scenes.to_planes(rgb)
    assert bgr.flags.c_contiguous and planes.flags.c_contiguous
    np.testing.assert_array_equal(bgr[..., 0], rgb[..., 2])
    assert planes.shape == (1, 3, 2, 3)
    np.testing.assert_array_equal(planes[0, 1], rgb[..., 1])


def test_templates_have_every_size_detail_and_the_same_places_for_a_seed(desktop):
    grey = scenes.grey_of(desktop)
    cuts = scenes.cut_templates(grey, seed=0)
    assert [(t.height, t.width) for t in cuts] == list(scenes.TEMPLATE_SIZES)
    assert cuts == scenes.cut_templates(grey, seed=0)
    for template in cuts:
        pixels = template.cut(grey)
        assert pixels.shape == (template.height, template.width)
        assert pixels.std() >= 12.0


def test_templates_that_do_not_fit_are_left_out():
    small = np.random.default_rng(0).integers(0, 256, (40, 100), dtype=np.uint8)
    assert [t.label for t in scenes.cut_templates(small, seed=0)] == ["8²", "16²", "32²", "24×80"]


def test_the_ok_button_has_its_six_copies(desktop):
    _, button = scenes.MATCH_TEMPLATES["screenshot"]
    pixels = button.cut(desktop)
    for window in range(6):  # windows are 540 apart in x and 480 in y, the buttons at the same offset in each
        top, left = button.top + (window // 3) * 480, button.left + (window % 3) * 540
        np.testing.assert_array_equal(desktop[top : top + button.height, left : left + button.width], pixels)
