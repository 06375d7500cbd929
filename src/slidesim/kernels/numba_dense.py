"""numba kernel (floor L2) of a dense block of windows per template: every valid window of small crops against
their own templates, in one pass over each window (a pose search's local searches).

A local search scores every template of a few poses at the few dozen centres around a candidate. The exact
rescoring's kernel (:mod:`slidesim.kernels.numba_rescore`) scores one window at a time in the reference's order:
the template's and the window's means first, then the centred products, about 2 ns a tap for zncc, and every
window streams its whole template (megabytes for a 700 × 500 template turned on an 862² canvas) through the
caches again. Here the template side is summed once per template (its weights, mean, energy and kernel sum),
each task sweeps one row of window positions so that a template row is read once for all of them from L1, the
columns outside the footprint are skipped, and each window needs one pass of fused multiply-adds with no branch:
Σ m·P, Σ m²·P, Σ m²·P² and Σ K·P per channel, from which the window's mean, its centred energy and the centred
cross term follow. On 2 cores that is about 0.1-0.2 ns a tap.

One pass trades the reference's centring for sums of raw products, which cancel where a window's variance is
small against its mean square. The centred metrics sum each pixel less its crop channel's mean, which is near every
window's own in a local search, and a window whose centred energy is below ``CANCELLATION`` of its raw energy in some
channel (flat and near-flat windows, where the flatness rule also applies) is scored again by the exact
rescoring's two-pass kernel; elsewhere the round-off of the one-pass sums stays below 1e-12 of the score for
taps in the millions (typically; a worst-case bound of n·ε/CANCELLATION for n taps). ncc and zncc scores within
``NEAR_ONE`` of ±1 are scored again in two passes too, where an exact copy's cross term and energies are the same
sums and it scores exactly 1; ssd and ssd_normed take Σ (m·P − m·T)² directly, so exact copies score exactly 0.

Imported only when numba is installed; finite crops only.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._geometry import Geometry
from .._threads import numba_threads
from .numba_rescore import CCOEFF, CCORR, METRIC_CODES, NCC, SSD, SSD_NORMED, ZNCC, scores_in_place

CANCELLATION = 1e-4  # centred / raw energy of a window's channel below which its one-pass sums are not trusted
NEAR_ONE = 1e-9  # ncc and zncc scores this close to ±1 are scored again in two passes


def dense_scores(
    crops: torch.Tensor,
    pictures: torch.Tensor,
    weights: torch.Tensor,
    dilation: tuple[int, int],
    metric: str,
) -> torch.Tensor:
    """Scores [N, R, ny, nx] float64 of every valid window of crops [N, C, H, W] (any real dtype, finite, on the
    CPU) against templates pictures [Bk, R, C, Hc, Wc] with weights [Bm, R, Cm, Hc, Wc] (Bk, Bm 1 or N; Cm 1 or C;
    a weight of zero takes its tap out), channels joint, stride 1: the reference's scores to float64 round-off.

    Example:
        >>> crops = torch.rand(1, 1, 12, 12)
        >>> template = crops[:, :, 2:10, 3:11][:, None]  # [1, 1, 1, 8, 8]
        >>> scores = dense_scores(crops, template, torch.ones_like(template), (1, 1), "zncc")
        >>> scores.shape, round(float(scores[0, 0, 2, 3]), 12)
        (torch.Size([1, 1, 5, 5]), 1.0)
    """
    N, C, H, W = crops.shape
    Bk, R, _, Hc, Wc = pictures.shape
    dy, dx = dilation
    ny, nx = max(0, H - dy * (Hc - 1)), max(0, W - dx * (Wc - 1))
    out = np.empty((N, R, ny, nx))
    if ny == 0 or nx == 0:
        return torch.from_numpy(out)
    code = METRIC_CODES[metric]
    m = weights.detach().contiguous().numpy()  # any float dtype: the kernels widen as they read
    B = max(Bk, m.shape[0])
    constants = np.empty((B, R, C, 6))
    extents = np.empty((m.shape[0], R, Hc, 2), dtype=np.int64)
    threads = numba_threads()
    templates = pictures.detach().contiguous().numpy()
    solid = _prepare(templates, m, code, constants, extents)
    doubtful = np.zeros((N, R, ny, nx), dtype=np.bool_)
    blocks = max(1, min(ny, -(-2 * threads // (N * R))))  # enough tasks for every thread, few template re-reads
    # the centred metrics sum pixels less each crop channel's mean, near every window's own in a local search: the
    # one-pass sums then cancel little (a window's raw energy is about its centred one)
    centred = code in (CCOEFF, ZNCC)
    shift = crops.detach().to(torch.float64).mean(dim=(-2, -1)) if centred else torch.zeros(N, C, dtype=torch.float64)
    _dense(crops.detach().contiguous().numpy(), shift.numpy(), templates, m, extents, constants, solid, dy, dx, code,
           blocks, out, doubtful)  # fmt: skip
    scores = torch.from_numpy(out)
    if doubtful.any():  # near-flat windows: the two-pass kernel, in the reference's order
        index = torch.from_numpy(np.argwhere(doubtful))
        geom = Geometry((1, 1), (dy, dx), ny, nx, (Hc, Wc))
        scores[tuple(index.unbind(dim=1))] = scores_in_place(crops, pictures, weights, index, 0, geom, metric)
    return scores


_FAST = {"reassoc", "contract", "nnan", "nsz", "arcp"}


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _prepare(pictures, m, metric, constants, extents):
    """The template side, once per template: writes extents [Bm, R, Hc, 2] (per row, the first column with weight
    in any channel and one past the last; 0, 0 without weight) and constants [B, R, C, 6]: Σ m, Σ m², Σ K (the
    kernel the windows are multiplied by, see :func:`_kernel_tap`), the template's energy Σ (m·(T − mean))² or
    Σ (m·T)², 1 in every channel where all channels of the template are flat, else 0 (zncc's flatness rule), and
    the template's weighted mean. Returns whether every weight is 1 within the extents and 0 outside in every
    channel (then the sums need not read the weights)."""
    Bm, R, Cm, Hc, Wc = m.shape
    B, C = constants.shape[0], constants.shape[2]
    solid = np.ones(Bm * R, dtype=np.bool_)
    for task in numba.prange(Bm * R):
        bm, r = task // R, task % R
        for i in range(Hc):
            first, last = Wc, 0
            for cm in range(Cm):
                for j in range(Wc):
                    if m[bm, r, cm, i, j] > 0.0:
                        first = min(first, j)
                        last = max(last, j + 1)
            if last == 0:
                first = 0
            extents[bm, r, i, 0], extents[bm, r, i, 1] = first, last
            for cm in range(Cm):
                for j in range(Wc):
                    inside = first <= j < last
                    if m[bm, r, cm, i, j] != (1.0 if inside else 0.0):
                        solid[task] = False
    centred = metric in (CCOEFF, ZNCC)
    for task in numba.prange(B * R):
        b, r = task // R, task % R
        bk = b if pictures.shape[0] > 1 else 0
        bm = b if Bm > 1 else 0
        every_channel_flat = True
        for c in range(C):
            cm = c if Cm > 1 else 0
            weight = 0.0
            weight2 = 0.0
            total = 0.0
            low = np.inf
            high = -np.inf
            for i in range(Hc):
                for j in range(extents[bm, r, i, 0], extents[bm, r, i, 1]):
                    w = np.float64(m[bm, r, cm, i, j])
                    t = np.float64(pictures[bk, r, c, i, j])
                    weight += w
                    weight2 += w * w
                    total += w * t
                    if w > 0.0:
                        low = min(low, t)
                        high = max(high, t)
            every_channel_flat = every_channel_flat and high <= low
            mean = total / weight if weight > 0.0 else 0.0
            kernel_sum = 0.0
            energy = 0.0
            for i in range(Hc):
                for j in range(extents[bm, r, i, 0], extents[bm, r, i, 1]):
                    w = np.float64(m[bm, r, cm, i, j])
                    t = np.float64(pictures[bk, r, c, i, j])
                    k = _kernel_tap(t, w, mean, metric)
                    kernel_sum += k
                    if centred:
                        energy += (w * (t - mean)) * (w * (t - mean))
                    else:
                        energy += (w * t) * (w * t)
            constants[b, r, c, 0] = weight
            constants[b, r, c, 1] = weight2
            constants[b, r, c, 2] = kernel_sum
            constants[b, r, c, 3] = energy
            constants[b, r, c, 5] = mean
        for c in range(C):
            constants[b, r, c, 4] = 1.0 if every_channel_flat and metric == ZNCC else 0.0
    return solid.all()


@numba.njit(inline="always", fastmath=_FAST)
def _kernel_tap(t, w, mean, metric):
    """The kernel K that a window's pixel is multiplied by, at a tap of template value t and weight w: m²·(T − mean)
    for ccoeff and zncc, m·T for ssd and ssd_normed (whose sums take m·P − K), m²·T for ccorr and ncc."""
    if metric in (CCOEFF, ZNCC):
        return w * (w * (t - mean))
    if metric in (SSD, SSD_NORMED):
        return w * t
    return w * w * t


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _dense(crops, shift, pictures, m, extents, constants, solid, dy, dx, metric, blocks, out, doubtful):
    """out[n, r, y, x] = the score of window (y, x) of crop n against template r; doubtful[n, r, y, x] set where
    the one-pass sums cannot be trusted (see the module docstring). One task per (crop, template, block of window
    rows): each template row is read once per block, for all its windows, while it sits in L1.

    Args:
        crops: [N, C, H, W] any real dtype, finite.
        shift: [N, C] float64 subtracted from every pixel of the crop's channel as it is read (the centred
            metrics' scores do not depend on it).
        pictures: [Bk, R, C, Hc, Wc] templates, any real dtype.
        m: [Bm, R, Cm, Hc, Wc] weights, any float dtype.
        extents, constants: From :func:`_prepare`, constants [B, R, C, 6] with B = max(Bk, Bm).
        solid: Every weight 1 within the extents (the sums skip them).
        dy, dx: Dilation.
        metric: A code of :data:`slidesim.kernels.numba_rescore.METRIC_CODES`.
        blocks: Blocks of window rows per (crop, template).
        out: [N, R, ny, nx] float64, written.
        doubtful: [N, R, ny, nx] bool, set where the window must be scored again in two passes.
    """
    N, C = crops.shape[0], crops.shape[1]
    R, Hc = pictures.shape[1], pictures.shape[3]
    ny, nx = out.shape[2], out.shape[3]
    rows_per_block = -(-ny // blocks)
    for task in numba.prange(N * R * blocks):
        n = task // (R * blocks)
        r = (task // blocks) % R
        y0 = (task % blocks) * rows_per_block
        y1 = min(ny, y0 + rows_per_block)
        if y1 <= y0:
            continue
        bk = n if pictures.shape[0] > 1 else 0
        bm = n if m.shape[0] > 1 else 0
        bc = n if constants.shape[0] > 1 else 0
        sums = np.zeros((y1 - y0, nx, C, 4))  # per window and channel: Σ m·P, Σ m²·P, Σ m²·P², Σ K·P
        for c in range(C):
            cm = c if m.shape[2] > 1 else 0
            mean = constants[bc, r, c, 5]
            s = shift[n, c]
            for i in range(Hc):
                j0, j1 = extents[bm, r, i, 0], extents[bm, r, i, 1]
                if j1 <= j0:
                    continue
                t_row = pictures[bk, r, c, i, j0:j1]
                w_row = m[bm, r, cm, i, j0:j1]
                for y in range(y0, y1):
                    picture_row = crops[n, c, y + i * dy]
                    for x in range(nx):
                        into = sums[y - y0, x, c]
                        if dx == 1:  # a contiguous row: the sums vectorize (a strided view in its place does not)
                            _row_sums(picture_row[x + j0 : x + j1], s, t_row, w_row, mean, solid, metric, into)
                        else:
                            window = picture_row[x + j0 * dx : x + (j1 - 1) * dx + 1 : dx]
                            _row_sums(window, s, t_row, w_row, mean, solid, metric, into)
        centred = metric in (CCOEFF, ZNCC)
        for y in range(y0, y1):
            for x in range(nx):
                out[n, r, y, x], doubtful[n, r, y, x] = _finish(sums[y - y0, x], constants[bc, r], centred, metric)


@numba.njit(inline="always", fastmath=_FAST)
def _row_sums(window, shift, t, w, mean, solid, metric, into):
    """Adds one template row's sums of one window to ``into`` [4] (see :func:`_dense`): the row's pixels
    ``window`` less ``shift``, template values ``t`` and weights ``w``, each as long as the row's extent."""
    a = 0.0
    b = 0.0
    q = 0.0
    z = 0.0
    if (metric in (CCOEFF, ZNCC)) and solid:
        for j in range(window.shape[0]):
            p = np.float64(window[j]) - shift
            a += p
            q += p * p
            z += (np.float64(t[j]) - mean) * p
        b = a
    elif metric in (CCOEFF, ZNCC):
        for j in range(window.shape[0]):
            p = np.float64(window[j]) - shift
            wj = np.float64(w[j])
            a += wj * p
            wp = wj * wj * p
            b += wp
            q += wp * p
            z += _kernel_tap(np.float64(t[j]), wj, mean, metric) * p
    elif metric in (SSD, SSD_NORMED):
        for j in range(window.shape[0]):
            wj = np.float64(w[j])
            mp = wj * (np.float64(window[j]) - shift)
            d = mp - _kernel_tap(np.float64(t[j]), wj, mean, metric)
            z += d * d
            q += mp * mp
    else:
        for j in range(window.shape[0]):
            p = np.float64(window[j]) - shift
            wj = np.float64(w[j])
            q += wj * wj * p * p
            z += _kernel_tap(np.float64(t[j]), wj, mean, metric) * p
    into[0] += a
    into[1] += b
    into[2] += q
    into[3] += z


@numba.njit(inline="always", fastmath=_FAST)
def _finish(sums, constants, centred, metric):
    """(score, doubtful) of one window from its sums [C, 4] and its template's constants [C, 5]."""
    total = 0.0
    energy_t = 0.0
    energy_p = 0.0
    for c in range(sums.shape[0]):
        energy_t += constants[c, 3]
        if centred:
            weight = constants[c, 0]
            mean = sums[c, 0] / weight if weight > 0.0 else 0.0
            raw = sums[c, 2]
            energy = raw - 2.0 * mean * sums[c, 1] + mean * mean * constants[c, 1]
            if not energy > CANCELLATION * raw:
                return 0.0, True
            energy_p += energy
            total += sums[c, 3] - mean * constants[c, 2]
        else:
            energy_p += sums[c, 2]
            total += sums[c, 3]
    den = np.sqrt(energy_t * energy_p)
    if metric in (SSD, CCORR, CCOEFF):
        return total, False
    if metric == SSD_NORMED:
        if total == 0.0:
            return 0.0, False
        return (1.0 if den <= 0.0 else min(total / den, 1.0)), False
    if metric == NCC:
        score = 0.0 if den <= 0.0 else min(max(total / den, -1.0), 1.0)
    elif constants[0, 4] > 0.0:  # zncc of a template flat in every channel (no window channel is flat here)
        score = 0.0
    else:
        score = 0.0 if den <= 0.0 else min(max(total / den, -1.0), 1.0)
    # an exact copy scores exactly ±1 in two passes (the cross term and the energies are the same sums there)
    return score, abs(score) > 1.0 - NEAR_ONE
