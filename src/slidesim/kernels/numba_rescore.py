"""numba kernel (floor L2) of the reference's textbook scores for a list of windows, read in place from the image.

The exact rescoring of the windows that round-off could spoil (near-flat windows of a screenshot under an FFT
cross term, near matches of ssd by correlation) used to gather every flagged window into a float64 tensor and run
the reference's formula on it: about 20 temporaries per window and 40-50 ns per tap (610 windows of a 38×98
template on a 1080p screenshot: 107 ms). Here each window is scored by one thread straight from the image, with
float64 sums in the reference's order of operations: mean first, then centred products, so the scores agree with
:func:`slidesim.reference.score_windows` to float64 round-off.

Imported only when numba is installed (see :func:`slidesim.kernels.area_sums.fused_statistics_available`); finite
images only (the reference's NaN rules are left to its own formula).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._geometry import Geometry
from .._threads import numba_threads

SSD, SSD_NORMED, CCORR, NCC, CCOEFF, ZNCC = range(6)
METRIC_CODES = {"ssd": SSD, "ssd_normed": SSD_NORMED, "ccorr": CCORR, "ncc": NCC, "ccoeff": CCOEFF, "zncc": ZNCC}


def scores_in_place(
    image: torch.Tensor,
    bank: torch.Tensor,
    mask: torch.Tensor | None,
    index: torch.Tensor,
    t0: int,
    geom: Geometry,
    metric: str,
) -> torch.Tensor:
    """Scores [n] float64 of ``metric`` for the windows at index [n, 4] (b, t, y, x; t counted from ``t0``) by
    :func:`window_scores`: images [B, C, Hp, Wp] on the CPU, finite; bank [Bk, T, C, h, w]; mask [Bm, Tm, Cm,
    h, w] or None (every tap, weight 1)."""
    if mask is None:
        mask = torch.ones(1, 1, 1, *bank.shape[-2:], dtype=torch.float64)
    out = np.empty(len(index))
    numba_threads()
    window_scores(
        image.detach().contiguous().numpy(),
        bank.detach().to(torch.float64).contiguous().numpy(),
        mask.detach().to(torch.float64).contiguous().numpy(),
        index.contiguous().numpy(),
        t0,
        *geom.stride,
        *geom.dilation,
        METRIC_CODES[metric],
        out,
    )
    return torch.from_numpy(out)


@numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nnan", "nsz"})
def window_scores(image, bank, mask, index, t0, sy, sx, dy, dx, metric, out):
    """The score of ``metric`` of every window listed in ``index``, channels joint.

    A zero weight zeroes its tap's terms rather than skipping it (no branch in the sums), and sums may be
    reassociated: the order of additions differs from the reference's, within float64 round-off. About 0.5-0.8 ns
    a tap for ssd and ncc, 2 ns for zncc (two passes and the flatness test), on 2 cores.

    Args:
        image: [B, C, Hp, Wp] padded images (any real dtype), finite.
        bank: [Bk, T, C, h, w] float64 templates (Bk is 1 or B).
        mask: [Bm, Tm, Cm, h, w] float64 weights (Bm is 1 or B, Tm 1 or T, Cm 1 or C); a zero weight takes its
            tap out of the window.
        index: [n, 4] int64 rows (b, t, y, x): image, template relative to ``t0``, output row and column.
        t0: First template of the chunk that ``index`` counts from.
        sy, sx: Strides.
        dy, dx: Dilations.
        metric: One of the codes of :data:`METRIC_CODES`.
        out: [n] float64, written.
    """
    C = image.shape[1]
    h, w = bank.shape[3], bank.shape[4]
    centred = metric in (CCOEFF, ZNCC)
    for k in numba.prange(index.shape[0]):
        b, t, y, x = index[k, 0], index[k, 1], index[k, 2], index[k, 3]
        bk = b if bank.shape[0] > 1 else 0
        bm = b if mask.shape[0] > 1 else 0
        tt = t0 + t
        tm = tt if mask.shape[1] > 1 else 0
        total = 0.0  # ssd, the cross term, or ccoeff
        energy_t = 0.0  # Σ (M T)², or Σ Tc² for zncc
        energy_p = 0.0
        flat = True  # every channel flat in the window or the template (zncc)
        for c in range(C):
            cm = c if mask.shape[2] > 1 else 0
            mean_t = 0.0
            mean_p = 0.0
            if centred:
                weight = 0.0
                sum_t = 0.0
                sum_p = 0.0
                for i in range(h):
                    row = y * sy + i * dy
                    for j in range(w):
                        m = mask[bm, tm, cm, i, j]
                        weight += m
                        sum_t += m * bank[bk, tt, c, i, j]
                        sum_p += m * float(image[b, c, row, x * sx + j * dx])
                safe = weight if weight > 0 else 1.0
                mean_t = sum_t / safe
                mean_p = sum_p / safe
            low_t = np.inf
            high_t = -np.inf
            low_p = np.inf
            high_p = -np.inf
            for i in range(h):
                row = y * sy + i * dy
                for j in range(w):
                    m = mask[bm, tm, cm, i, j]
                    tv = bank[bk, tt, c, i, j]
                    pv = float(image[b, c, row, x * sx + j * dx])
                    if centred:
                        tc = m * (tv - mean_t)
                        pc = m * (pv - mean_p)
                        total += tc * pc
                        energy_t += tc * tc
                        energy_p += pc * pc
                        supported = m > 0
                        low_t = min(low_t, tv if supported else np.inf)
                        high_t = max(high_t, tv if supported else -np.inf)
                        low_p = min(low_p, pv if supported else np.inf)
                        high_p = max(high_p, pv if supported else -np.inf)
                    else:
                        mt = m * tv
                        mp = m * pv
                        if metric in (SSD, SSD_NORMED):
                            total += (mp - mt) * (mp - mt)
                        else:
                            total += mt * mp
                        energy_t += mt * mt
                        energy_p += mp * mp
            # an empty support is flat (high = -inf < low = inf), as the reference's all_equal has it
            flat = flat and (high_t <= low_t or high_p <= low_p)
        den = math.sqrt(energy_t * energy_p)
        if metric in (SSD, CCORR, CCOEFF):
            out[k] = total
        elif metric == SSD_NORMED:
            if total == 0.0:
                out[k] = 0.0
            elif den <= 0.0:
                out[k] = 1.0
            else:
                out[k] = min(total / den, 1.0)
        elif metric == NCC:
            out[k] = 0.0 if den <= 0.0 else min(max(total / den, -1.0), 1.0)
        else:
            out[k] = 0.0 if flat or den <= 0.0 else min(max(total / den, -1.0), 1.0)
