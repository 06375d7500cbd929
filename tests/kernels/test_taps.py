"""Tap-loop reductions: the statistics that need no tap loop do without one."""

from __future__ import annotations

import numpy as np
import pytest

import slidesim
from slidesim import reference
from slidesim.kernels import taps


@pytest.mark.parametrize("spoiled", [False, True])
def test_zncc_moments_of_finite_images_come_from_a_summed_area_table(spoiled: bool) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 44)).astype(np.float32)
    template = image[5:30, 8:29].copy()
    if spoiled:
        image[20, 20] = np.inf  # a table would carry the inf to every later window: the tap loop keeps it local
    tables = []
    original = taps.channel_box_sums

    def counting(plane, geom):
        tables.append(plane.shape)
        return original(plane, geom)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(taps, "channel_box_sums", counting)
        got = slidesim.similarity(image, template, metric="zncc", method="direct")
    assert bool(tables) is not spoiled
    want = reference.similarity(image, template, metric="zncc")
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6, equal_nan=True)
