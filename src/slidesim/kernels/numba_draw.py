"""numba kernel (floor L2) that draws templates turned and scaled on a canvas: bilinear samples of the template
(coordinates clamped to its border, as ``grid_sample`` with ``padding_mode="border"`` and ``align_corners=True``
takes them), zero outside it, and the weights of the pixels that came from it.

The torch drawing (:func:`slidesim.banks.TransformStream.draw` without numba) builds source coordinates, an
inside test and sampling grids as float64 canvases, then samples: about ten passes over each canvas, 10 ms for one
700 × 500 template turned on its 858 × 838 canvas. Here each canvas pixel's source point, inside test and bilinear
sample are one step of one loop, the pixels of a run of angles shared among the threads by rows.

Imported only when numba is installed.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .._threads import numba_threads

INSIDE = 1e-6  # source coordinates this far outside the template still count as inside (round-off)


def draw_turned(
    source: np.ndarray,
    mask: np.ndarray | None,
    angles: list[float],
    scale: float,
    canvas: tuple[int, int],
    dtype: np.dtype = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Templates source [N, C, h, w] float64 turned by each of ``angles`` (degrees, counter-clockwise as displayed)
    and scaled by ``scale`` about the canvas centre -> (pictures [N, A, C, Hc, Wc], weights [Nm, A, Cm, Hc, Wc]),
    in ``dtype`` (computed in float64, rounded as they are stored): the bilinear sample where the source point
    lies inside the template (within ``INSIDE``), else 0; the weights are the mask [Nm, Cm, h, w] sampled alike,
    or 1 inside (Nm = Cm = 1) without a mask.

    Example:
        >>> source = np.arange(12.0).reshape(1, 1, 3, 4)
        >>> pictures, weights = draw_turned(source, None, [0.0, 180.0], 1.0, (3, 4))
        >>> bool((pictures[0, 0, 0] == source[0, 0]).all()), float(pictures[0, 1, 0, 0, 0]), weights.shape
        (True, 11.0, (1, 2, 1, 3, 4))
    """
    N, C = source.shape[:2]
    A = len(angles)
    Hc, Wc = canvas
    radians = np.radians(np.asarray(angles, dtype=np.float64))
    # the same cosines and sines as the torch drawing's (math.cos of each angle's radians)
    cosines = np.array([math.cos(float(r)) for r in radians])
    sines = np.array([math.sin(float(r)) for r in radians])
    pictures = np.empty((N, A, C, Hc, Wc), dtype=dtype)
    if mask is None:
        weights = np.empty((1, A, 1, Hc, Wc), dtype=dtype)
        mask = np.empty((0, 0, 0, 0))
    else:
        weights = np.empty((mask.shape[0], A, mask.shape[1], Hc, Wc), dtype=dtype)
    numba_threads()
    _draw(source, mask, cosines, sines, scale, pictures, weights)
    return pictures, weights


@numba.njit(inline="always")
def _bilinear(plane, row, col):
    """The bilinear sample of plane [h, w] at (row, col), clamped to the border."""
    h, w = plane.shape
    y = min(max(row, 0.0), h - 1.0)
    x = min(max(col, 0.0), w - 1.0)
    y0 = min(int(y), h - 1)  # y, x >= 0: truncation is the floor
    x0 = min(int(x), w - 1)
    fy = y - y0
    fx = x - x0
    y1 = min(y0 + 1, h - 1)
    x1 = min(x0 + 1, w - 1)
    top = plane[y0, x0] * (1.0 - fx) + plane[y0, x1] * fx
    bottom = plane[y1, x0] * (1.0 - fx) + plane[y1, x1] * fx
    return top * (1.0 - fy) + bottom * fy


@numba.njit(inline="always")
def _span(offset, slope, low, high, first, last):
    """The values of u in [first, last] with low <= offset + slope · u <= high, widened by a pixel each way (the
    caller tests each pixel of it exactly): (first, last) narrowed, empty when first > last."""
    if abs(slope) < 1e-12:  # (nearly) constant along the row: every pixel or none, tested one by one
        return first, last
    a, b = (low - offset) / slope, (high - offset) / slope
    if a > b:
        a, b = b, a
    return max(first, math.floor(a) - 1.0), min(last, math.ceil(b) + 1.0)


@numba.njit(parallel=True, cache=True)
def _draw(source, mask, cosines, sines, scale, pictures, weights):
    """Writes pictures [N, A, C, Hc, Wc] and weights [Nm, A, Cm, Hc, Wc] (see :func:`draw_turned`); ``mask`` of
    size 0 draws weights of 1 inside. Each canvas row tests only the pixels near the span that the template
    covers (found from the map's slopes) and writes zeros elsewhere."""
    N, C, h, w = source.shape
    A, Hc, Wc = pictures.shape[1], pictures.shape[3], pictures.shape[4]
    masked = mask.size > 0
    for task in numba.prange(A * Hc):
        a, i = task // Hc, task % Hc
        c, s = cosines[a], sines[a]
        v = i - (Hc - 1) / 2
        centre_u = (Wc - 1) / 2
        # displayed counter-clockwise with y down: template offset (dy, dx) lands at canvas offset
        # (c·dy − s·dx, s·dy + c·dx) · scale; its inverse gives the canvas pixel's source point (row, col)
        first, last = _span(c * v / scale + (h - 1) / 2, s / scale, -INSIDE, h - 1 + INSIDE, -centre_u, centre_u)
        first, last = _span(-s * v / scale + (w - 1) / 2, c / scale, -INSIDE, w - 1 + INSIDE, first, last)
        j0 = int(first + centre_u) if first <= last else Wc
        j1 = int(last + centre_u) + 1 if first <= last else Wc
        for n in range(N):
            for k in range(C):
                pictures[n, a, k, i, :j0] = 0.0
                pictures[n, a, k, i, j1:] = 0.0
        for n in range(weights.shape[0]):
            for k in range(weights.shape[2]):
                weights[n, a, k, i, :j0] = 0.0
                weights[n, a, k, i, j1:] = 0.0
        # the source point moves along the row by (s, c) / scale a pixel: products of j, not a running sum
        row0, col0 = c * v / scale + (h - 1) / 2, -s * v / scale + (w - 1) / 2
        row_step, col_step = s / scale, c / scale
        for j in range(j0, j1):
            u = j - centre_u
            row = row0 + row_step * u
            col = col0 + col_step * u
            inside = -INSIDE <= row <= h - 1 + INSIDE and -INSIDE <= col <= w - 1 + INSIDE
            for n in range(N):
                for k in range(C):
                    pictures[n, a, k, i, j] = _bilinear(source[n, k], row, col) if inside else 0.0
            for n in range(weights.shape[0]):
                for k in range(weights.shape[2]):
                    if not inside:
                        weights[n, a, k, i, j] = 0.0
                    elif masked:
                        weights[n, a, k, i, j] = _bilinear(mask[n, k], row, col)
                    else:
                        weights[n, a, k, i, j] = 1.0
