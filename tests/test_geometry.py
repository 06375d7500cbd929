"""Padding for any width, against numpy.pad."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidesim._geometry import pad_image

NUMPY = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("padding", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 2, 3, 0), (7, 9, 11, 5)])
def test_pad_matches_numpy_for_any_width(padding, pads) -> None:
    image = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    got = pad_image(image, pads, padding, 2.5)
    top, bottom, left, right = pads
    widths = ((0, 0), (top, bottom), (left, right))
    if padding == "constant":
        want = np.pad(image.numpy(), widths, mode="constant", constant_values=2.5)
    else:
        want = np.pad(image.numpy(), widths, mode=NUMPY[padding])
    np.testing.assert_array_equal(got.numpy(), want)
