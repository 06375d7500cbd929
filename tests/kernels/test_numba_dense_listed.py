"""Listed windows scored in runs (:func:`slidesim.kernels.numba_dense.listed_scores`) against the two-pass kernel
and the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidesim import reference
from slidesim._geometry import Geometry

pytest.importorskip("numba")
from slidesim.kernels import numba_dense
from slidesim.kernels.numba_dense import listed_scores

METRICS = ("ssd", "ssd_normed", "ccorr", "ncc", "ccoeff", "zncc")


def _scene(dtype, channels: int) -> torch.Tensor:
    """[2, C, 40, 300] pictures with a flat band, a near-flat band (ripples of 1e-5 on 0.5) and texture."""
    rng = np.random.default_rng(4)
    image = rng.random((2, channels, 40, 300))
    image[:, :, :, 40:140] = 0.25  # flat: longer than a run of windows
    image[:, :, :, 150:200] = 0.5 + 1e-5 * rng.random((2, channels, 40, 50))
    if dtype == torch.uint8:
        image = np.round(image * 255)
    return torch.from_numpy(image).to(dtype)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(("dtype", "channels"), [(torch.float64, 1), (torch.float32, 2), (torch.uint8, 1)])
@pytest.mark.parametrize(("stride", "dilation"), [((1, 1), (1, 1)), ((2, 1), (1, 2))])
def test_listed_windows_match_the_reference(metric: str, dtype, channels: int, stride, dilation, monkeypatch) -> None:
    """Every window of a few rows (runs longer than one task's, flat and near-flat ones among them) under a turned
    footprint and fractional weights: the reference's scores within 1e-9 (absolute and relative to the scale),
    flat and near-flat windows included, with few of them left to the two-pass kernel."""
    image = _scene(dtype, channels)
    rng = np.random.default_rng(5)
    h, w = 9, 11
    bank = torch.from_numpy(rng.random((1, 3, channels, h, w)))
    bank[0, 2] = 0.7  # a flat template
    yy, xx = np.mgrid[:h, :w]
    disk = ((yy - 4) ** 2 + (xx - 5) ** 2 <= 20).astype(np.float64)
    mask = torch.from_numpy(np.stack([disk, disk * 0.5 + 0.25 * (xx % 2), np.ones((h, w))]))[None, :, None]
    (sy, sx), (dy, dx) = stride, dilation
    Hp, Wp = image.shape[-2:]
    out_h, out_w = (Hp - dy * (h - 1) - 1) // sy + 1, (Wp - dx * (w - 1) - 1) // sx + 1
    geom = Geometry(stride, dilation, out_h, out_w, (h, w))
    flagged = torch.zeros(2, 3, out_h, out_w, dtype=torch.bool)
    flagged[:, :, 3:6] = True  # whole rows: runs of up to 290 windows
    flagged[1, 1, 9, ::7] = True  # scattered windows: runs of one
    index = flagged.nonzero()
    two_pass = []
    original = numba_dense.scores_in_place
    monkeypatch.setattr(numba_dense, "scores_in_place", lambda *a: two_pass.append(len(a[3])) or original(*a))
    got = listed_scores(image, bank, mask, index, 0, geom, metric).numpy()
    image64 = image.to(torch.float64).numpy()
    want = reference.similarity(image64, bank[0].numpy(), metric=metric, mask=mask[0].numpy(), stride=stride,
                                dilation=dilation)  # fmt: skip
    want = want[tuple(index.T.numpy())]
    scale = max(1.0, float(np.abs(want).max())) if metric in ("ssd", "ccorr", "ccoeff") else 1.0
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * scale)
    assert sum(two_pass) < len(index) // 4  # the flat and near-flat windows are not all left to two passes
