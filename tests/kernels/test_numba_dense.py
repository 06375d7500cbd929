"""The dense one-pass window scores against the reference's formula, window by window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidesim.reference import score_windows

numba_dense = pytest.importorskip("slidesim.kernels.numba_dense")

METRICS = ["ssd", "ssd_normed", "ccorr", "ncc", "ccoeff", "zncc"]


def _reference(crops, pictures, weights, dilation, metric) -> np.ndarray:
    N, C, H, W = crops.shape
    R, _, h, w = pictures.shape[1:]
    dy, dx = dilation
    ny, nx = H - dy * (h - 1), W - dx * (w - 1)
    out = np.empty((N, R, ny, nx))
    for n in range(N):
        for r in range(R):
            template = pictures[n if len(pictures) > 1 else 0, r].to(torch.float64)
            mask = weights[n if len(weights) > 1 else 0, r].to(torch.float64).expand(C, h, w)
            for y in range(ny):
                for x in range(nx):
                    window = crops[n, :, y : y + dy * (h - 1) + 1 : dy, x : x + dx * (w - 1) + 1 : dx]
                    window = window.to(torch.float64)[None, :, None, None]
                    score = score_windows(metric, window, template[None, :, None, None], mask[None, :, None, None],
                                          None, True)  # fmt: skip
                    out[n, r, y, x] = float(score.reshape(-1)[0])
    return out


def _case(dtype: torch.dtype, channels: int, weights: str, seed: int = 3):
    """Crops with flat and near-flat areas, an exact copy, a flat template and a dim one; weights solid (a turned
    square's footprint: 1 within each row's extent), binary with holes, or fractional per channel."""
    gen = torch.Generator().manual_seed(seed)
    N, R, h, w = 2, 4, 7, 9
    crops = (torch.rand(N, channels, 15, 18, generator=gen) * 200 + 20).to(dtype)
    crops[0, :, :8, :10] = 7  # flat
    crops[1, :, :6, :] = 100
    crops[1, :, 2, 3] = 101  # one pixel off flat: near-flat windows whose one-pass sums would cancel
    pictures = torch.rand(N, R, channels, h, w, generator=gen) * 255
    pictures[0, 0] = crops[0, :, 5 : 5 + h, 6 : 6 + w].to(torch.float32)  # an exact copy at (5, 6)
    pictures[0, 1] = 3.0  # flat in every channel
    pictures[1, 2] = 1000.0 + torch.rand(channels, h, w, generator=gen)  # large mean, little variation
    if weights == "solid":
        yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
        mask = ((yy.abs() + xx.abs()) <= 5).to(torch.float32)[None, None, None].expand(1, R, 1, h, w)
    elif weights == "holes":
        mask = (torch.rand(1, R, 1, h, w, generator=gen) > 0.3).to(torch.float32)
    else:
        mask = torch.rand(1, R, channels, h, w, generator=gen) * (torch.rand(1, R, channels, h, w, generator=gen) > 0.2)
    return crops, pictures, mask


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize(("channels", "weights"), [(1, "solid"), (1, "holes"), (3, "solid"), (3, "fractional")])
@pytest.mark.parametrize("dilation", [(1, 1), (2, 1), (1, 2)])
def test_dense_scores_agree_with_the_reference(metric, dtype, channels, weights, dilation) -> None:
    crops, pictures, mask = _case(dtype, channels, weights)
    got = numba_dense.dense_scores(crops, pictures, mask, dilation, metric).numpy()
    want = _reference(crops, pictures, mask, dilation, metric)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11 * scale)


@pytest.mark.parametrize("metric", ["zncc", "ssd", "ssd_normed", "ccoeff"])
def test_exact_copies_keep_their_exact_scores(metric) -> None:
    """The one-pass sums must not cost an exact copy its exact score (1 for zncc, 0 for the squared distances)."""
    crops, pictures, mask = _case(torch.uint8, 1, "solid")
    got = numba_dense.dense_scores(crops, pictures, mask, (1, 1), metric)
    want = {"zncc": 1.0, "ssd": 0.0, "ssd_normed": 0.0}
    if metric in want:
        assert float(got[0, 0, 5, 6]) == want[metric]
    else:
        assert float(got[0, 0, 5, 6]) == pytest.approx(_reference(crops, pictures, mask, (1, 1), metric)[0, 0, 5, 6])


def test_flat_windows_and_templates_follow_the_flatness_rule() -> None:
    crops, pictures, mask = _case(torch.float32, 1, "holes")
    got = numba_dense.dense_scores(crops, pictures, mask, (1, 1), "zncc")
    assert float(got[0, 3, 0, 0]) == 0.0  # a flat window (crop 0's top-left is all 7)
    assert bool((got[0, 1] == 0.0).all())  # a flat template scores 0 everywhere


def test_windows_that_do_not_fit_give_an_empty_map() -> None:
    crops = torch.rand(1, 1, 5, 5)
    pictures = torch.rand(1, 2, 1, 7, 3)
    got = numba_dense.dense_scores(crops, pictures, torch.ones(1, 2, 1, 7, 3), (1, 1), "zncc")
    assert got.shape == (1, 2, 0, 3)
