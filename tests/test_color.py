"""rgb_to_hsv against scikit-image and hue matching with circular channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim.color import HUE_PERIOD

skimage_color = pytest.importorskip("skimage.color")


def test_rgb_to_hsv_matches_skimage() -> None:
    rgb = np.random.default_rng(0).random((2, 3, 9, 8))
    rgb[0, :, 0, 0] = 0.5  # grey
    ours = slidesim.rgb_to_hsv(rgb)
    theirs = skimage_color.rgb2hsv(np.moveaxis(rgb, 1, -1))
    np.testing.assert_allclose(ours, np.moveaxis(theirs, -1, 1), atol=1e-12)
    uint8 = (rgb * 255).astype(np.uint8)
    np.testing.assert_allclose(
        slidesim.rgb_to_hsv(torch.from_numpy(uint8)).numpy(),
        np.moveaxis(skimage_color.rgb2hsv(np.moveaxis(uint8, 1, -1)), -1, 1),
        atol=1e-6,
    )


def test_hue_wraps_around() -> None:
    hue = np.array([[[[0.98, 0.02, 0.5]]]])  # [1, 1, 1, 3]
    template = np.array([[[[0.02]]]])
    plain = slidesim.similarity(hue, template, metric="sad")
    wrapped = slidesim.similarity(hue, template, metric="sad", circular={0: HUE_PERIOD})
    np.testing.assert_allclose(plain[0, 0, 0], [0.96, 0.0, 0.48])
    np.testing.assert_allclose(wrapped[0, 0, 0], [0.04, 0.0, 0.48])


def test_rgb_to_hsv_errors() -> None:
    with pytest.raises(ValueError, match=r"`rgb` must be \[..., 3, H, W\]"):
        slidesim.rgb_to_hsv(np.zeros((4, 5, 5)))
    with pytest.raises(TypeError, match=r"`rgb` must be a numpy array or a torch tensor"):
        slidesim.rgb_to_hsv([[0.0]])
