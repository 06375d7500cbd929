"""Arguments as callers hold them (the checks of _checks)."""

from __future__ import annotations

import warnings

import numpy as np

import slidesim


def test_read_only_arrays_go_in_without_a_warning() -> None:
    """np.asarray of a Pillow image is read-only; slidesim only reads its inputs, so torch's warning about writing
    to such an array does not apply and must not reach the caller."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    rgb.flags.writeable = False
    part = rgb[5:17, 8:22]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = slidesim.match(rgb, part, channels_last=True)
        scores = slidesim.similarity(rgb, part, channels_last=True)
    assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (10.5, 14.5)
    assert scores.shape == (29, 37)
