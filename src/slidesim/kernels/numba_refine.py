"""numba kernel (floor L2) of sub-pixel refinement's grids: windows resampled from cubic B-spline coefficients at
a grid of shifts and scored against a template, in one pass.

Batched torch code (:func:`slidesim._refine.resample` and the metrics' formulas in :mod:`slidesim._refine_many`)
spends its time on dispatch when few peaks are refined: about 40 small operations per 5 × 5 grid, 1-2 ms a grid
whatever its arithmetic, so the single best match of a 512² photograph cost more in refinement than in scoring.
Here one thread takes one row shift of one peak's grid: it filters the coefficients' rows it needs once with the
row shift's four spline weights, then for each column shift filters that band's columns into a window buffer and
scores it, with float64 sums in the order of the formulas the torch code uses (mean first for the centred
metrics). A 5 × 5 grid of a 32² template costs about 0.1 ms.

Imported only when numba is installed; the crops hold no holes (the caller's contract).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._threads import numba_threads

SAD, MAD, L1_SIMILARITY, SSD, CCORR, NCC, CCOEFF, ZNCC = range(8)
METRIC_CODES = {
    "sad": SAD,
    "mad": MAD,
    "l1_similarity": L1_SIMILARITY,
    "ssd": SSD,
    "ccorr": CCORR,
    "ncc": NCC,
    "ccoeff": CCOEFF,
    "zncc": ZNCC,
}


def grid_scores(
    coefficients: torch.Tensor,
    crops: torch.Tensor,
    index: torch.Tensor,
    first_y: torch.Tensor,
    first_x: torch.Tensor,
    dilation: tuple[int, int],
    side: torch.Tensor,
    weights: torch.Tensor,
    metric: str,
    joint: bool,
    pixels_at_whole_positions: bool,
) -> torch.Tensor:
    """Scores [p, ny, nx] float64 of the windows that :func:`slidesim._refine.resample` would resample (first taps
    at (first_y[q, i], first_x[q, j]) of crop ``index[q]``), scored by :func:`slidesim._refine_many._quick_scores`'s
    formula for ``metric``.

    Args:
        coefficients: [P, C, Hc, Wc] float32 or float64 B-spline coefficients of the crops.
        crops: [P, C, Hc, Wc] the crops' pixels, read where ``pixels_at_whole_positions`` and a window's samples
            all lie on pixels.
        index: [p] int64, the crop of each item.
        first_y: [p, ny] float64 rows of the first taps of each row shift.
        first_x: [p, nx] float64 columns of the first taps of each column shift.
        dilation: Tap spacing (y, x).
        side: [P, C, h, w] the templates' side that the formula reads, float64: the templates for sad, mad,
            l1_similarity and ssd; the weighted templates M·T for ccorr and ncc; the weighted centred templates
            M·(T − their weighted mean) for ccoeff and zncc.
        weights: [P, 1 or C, h, w] float64 weights (ones without a mask).
        metric: A key of :data:`METRIC_CODES`.
        joint: Channels scored jointly (else the mean of the channels' scores).
        pixels_at_whole_positions: Windows whose samples all lie on pixels read the pixels (the spline reproduces
            them only to round-off).

    Raises:
        AssertionError: A shift's taps would read beyond its crop (the crops' guard band is the caller's).
    """
    p, ny, nx = len(index), first_y.shape[1], first_x.shape[1]
    out = np.empty((p, ny, nx))
    if p == 0:
        return torch.from_numpy(out)
    h, w = side.shape[-2:]
    Hc, Wc = coefficients.shape[-2:]
    dy, dx = dilation
    low_y, low_x = math.floor(float(first_y.min())) - 1, math.floor(float(first_x.min())) - 1
    high_y = math.floor(float(first_y.max())) + 2 + (h - 1) * dy
    high_x = math.floor(float(first_x.max())) + 2 + (w - 1) * dx
    if low_y < 0 or low_x < 0 or high_y >= Hc or high_x >= Wc:
        raise AssertionError(f"shifts read rows {low_y}..{high_y}, columns {low_x}..{high_x} of {Hc}×{Wc} crops")
    numba_threads()
    _grid_scores(
        coefficients.contiguous().numpy(),
        crops.contiguous().numpy(),
        index.contiguous().numpy(),
        first_y.to(torch.float64).contiguous().numpy(),
        first_x.to(torch.float64).contiguous().numpy(),
        dy,
        dx,
        side.to(torch.float64).contiguous().numpy(),
        weights.to(torch.float64).contiguous().numpy(),
        METRIC_CODES[metric],
        joint,
        pixels_at_whole_positions,
        out,
    )
    return torch.from_numpy(out)


@numba.njit(cache=True, inline="always", error_model="numpy")
def _spline(f):
    """The four cubic B-spline weights of a sample at fraction f ∈ [0, 1) past its coefficient."""
    f2 = f * f
    f3 = f2 * f
    return (
        (1 - f) ** 3 / 6,
        (3 * f3 - 6 * f2 + 4) / 6,
        (-3 * f3 + 3 * f2 + 3 * f + 1) / 6,
        f3 / 6,
    )


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _grid_scores(coefficients, crops, index, first_y, first_x, dy, dx, side, weights, metric, joint, whole_pixels, out):
    """The loop of :func:`grid_scores`: one task per (item, row shift)."""
    p, ny = first_y.shape
    nx = first_x.shape[1]
    C = coefficients.shape[1]
    h, w = side.shape[2], side.shape[3]
    Cw = weights.shape[1]
    centred = metric in (CCOEFF, ZNCC)
    for task in numba.prange(p * ny):
        q = task // ny
        i = task % ny
        P = index[q]
        # the columns that this item's column shifts read, filtered along rows once for all of them
        low = 10**9
        high = -(10**9)
        for j in range(nx):
            b = math.floor(first_x[q, j]) - 1
            low = min(low, b)
            high = max(high, b + 3 + (w - 1) * dx)
        band = np.empty((C, h, high - low + 1))
        fy = first_y[q, i]
        by = math.floor(fy)
        ay = fy - by
        w0, w1, w2, w3 = _spline(ay)
        for c in range(C):
            for a in range(h):
                r = by - 1 + a * dy
                for k in range(high - low + 1):
                    col = low + k
                    band[c, a, k] = (
                        w0 * coefficients[P, c, r, col]
                        + w1 * coefficients[P, c, r + 1, col]
                        + w2 * coefficients[P, c, r + 2, col]
                        + w3 * coefficients[P, c, r + 3, col]
                    )
        window = np.empty((C, h, w))
        for j in range(nx):
            fx = first_x[q, j]
            bx = math.floor(fx)
            ax = fx - bx
            if whole_pixels and ay == 0.0 and ax == 0.0:
                for c in range(C):
                    for a in range(h):
                        for b in range(w):
                            window[c, a, b] = crops[P, c, by + a * dy, bx + b * dx]
            else:
                v0, v1, v2, v3 = _spline(ax)
                start = bx - 1 - low
                for c in range(C):
                    for a in range(h):
                        for b in range(w):
                            k = start + b * dx
                            row = band[c, a]
                            window[c, a, b] = v0 * row[k] + v1 * row[k + 1] + v2 * row[k + 2] + v3 * row[k + 3]
            # per-channel sums, then channels joined (joint) or their scores averaged
            cross_all = 0.0
            window_energy_all = 0.0
            template_energy_all = 0.0
            count_all = 0.0
            mean_score = 0.0
            for c in range(C):
                cw = c if Cw > 1 else 0
                total = 0.0
                mean = 0.0
                if centred:
                    weighted = 0.0
                    for a in range(h):
                        for b in range(w):
                            m = weights[P, cw, a, b]
                            total += m
                            weighted += m * window[c, a, b]
                    mean = weighted / total
                else:
                    for a in range(h):
                        for b in range(w):
                            total += weights[P, cw, a, b]
                cross = 0.0
                window_energy = 0.0
                template_energy = 0.0
                for a in range(h):
                    for b in range(w):
                        m = weights[P, cw, a, b]
                        s = side[P, c, a, b]
                        v = window[c, a, b]
                        if metric <= L1_SIMILARITY:
                            cross += m * abs(v - s)
                        elif metric == SSD:
                            d = m * (v - s)
                            cross += d * d
                        else:
                            mv = m * (v - mean) if centred else m * v
                            cross += mv * s
                            window_energy += mv * mv
                            template_energy += s * s
                cross_all += cross
                window_energy_all += window_energy
                template_energy_all += template_energy
                count_all += total
                if not joint:
                    mean_score += _finish(metric, cross, window_energy, template_energy, total)
            if joint:
                score = _finish(metric, cross_all, window_energy_all, template_energy_all, count_all)
            else:
                score = mean_score / C
            out[q, i, j] = score


@numba.njit(cache=True, inline="always", error_model="numpy")
def _finish(metric, cross, window_energy, template_energy, count):
    """A score from its sums (ncc and zncc clipped to ±1, beyond which only round-off takes them; a zero energy
    gives NaN, which the caller hands to the degenerate rules)."""
    if metric in (SAD, SSD, CCORR, CCOEFF):
        return cross
    if metric == MAD:
        return cross / count
    if metric == L1_SIMILARITY:
        return 1.0 - cross / count
    score = cross / math.sqrt(template_energy * window_energy)
    if score > 1.0:
        return 1.0
    if score < -1.0:
        return -1.0
    return score
