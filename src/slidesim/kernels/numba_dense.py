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
_RUN_LENGTH = 256  # windows of one row scored by one task of listed_scores: their sums stay in L1
_TOLERANCE = 1e-9  # listed_scores: the one-pass sums are trusted where their worst-case error stays below this


def listed_scores(
    image: torch.Tensor,
    bank: torch.Tensor,
    mask: torch.Tensor | None,
    index: torch.Tensor,
    t0: int,
    geom: Geometry,
    metric: str,
) -> torch.Tensor:
    """Scores [n] float64 of ``metric`` for the windows at index [n, 4] (b, t, y, x; t counted from ``t0``), as
    :func:`slidesim.kernels.numba_rescore.scores_in_place` has them, but swept in runs: the windows that follow
    each other along an output row are scored together, each template row read once per run from L1, in one pass
    of fused multiply-adds over the footprint's extent (a turned template's canvas is half empty), each window's
    pixels less one of its own pixels (the centred metrics: near-flat windows, the ones an exact rescoring is
    mostly asked for, then cancel nothing). Windows whose one-pass sums could err by more than 1e-9 of the score
    (a centred energy below n·ε / 1e-9 of the raw one, for n taps), flat ones, and ncc and zncc scores within
    ``NEAR_ONE`` of ±1 are scored in two passes by that kernel.

    The near-flat windows of a smooth float photograph (15 000 of a 64² template turned, 8 281 taps each) took
    0.17 s in two passes, one window at a time.

    Args:
        image: [B, C, Hp, Wp] padded images (any real dtype), finite, on the CPU.
        bank: [Bk, T, C, h, w] templates (Bk 1 or B).
        mask: [Bm, Tm, Cm, h, w] weights (Bm 1 or B, Tm 1 or T, Cm 1 or C), or None (weight 1 everywhere).
        index: [n, 4] int64 rows (b, t, y, x), sorted (as ``nonzero`` lists them).
        t0: First template of the chunk that ``index`` counts from.
        geom: Strides and dilations of the windows.
        metric: A name of :data:`slidesim.kernels.numba_rescore.METRIC_CODES`.
    """
    n = len(index)
    out = np.empty(n)
    if n == 0:
        return torch.from_numpy(out)
    h, w = bank.shape[-2:]
    if mask is None:
        mask = torch.ones(1, 1, 1, h, w, dtype=torch.float64)
    used = int(index[:, 1].max()) + 1
    # float64 templates and weights (small): the kernel is compiled once per image dtype only
    pictures = bank[:, t0 : t0 + used].detach().to(torch.float64).contiguous().numpy()
    m = mask if mask.shape[1] == 1 else mask[:, t0 : t0 + used]
    m = m.detach().to(torch.float64).expand(mask.shape[0], used, *mask.shape[2:]).contiguous().numpy()  # per template
    code = METRIC_CODES[metric]
    C = image.shape[1]
    constants = np.empty((max(pictures.shape[0], m.shape[0]), used, C, 6))
    extents = np.empty((m.shape[0], used, h, 2), dtype=np.int64)
    numba_threads()
    solid = _prepare(pictures, m, code, constants, extents)
    rows = index.contiguous().numpy()
    # a new run wherever the window is not the next one along the same output row, and every _RUN_LENGTH windows
    follows = np.zeros(n, dtype=np.bool_)
    follows[1:] = (rows[1:, :3] == rows[:-1, :3]).all(axis=1) & (rows[1:, 3] == rows[:-1, 3] + 1)
    place = np.arange(n)
    along = place - np.maximum.accumulate(np.where(follows, 0, place))  # windows before this one in its run
    starts = np.flatnonzero(along % _RUN_LENGTH == 0)
    lengths = np.diff(np.append(starts, n))
    taps = C * h * w
    trust = max(CANCELLATION, taps * np.finfo(np.float64).eps / _TOLERANCE)
    doubtful = np.zeros(n, dtype=np.bool_)
    _runs(image.detach().contiguous().numpy(), pictures, m, extents, constants, solid, rows, starts, lengths,
          *geom.stride, *geom.dilation, code, trust, out, doubtful)  # fmt: skip
    scores = torch.from_numpy(out)
    if doubtful.any():
        again = torch.from_numpy(np.flatnonzero(doubtful))
        scores[again] = scores_in_place(image, bank, mask, index[again], t0, geom, metric)
    return scores


@numba.njit(parallel=True, cache=True, fastmath=_FAST)
def _runs(image, pictures, m, extents, constants, solid, rows, starts, lengths, sy, sx, dy, dx, metric, trust, out,
          doubtful):  # fmt: skip
    """out[k] = the score of window rows[k] (b, t, y, x); doubtful[k] set where it must be scored in two passes.
    One task per run of windows along an output row (starts, lengths); the centred metrics take each window's
    pixels less the one at the middle of its footprint's rows."""
    C = image.shape[1]
    h = pictures.shape[3]
    centred = metric in (CCOEFF, ZNCC)
    for task in numba.prange(starts.shape[0]):
        first, count = starts[task], lengths[task]
        b, t, y, x0 = rows[first, 0], rows[first, 1], rows[first, 2], rows[first, 3]
        bk = b if pictures.shape[0] > 1 else 0
        bm = b if m.shape[0] > 1 else 0
        bc = b if constants.shape[0] > 1 else 0
        # the middle of the rows that hold taps, and of that row's extent
        top, bottom = h, 0
        for i in range(h):
            if extents[bm, t, i, 1] > extents[bm, t, i, 0]:
                top = min(top, i)
                bottom = i + 1
        middle = (top + bottom) // 2 if bottom > top else 0
        column = (extents[bm, t, middle, 0] + extents[bm, t, middle, 1]) // 2
        sums = np.zeros((count, C, 4))
        shifts = np.zeros(count)
        for c in range(C):
            cm = c if m.shape[2] > 1 else 0
            mean = constants[bc, t, c, 5]
            if centred:
                for k in range(count):
                    shifts[k] = np.float64(image[b, c, y * sy + middle * dy, (x0 + k) * sx + column * dx])
            for i in range(h):
                j0, j1 = extents[bm, t, i, 0], extents[bm, t, i, 1]
                if j1 <= j0:
                    continue
                t_row = pictures[bk, t, c, i, j0:j1]
                w_row = m[bm, t, cm, i, j0:j1]
                picture_row = image[b, c, y * sy + i * dy]
                for k in range(count):
                    left = (x0 + k) * sx + j0 * dx
                    if dx == 1:  # a contiguous row: the sums vectorize
                        window = picture_row[left : left + j1 - j0]
                    else:
                        window = picture_row[left : left + (j1 - j0 - 1) * dx + 1 : dx]
                    _row_sums(window, shifts[k], t_row, w_row, mean, solid, metric, sums[k, c])
        for k in range(count):
            out[first + k], doubtful[first + k] = _finish(sums[k], constants[bc, t], centred, metric, trust)


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
                out[n, r, y, x], doubtful[n, r, y, x] = _finish(
                    sums[y - y0, x], constants[bc, r], centred, metric, CANCELLATION
                )


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
def _finish(sums, constants, centred, metric, trust):
    """(score, doubtful) of one window from its sums [C, 4] and its template's constants [C, 5]; a channel whose
    centred energy is at most ``trust`` times its raw one makes the window doubtful."""
    total = 0.0
    energy_t = 0.0
    energy_p = 0.0
    flat = 0  # channels whose every weighted pixel equals the shift: flat in the window, every sum exactly 0
    for c in range(sums.shape[0]):
        energy_t += constants[c, 3]
        if centred:
            raw = sums[c, 2]
            if raw == 0.0:
                flat += 1
                continue
            weight = constants[c, 0]
            mean = sums[c, 0] / weight if weight > 0.0 else 0.0
            energy = raw - 2.0 * mean * sums[c, 1] + mean * mean * constants[c, 1]
            if not energy > trust * raw:
                return 0.0, True
            energy_p += energy
            total += sums[c, 3] - mean * constants[c, 2]
        else:
            energy_p += sums[c, 2]
            total += sums[c, 3]
    if flat > 0 and metric == ZNCC:
        # flat in every channel: 0 by the flatness rule; in some: the rule asks which template channels are flat
        return 0.0, flat < sums.shape[0]
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
