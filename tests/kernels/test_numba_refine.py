"""The numba grid scores of sub-pixel refinement against the batched torch resampling and the metrics' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidesim._refine import quadratic_design, resample, spline_coefficients
from slidesim._refine_many import _quick_scores

numba_refine = pytest.importorskip("slidesim.kernels.numba_refine")


def _case(C: int, masked: bool, dtype: torch.dtype, seed: int = 3):
    """Two crops [2, C, 40, 44] of a smooth random picture, 6×5 templates, weights, the templates' sides."""
    rng = np.random.default_rng(seed)
    crops = torch.from_numpy(rng.random((2, C, 40, 44)) * 200).to(dtype)
    templates = torch.from_numpy(rng.random((2, C, 6, 5)) * 200).to(torch.float64)
    if masked:
        weights = torch.from_numpy(rng.random((2, 1, 6, 5)) + 0.1)
        weights[1, 0, 0, 0] = 0.0  # a tap out of the footprint
    else:
        weights = torch.ones(2, 1, 6, 5, dtype=torch.float64)
    total = weights.sum(dim=(-2, -1), keepdim=True)
    weighted = weights * templates
    centred = weights * (templates - weighted.sum(dim=(-2, -1), keepdim=True) / total)
    sides = {"template": templates, "weights": weights, "weighted": weighted, "centred": centred, "total": total}
    return crops, sides


_SIDE_OF = {
    **dict.fromkeys(("sad", "mad", "l1_similarity", "ssd"), "template"),
    **dict.fromkeys(("ccorr", "ncc"), "weighted"),
    **dict.fromkeys(("ccoeff", "zncc"), "centred"),
}


@pytest.mark.parametrize("metric", list(numba_refine.METRIC_CODES))
@pytest.mark.parametrize(
    ("C", "masked", "joint"), [(1, False, True), (3, False, False), (3, True, True), (1, True, False)]
)
@pytest.mark.parametrize("dilation", [(1, 1), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_scores_agree_with_resampled_windows(metric, C, masked, joint, dilation, dtype) -> None:
    """The kernel's scores of a grid of shifts and those of the torch resampling scored by the metrics' formulas
    (the same formula, float64 sums against the coefficients' dtype) agree to the coefficients' round-off."""
    crops, sides = _case(C, masked, dtype)
    coefficients = spline_coefficients(crops, dtype)
    index = torch.tensor([1, 0, 1])
    first_y = torch.tensor([[3.0, 3.3, 3.55, 4.0, 5.875]] * 3, dtype=torch.float64) + torch.arange(3.0)[:, None]
    first_x = torch.tensor([[2.0, 2.25, 2.5, 3.125, 4.0]] * 3, dtype=torch.float64)
    got = numba_refine.grid_scores(coefficients, crops, index, first_y, first_x, dilation, sides[_SIDE_OF[metric]],
                                   sides["weights"], None, metric, joint, False)  # fmt: skip
    windows = resample(coefficients.to(torch.float64), first_y, first_x, (6, 5), dilation, (4, 4), index)
    side = {name: value[index][:, None] for name, value in sides.items()}
    want, covered = _quick_scores(metric, joint, windows.reshape(3, 25, C, 6, 5), side, masked)
    assert bool(covered.all())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-11
    scale = float(want.abs().max())
    np.testing.assert_allclose(got.reshape(3, 25).numpy(), want.numpy(), rtol=0, atol=tolerance * scale)
    assert not torch.equal(got[:, 0], got[:, 1])  # shifts resample different windows


@pytest.mark.parametrize("metric", ["sad", "ssd", "zncc"])
def test_windows_on_pixels_read_the_pixels(metric) -> None:
    """A window whose samples all lie on pixels scores the crop's pixels themselves: an exact copy of the template
    scores exactly 0 (sad, ssd) or 1 (zncc), where the spline reproduces the pixels only to round-off."""
    crops, _ = _case(1, False, torch.float64)
    templates = crops[:, :, 7:13, 9:14].clone()  # rows 7.., columns 9..
    weights = torch.ones(2, 1, 6, 5, dtype=torch.float64)
    centred = templates - templates.mean(dim=(-2, -1), keepdim=True)
    side = centred if metric == "zncc" else templates
    coefficients = spline_coefficients(crops, torch.float64)
    index = torch.tensor([0, 1])
    first_y, first_x = torch.tensor([[7.0], [7.0]]), torch.tensor([[9.0], [9.0]])
    exact = numba_refine.grid_scores(coefficients, crops, index, first_y, first_x, (1, 1), side, weights, None,
                                     metric, True, True)  # fmt: skip
    splined = numba_refine.grid_scores(coefficients, crops, index, first_y, first_x, (1, 1), side, weights, None,
                                       metric, True, False)  # fmt: skip
    assert exact.reshape(-1).tolist() == [1.0 if metric == "zncc" else 0.0] * 2
    if metric != "zncc":  # zncc's clip to 1 hides the spline's round-off
        assert not torch.equal(exact, splined)


def test_zero_energy_is_not_a_number() -> None:
    """A flat window (read from the pixels) under zncc has no score by the formula (NaN), which the caller hands
    to the degenerate rules."""
    crops = torch.full((1, 1, 40, 44), 5.0, dtype=torch.float64)
    _, sides = _case(1, False, torch.float64)
    got = numba_refine.grid_scores(spline_coefficients(crops, torch.float64), crops, torch.tensor([0]),
                                   torch.tensor([[3.0]]), torch.tensor([[4.0]]), (1, 1), sides["centred"],
                                   sides["weights"], None, "zncc", True, True)  # fmt: skip
    assert bool(torch.isnan(got).all())


def test_taps_beyond_the_crop_are_refused() -> None:
    crops, sides = _case(1, False, torch.float64)
    coefficients = spline_coefficients(crops, torch.float64)
    with pytest.raises(AssertionError, match="columns"):
        numba_refine.grid_scores(coefficients, crops, torch.tensor([0]), torch.tensor([[3.0]]),
                                 torch.tensor([[40.0]]), (1, 1), sides["template"], sides["weights"], None, "ssd",
                                 True, False)  # fmt: skip


def test_vertex_of_incomplete_tables_agrees_with_least_squares() -> None:
    """The kernel's quadratic fit (pseudo-inverse for whole tables, normal equations where shifts beyond the drift
    left −inf) and the torch least squares of the one-peak search: the same vertex, or both without one."""
    from slidesim._refine import quadratic_design, quadratic_vertex

    design, inverse = quadratic_design()
    rng = np.random.default_rng(11)
    offsets = np.arange(-2, 3, dtype=np.float64)
    seen = {True: 0, False: 0}
    for trial in range(60):
        cy, cx = rng.uniform(-3, 3, 2)
        curvature = rng.uniform(-1.0, 0.3, 2)
        table = 0.7 + curvature[0] * (offsets[:, None] - cy) ** 2 + curvature[1] * (offsets[None, :] - cx) ** 2
        table = table + 0.05 * (offsets[:, None] - cy) * (offsets[None, :] - cx) + rng.normal(0, 1e-3, (5, 5))
        if trial % 2:
            table[rng.integers(0, 5), :] = -np.inf  # a row of shifts beyond the drift
        want = quadratic_vertex(torch.from_numpy(table))
        fitted, vy, vx = numba_refine._vertex(table, design.numpy(), inverse.numpy())
        assert fitted == (want is not None)
        if fitted:
            np.testing.assert_allclose([vy, vx], want[:2], rtol=1e-9, atol=1e-9)
        seen[fitted] += 1
    assert seen[True] > 10 and seen[False] > 10


def test_the_search_moves_peaks_to_the_shift_of_the_scene() -> None:
    """A template cut from a smooth picture and the picture shifted by (0.3, −0.45) px: the search finds the shift
    to a few thousandths of a pixel, and a peak with no search keeps its place with its exact score."""
    from slidesim._refine import spline_coefficients

    y, x = np.mgrid[0:48, 0:50].astype(np.float64)
    scene = np.sin(0.31 * (y - 0.3)) * np.cos(0.23 * (x + 0.45)) * 80 + 0.5 * (x + 0.45)
    picture = np.sin(0.31 * y) * np.cos(0.23 * x) * 80 + 0.5 * x
    crops = torch.from_numpy(np.stack([scene, scene])[:, None])
    template = torch.from_numpy(picture[20:28, 18:25].copy())[None]
    templates = torch.stack([template, template])
    weights = torch.ones(2, 1, 8, 7, dtype=torch.float64)
    centred = templates - templates.mean(dim=(-2, -1), keepdim=True)
    fy, fx, score, handed_back = numba_refine.search_peaks(
        spline_coefficients(crops, torch.float64), crops, torch.tensor([20.0, 20.0]), torch.tensor([18.0, 18.0]),
        torch.tensor([True, False]), (1, 1), centred, weights, None, centred, "zncc", True, True,
        ((0.5, 0.125, 1 / 32), 8.0, 8, 1 / 32), quadratic_design(),
    )  # fmt: skip
    assert not bool(handed_back.any())
    np.testing.assert_allclose([float(fy[0]), float(fx[0])], [0.3, -0.45], atol=5e-3)
    assert float(score[0]) > 0.99999
    assert (float(fy[1]), float(fx[1])) == (0.0, 0.0)
    exact = torch.corrcoef(torch.stack([crops[1, 0, 20:28, 18:25].reshape(-1), template.reshape(-1)]))[0, 1]
    np.testing.assert_allclose(float(score[1]), float(exact), rtol=1e-12)


@pytest.mark.parametrize("metric", ["zncc", "ssd", "sad", "ncc"])
@pytest.mark.parametrize(("C", "masked"), [(1, False), (3, True)])
def test_smoothed_grid_scores_agree_with_smoothed_resampled_windows(metric, C, masked) -> None:
    """With the search's smoothing, the kernel smooths each window within the footprint as
    slidesim._refine.smooth_within does, and scores it against the smoothed templates' side."""
    from slidesim._refine import smooth_within, smoothing_norm

    crops, sides = _case(C, masked, torch.float64)
    weights = sides["weights"]
    inverse_norm = smoothing_norm(weights)
    templates = smooth_within(sides["template"], weights, inverse_norm)
    total = weights.sum(dim=(-2, -1), keepdim=True)
    weighted = weights * templates
    smoothed = {
        "template": templates,
        "weights": weights,
        "weighted": weighted,
        "centred": weights * (templates - weighted.sum(dim=(-2, -1), keepdim=True) / total),
        "total": total,
    }
    coefficients = spline_coefficients(crops, torch.float64)
    index = torch.tensor([0, 1])
    first_y = torch.tensor([[3.0, 3.4, 4.75]] * 2, dtype=torch.float64)
    first_x = torch.tensor([[2.0, 2.6, 3.25]] * 2, dtype=torch.float64)
    got = numba_refine.grid_scores(coefficients, crops, index, first_y, first_x, (1, 1), smoothed[_SIDE_OF[metric]],
                                   weights, inverse_norm, metric, True, False)  # fmt: skip
    windows = resample(coefficients, first_y, first_x, (6, 5), (1, 1), (3, 3), index).reshape(2, 9, C, 6, 5)
    windows = smooth_within(windows, weights[index][:, None], inverse_norm[index][:, None])
    side = {name: value[index][:, None] for name, value in smoothed.items()}
    want, _ = _quick_scores(metric, True, windows, side, masked)
    np.testing.assert_allclose(got.reshape(2, 9).numpy(), want.numpy(), rtol=1e-10, atol=1e-10)
    unsmoothed = numba_refine.grid_scores(coefficients, crops, index, first_y, first_x, (1, 1),
                                          smoothed[_SIDE_OF[metric]], weights, None, metric, True, False)  # fmt: skip
    assert not torch.allclose(got, unsmoothed)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 1, 6), (1, 3, 2, 2), (2, 2, 5, 9), (1, 1, 64, 37)])
def test_the_tridiagonal_prefilter_is_the_dense_inverse(shape) -> None:
    """The B-spline coefficients by elimination equal the dense prefilter's, and resample the crop at whole
    pixels (the spline interpolates)."""
    from slidesim import _refine

    crops = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 255
    got = numba_refine.spline_prefilter(crops)
    Hc, Wc = shape[-2:]
    want = _refine.prefilter(Hc) @ crops @ _refine.prefilter(Wc).T
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-10)
    if Hc > 2 and Wc > 2:  # interior samples: (c[i-1] + 4 c[i] + c[i+1]) / 6 along each axis gives the crop back
        rows = (got[..., :-2, :] + 4 * got[..., 1:-1, :] + got[..., 2:, :]) / 6
        back = (rows[..., :-2] + 4 * rows[..., 1:-1] + rows[..., 2:]) / 6
        torch.testing.assert_close(back, crops[..., 1:-1, 1:-1], rtol=0, atol=1e-9)
