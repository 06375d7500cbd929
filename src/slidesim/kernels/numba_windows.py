"""numba kernel (floor L2) of the unmasked window statistics of the correlation metrics, in one pass over the image.

Imported only when numba is installed (see :func:`slidesim.kernels.area_sums.fused_statistics_available`). Each thread
owns a band of output rows: it keeps float64 sums of every image column over the window's rows, moves them down
by adding the rows that enter and subtracting the rows that leave, and reads each window's total from a prefix sum
of those column sums. The image is read about twice and nothing but the output is written, where the equivalent
torch code writes several float64 planes (summed-area tables, squares, differences).

The running sums' rounding stays within the window: a column sum's chain of updates and the w prefix additions
inside the window, each within ε of a partial sum of at most the band's size (see
:func:`slidesim.scoring.bounds.running_sums_rounding_bound`), where a summed-area table errs by ε times the whole
plane's total.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def window_squares(image, shift, h, w, sy, sx, centred, rows_per_task, tolerance, out, factors):
    """Σ (I − s)² over every h × w window, minus (Σ (I − s))² / (h·w) when ``centred`` (the window's variance
    times its size); strided by (sy, sx). Either the values themselves (into ``out``) or, when ``factors`` is not
    empty, 1/√value where the value exceeds ``tolerance`` and 0 elsewhere (into ``factors``), returning how many
    windows were at or below it.

    Args:
        image: [B, Hp, Wp] float32 or float64.
        shift: [B] float64, subtracted from every pixel of its image.
        h, w: Window size.
        sy, sx: Strides.
        centred: Subtract the squared window sum over the window size.
        rows_per_task: Output rows per parallel task; each task first sums its first window's h rows.
        tolerance: See above; unused when ``factors`` is empty.
        out: [B, H', W'] float64, written when ``factors`` is empty.
        factors: [B, H', W'] (float32 or float64) or [0, 0, 0].
    """
    B, Wp = image.shape[0], image.shape[2]
    inverse = factors.shape[0] > 0
    Ho = factors.shape[1] if inverse else out.shape[1]
    Wo = factors.shape[2] if inverse else out.shape[2]
    n = h * w
    bands = (Ho + rows_per_task - 1) // rows_per_task
    lows = np.zeros(B * bands, dtype=np.int64)  # windows at or below the tolerance, per task
    for task in numba.prange(B * bands):
        b = task // bands
        r0 = (task % bands) * rows_per_task
        r1 = min(Ho, r0 + rows_per_task)
        s = shift[b]
        col1 = np.zeros(Wp)
        col2 = np.zeros(Wp)
        pre1 = np.zeros(Wp + 1)
        pre2 = np.zeros(Wp + 1)
        values = np.empty(Wo)
        for y in range(r0 * sy, r0 * sy + h):
            for x in range(Wp):
                v = image[b, y, x] - s
                col1[x] += v
                col2[x] += v * v
        for r in range(r0, r1):
            if r > r0:
                top = r * sy
                if sy >= h:  # no row is shared with the previous window: start afresh
                    col1[:] = 0.0
                    col2[:] = 0.0
                    for y in range(top, top + h):
                        for x in range(Wp):
                            v = image[b, y, x] - s
                            col1[x] += v
                            col2[x] += v * v
                else:
                    for k in range(sy):
                        leaving, entering = top - sy + k, top - sy + k + h
                        for x in range(Wp):
                            u = image[b, leaving, x] - s
                            v = image[b, entering, x] - s
                            col1[x] += v - u
                            col2[x] += v * v - u * u
            acc1 = 0.0
            acc2 = 0.0
            for x in range(Wp):
                acc1 += col1[x]
                acc2 += col2[x]
                pre1[x + 1] = acc1
                pre2[x + 1] = acc2
            # Branch-free passes over the row, so that they vectorize.
            if centred:
                for k in range(Wo):
                    x0 = k * sx
                    first = pre1[x0 + w] - pre1[x0]
                    values[k] = (pre2[x0 + w] - pre2[x0]) - first * first / n
            else:
                for k in range(Wo):
                    x0 = k * sx
                    values[k] = pre2[x0 + w] - pre2[x0]
            if not inverse:
                for k in range(Wo):
                    out[b, r, k] = values[k]
            else:
                low = 0
                for k in range(Wo):
                    v = values[k]
                    keep = v > tolerance
                    # the divisor stays positive in both lanes, so the select needs no division-by-zero branch
                    factors[b, r, k] = 1.0 / np.sqrt(v if keep else 1.0) if keep else 0.0
                    low += not keep
                lows[task] += low
    return lows.sum()


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def plane_energies(image, shift):
    """Σ (I − s)² of each image, in float64: image [B, Hp, Wp] float32 or float64, shift [B] float64 -> [B].

    One read of the image, parallel over rows; the sums may be reassociated (they vectorize), which changes them
    by a few units of float64 round-off.
    """
    B, H, W = image.shape
    rows = np.zeros(B * H)
    for task in numba.prange(B * H):
        b = task // H
        y = task % H
        s = shift[b]
        total = 0.0
        for x in range(W):
            d = image[b, y, x] - s
            total += d * d
        rows[task] = total
    return rows.reshape(B, H).sum(axis=1)
