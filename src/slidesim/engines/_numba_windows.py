"""numba kernel of the unmasked window statistics of the correlation metrics, in one pass over the image.

Imported only when numba is installed (see :func:`slidesim.engines._fast.fused_statistics_available`). Each thread
owns a band of output rows: it keeps float64 sums of every image column over the window's rows, moves them down
by adding the rows that enter and subtracting the rows that leave, and reads each window's total from a prefix sum
of those column sums. The image is read about twice and nothing but the output is written, where the equivalent
torch code writes several float64 planes (summed-area tables, squares, differences).

Running sums err by at most (Hp + Wp)·ε·Σ|terms|, like a summed-area table; the scoring code's rounding bound for
the flat-window test covers both.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def window_squares(image, shift, h, w, sy, sx, centred, rows_per_task, out):
    """Σ (I − s)² over every h × w window, minus (Σ (I − s))² / (h·w) when ``centred`` (the window's variance
    times its size); strided by (sy, sx).

    Args:
        image: [B, Hp, Wp] float32 or float64.
        shift: [B] float64, subtracted from every pixel of its image.
        h, w: Window size.
        sy, sx: Strides.
        centred: Subtract the squared window sum over the window size.
        rows_per_task: Output rows per parallel task; each task first sums its first window's h rows.
        out: [B, H', W'] float64, written.
    """
    B, Wp = image.shape[0], image.shape[2]
    Ho, Wo = out.shape[1], out.shape[2]
    n = h * w
    bands = (Ho + rows_per_task - 1) // rows_per_task
    for task in numba.prange(B * bands):
        b = task // bands
        r0 = (task % bands) * rows_per_task
        r1 = min(Ho, r0 + rows_per_task)
        s = shift[b]
        col1 = np.zeros(Wp)
        col2 = np.zeros(Wp)
        pre1 = np.zeros(Wp + 1)
        pre2 = np.zeros(Wp + 1)
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
            for k in range(Wo):
                x0 = k * sx
                second = pre2[x0 + w] - pre2[x0]
                if centred:
                    first = pre1[x0 + w] - pre1[x0]
                    out[b, r, k] = second - first * first / n
                else:
                    out[b, r, k] = second
