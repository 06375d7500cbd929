"""numba kernels (floor L2) of sub-pixel refinement: windows resampled from cubic B-spline coefficients at shifts
and scored against a template in one pass, for a grid of shifts (:func:`grid_scores`) or for a peak's whole search
(:func:`search_peaks`).

Batched torch code (:func:`slidesim._refine.resample` and the metrics' formulas in :mod:`slidesim._refine_many`)
spends its time on dispatch when few peaks are refined: about 40 small operations per 5 × 5 grid, 1-2 ms a grid
whatever its arithmetic, so the single best match of a 512² photograph cost more in refinement than in scoring.
Here a row shift's coefficient rows are filtered once with its four spline weights, then each column shift filters
that band's columns into a window buffer, smooths it within the footprint when the search asks for it (see
:func:`slidesim._refine.smooth_within`), and scores it, with float64 sums in the order of the formulas the torch
code uses (mean first for the centred metrics). :func:`grid_scores` gives one task to each (peak, row shift): a
5 × 5 grid of a 32² template costs about 0.1 ms, of a 138² one 0.8 ms on 2 cores. :func:`search_peaks` gives one
task to each peak and runs its whole search (climbing grids, Newton steps, the vertex check): about 0.9 ms a 32²
peak.

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
    inverse_norm: torch.Tensor | None,
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
        inverse_norm: None, or [P, 1 or C, h, w] float64 (:func:`slidesim._refine.smoothing_norm` of the
            weights): each window is smoothed within the weights' footprint before it is scored, as
            :func:`slidesim._refine.smooth_within` smooths it (``side`` then holds the smoothed templates' side).
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
        _weight_totals(side, weights),
        weights.to(torch.float64).contiguous().numpy(),
        _row_extents(weights),
        _norm(inverse_norm, weights),
        METRIC_CODES[metric],
        joint,
        pixels_at_whole_positions,
        out,
    )
    return torch.from_numpy(out)


def spline_prefilter(planes: torch.Tensor) -> torch.Tensor:
    """The cubic B-spline coefficients [..., Hc, Wc] float64 of planes [..., Hc, Wc] on the CPU: the sampling
    system (1/6, 4/6, 1/6 with mirror boundaries, as :func:`slidesim._refine.prefilter` inverts it) solved along
    the columns, then the rows, by the tridiagonal (Thomas) elimination: O(n) a line where the dense inverse
    costs n² a line and n³ to form (an 870² crop: 3 against about 170 ms). The two agree to float64 round-off."""
    shape = planes.shape
    values = planes.detach().to(torch.float64).reshape(-1, *shape[-2:]).contiguous().numpy().copy()
    numba_threads()
    _prefilter_planes(values)
    return torch.from_numpy(values).reshape(shape)


@numba.njit(cache=True)
def _elimination(n):
    """The forward elimination's factors of the n-sample sampling system: (the modified super-diagonal [n], the
    pivots' reciprocals [n])."""
    upper = np.empty(n)
    inverse = np.empty(n)
    if n == 1:
        upper[0], inverse[0] = 0.0, 1.0
        return upper, inverse
    diagonal, lower = 4.0 / 6.0, 1.0 / 6.0
    inverse[0] = 1.0 / diagonal
    upper[0] = (2.0 / 6.0) * inverse[0]  # mirror boundary: the first row reads its neighbour twice
    for i in range(1, n):
        below = 2.0 / 6.0 if i == n - 1 else lower
        pivot = diagonal - below * upper[i - 1]
        inverse[i] = 1.0 / pivot
        upper[i] = lower * inverse[i]
    return upper, inverse


@numba.njit(parallel=True, cache=True)
def _prefilter_planes(values):
    """Solves the sampling system in place along axis 1, then axis 2, of values [P, H, W] float64."""
    P, H, W = values.shape
    upper_h, inverse_h = _elimination(H)
    upper_w, inverse_w = _elimination(W)
    for task in numba.prange(P * W):  # columns: swept along rows, all columns of a row at once per task block
        p, j = task // W, task % W
        _solve(values[p, :, j], upper_h, inverse_h)
    for task in numba.prange(P * H):
        p, i = task // H, task % H
        _solve(values[p, i, :], upper_w, inverse_w)


@numba.njit(inline="always")
def _solve(line, upper, inverse):
    """Thomas elimination of one line in place (see :func:`_elimination`)."""
    n = line.shape[0]
    if n == 1:
        return
    lower = 1.0 / 6.0
    line[0] = line[0] * inverse[0]
    for i in range(1, n):
        below = 2.0 / 6.0 if i == n - 1 else lower
        line[i] = (line[i] - below * line[i - 1]) * inverse[i]
    for i in range(n - 2, -1, -1):
        line[i] -= upper[i] * line[i + 1]


def _weight_totals(side: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Σ weights per template and channel [P, C] float64, summed once rather than once per window."""
    return weights.to(torch.float64).sum(dim=(-2, -1)).expand(-1, side.shape[1]).contiguous().numpy()


def _row_extents(weights: torch.Tensor) -> np.ndarray:
    """[P, h, 2] int64: per template row, the first column with weight in any channel and one past the last (0, 0
    for a row without weight). The kernels read and score only these columns (and their neighbours, for the
    smoothing): a turned template's canvas is about half empty."""
    has = (weights != 0).any(dim=1)  # [P, h, w]
    w = has.shape[-1]
    columns = torch.arange(w)
    last = torch.where(has, columns + 1, 0).amax(dim=-1)
    first = torch.where(last > 0, torch.where(has, columns, w).amin(dim=-1), 0)
    return torch.stack([first, last], dim=-1).contiguous().numpy()


def _norm(inverse_norm: torch.Tensor | None, weights: torch.Tensor) -> np.ndarray:
    """The smoothing's normalization as the kernels take it: an empty array for no smoothing."""
    if inverse_norm is None:
        return np.zeros((0, *weights.shape[1:]))
    return inverse_norm.to(torch.float64).contiguous().numpy()


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
def _grid_scores(
    coefficients, crops, index, first_y, first_x, dy, dx, side, totals, weights, extents, inverse_norm, metric, joint,
    whole_pixels, out,
):  # fmt: skip
    """The loop of :func:`grid_scores`: one task per (item, row shift)."""
    p, ny = first_y.shape
    for task in numba.prange(p * ny):
        q = task // ny
        i = task % ny
        _score_row(
            coefficients, crops, index[q], first_y[q, i], first_x[q], dy, dx, side, totals, weights, extents,
            inverse_norm, metric, joint, whole_pixels, out[q, i],
        )  # fmt: skip


@numba.njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _score_row(
    coefficients, crops, P, fy, first_x, dy, dx, side, totals, weights, extents, inverse_norm, metric, joint,
    whole_pixels, out,
):  # fmt: skip
    """Scores out[j] of the windows of crop P whose first taps lie at (fy, first_x[j]): the coefficients' rows
    that the row shift reads are filtered once with its four spline weights, then each column shift filters that
    band's columns into a window, smooths it within the footprint where ``inverse_norm`` is not empty, and scores
    it. Only the columns of each template row's extent [P, h, 2] are scored, and resampled with their neighbours
    when smoothing (the window keeps zeros elsewhere)."""
    nx = first_x.shape[0]
    C = coefficients.shape[1]
    h, w = side.shape[2], side.shape[3]
    Cw = weights.shape[1]
    centred = metric in (CCOEFF, ZNCC)
    smooth = inverse_norm.shape[0] > 0
    # the columns each row resamples: its extent, widened by the smoothing's reach to its neighbours' extents
    lo = np.zeros(h, dtype=np.int64)
    hi = np.zeros(h, dtype=np.int64)
    for a in range(h):
        first, last = extents[P, a, 0], extents[P, a, 1]
        if smooth:
            first, last = w, 0
            for near in range(max(0, a - 1), min(h, a + 2)):
                if extents[P, near, 1] > extents[P, near, 0]:
                    first = min(first, extents[P, near, 0] - 1)
                    last = max(last, extents[P, near, 1] + 1)
            first, last = max(first, 0), min(last, w)
        if last > first:
            lo[a], hi[a] = first, last
    # the columns that the column shifts read, filtered along rows once for all of them
    low = 10**9
    high = -(10**9)
    for j in range(nx):
        b = math.floor(first_x[j]) - 1
        low = min(low, b)
        high = max(high, b + 3 + (w - 1) * dx)
    band = np.empty((C, h, high - low + 1))
    by = math.floor(fy)
    ay = fy - by
    w0, w1, w2, w3 = _spline(ay)
    spread = high - low - 3 - (w - 1) * dx  # how far apart the column shifts' first columns lie
    for c in range(C):
        for a in range(h):
            if hi[a] <= lo[a]:
                continue
            r = by - 1 + a * dy
            k0, k1 = lo[a] * dx, (hi[a] - 1) * dx + 4 + spread
            # slices, so that the loops count from 0 (an index read from an array could be negative: numba would
            # wrap it around, and the loop would not vectorize)
            into = band[c, a, k0:k1]
            c0 = coefficients[P, c, r, low + k0 : low + k1]
            c1 = coefficients[P, c, r + 1, low + k0 : low + k1]
            c2 = coefficients[P, c, r + 2, low + k0 : low + k1]
            c3 = coefficients[P, c, r + 3, low + k0 : low + k1]
            for k in range(k1 - k0):
                into[k] = w0 * c0[k] + w1 * c1[k] + w2 * c2[k] + w3 * c3[k]
    window = np.zeros((C, h, w))
    rows = np.zeros((h, w)) if smooth else np.empty((0, 0))
    for j in range(nx):
        fx = first_x[j]
        bx = math.floor(fx)
        ax = fx - bx
        if whole_pixels and ay == 0.0 and ax == 0.0:
            for c in range(C):
                for a in range(h):
                    pixels = crops[P, c, by + a * dy]
                    into = window[c, a]
                    for b in range(lo[a], hi[a]):
                        into[b] = pixels[bx + b * dx]
        else:
            v0, v1, v2, v3 = _spline(ax)
            start = bx - 1 - low
            for c in range(C):
                for a in range(h):
                    row = band[c, a]
                    if dx == 1:  # contiguous taps: the loop vectorizes
                        into = window[c, a, lo[a] : hi[a]]
                        taps = row[start + lo[a] : start + hi[a] + 3]
                        for b in range(hi[a] - lo[a]):
                            into[b] = v0 * taps[b] + v1 * taps[b + 1] + v2 * taps[b + 2] + v3 * taps[b + 3]
                    else:
                        for b in range(lo[a], hi[a]):
                            k = start + b * dx
                            window[c, a, b] = v0 * row[k] + v1 * row[k + 1] + v2 * row[k + 2] + v3 * row[k + 3]
        if smooth:
            _smooth_within(window, weights, inverse_norm, P, rows, lo, hi, extents)
        # per-channel totals, then channels joined (joint) or their scores averaged
        cross_all = 0.0
        window_energy_all = 0.0
        template_energy_all = 0.0
        count_all = 0.0
        mean_score = 0.0
        for c in range(C):
            cw = c if Cw > 1 else 0
            total = totals[P, c]  # the template's weight: the same for every shift
            mean = 0.0
            if centred:
                weighted = 0.0
                for a in range(h):
                    first, last = extents[P, a, 0], extents[P, a, 1]
                    wr, xr = weights[P, cw, a, first:last], window[c, a, first:last]
                    for b in range(last - first):
                        weighted += wr[b] * xr[b]
                mean = weighted / total
            cross = 0.0
            window_energy = 0.0
            # Σ side² is summed with Σ window² in one loop of the same order: an exact copy of the template then
            # scores exactly 1 (a sum made elsewhere differs in the last bits)
            template_energy = 0.0
            # one loop per kind of metric, each without branches, so that the sums vectorize
            for a in range(h):
                first, last = extents[P, a, 0], extents[P, a, 1]
                wr, xr, sr = weights[P, cw, a, first:last], window[c, a, first:last], side[P, c, a, first:last]
                if metric <= L1_SIMILARITY:
                    for b in range(last - first):
                        cross += wr[b] * abs(xr[b] - sr[b])
                elif metric == SSD:
                    for b in range(last - first):
                        d = wr[b] * (xr[b] - sr[b])
                        cross += d * d
                else:
                    for b in range(last - first):
                        mv = wr[b] * (xr[b] - mean)
                        s = sr[b]
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
            out[j] = _finish(metric, cross_all, window_energy_all, template_energy_all, count_all)
        else:
            out[j] = mean_score / C


@numba.njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _smooth_within(window, weights, inverse_norm, P, rows, lo, hi, extents):
    """window [C, h, w] smoothed in place as :func:`slidesim._refine.smooth_within` smooths it: [1, 2, 1] / 4
    along columns then rows of weights · window, times the inverse norm; rows [h, w] is scratch. Only the columns
    of each row's extent (see :func:`_score_row`) are smoothed, from the sums of lo..hi, which hold them and their
    neighbours."""
    C, h, w = window.shape
    Cw = weights.shape[1]
    for c in range(C):
        cw = c if Cw > 1 else 0
        for a in range(h):
            # the neighbours beyond the edge weigh nothing: their row is read with weight 0 (no branch inside)
            up, up_weight = (a - 1, 0.25) if a > 0 else (a, 0.0)
            down, down_weight = (a + 1, 0.25) if a < h - 1 else (a, 0.0)
            first, last = lo[a], hi[a]
            into = rows[a, first:last]
            here_w, here_x = weights[P, cw, a, first:last], window[c, a, first:last]
            up_w, up_x = weights[P, cw, up, first:last], window[c, up, first:last]
            down_w, down_x = weights[P, cw, down, first:last], window[c, down, first:last]
            for b in range(last - first):
                into[b] = (
                    0.5 * here_w[b] * here_x[b] + up_weight * up_w[b] * up_x[b] + down_weight * down_w[b] * down_x[b]
                )
        for a in range(h):
            first, last = extents[P, a, 0], extents[P, a, 1]
            if last <= first:
                continue
            # the edge columns apart, so that the loop between them has no branch and vectorizes
            if first == 0:
                right = rows[a, 1] if w > 1 else 0.0
                window[c, a, 0] = (0.5 * rows[a, 0] + 0.25 * right) * inverse_norm[P, cw, a, 0]
            b0, b1 = max(first, 1), min(last, w - 1)
            if b1 > b0:
                into, norm, sums = window[c, a, b0:b1], inverse_norm[P, cw, a, b0:b1], rows[a, b0 - 1 : b1 + 1]
                for b in range(b1 - b0):
                    into[b] = (0.5 * sums[b + 1] + 0.25 * (sums[b] + sums[b + 2])) * norm[b]
            if last == w and w > 1:
                window[c, a, w - 1] = (0.5 * rows[a, w - 1] + 0.25 * rows[a, w - 2]) * inverse_norm[P, cw, a, w - 1]


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


def search_peaks(
    coefficients: torch.Tensor,
    crops: torch.Tensor,
    taps_y: torch.Tensor,
    taps_x: torch.Tensor,
    searching: torch.Tensor,
    dilation: tuple[int, int],
    side: torch.Tensor,
    weights: torch.Tensor,
    inverse_norm: torch.Tensor | None,
    raw_side: torch.Tensor,
    metric: str,
    joint: bool,
    higher: bool,
    search: tuple[tuple[float, ...], float, int, float],
    quadratic: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole sub-pixel search of :mod:`slidesim._refine_many` (climbing grids, Newton steps on the last one,
    the vertex kept only where it scores at least as well as the grids' best shift) for every crop, one thread per
    crop, float64 throughout; the score returned is the metric's own at the position found.

    Args:
        coefficients: [P, C, Hc, Wc] float64 B-spline coefficients of the crops.
        crops: [P, C, Hc, Wc] the crops' pixels.
        taps_y: [P] float64 crop row of each unshifted window's first tap.
        taps_x: [P] float64 crop column of each unshifted window's first tap.
        searching: [P] bool, the crops to search; the others keep shift (0, 0) and are scored there.
        dilation: Tap spacing (y, x).
        side: The templates' side that the metric's formula reads during the search, as for :func:`grid_scores`
            (of the smoothed templates where ``inverse_norm`` is given).
        weights: [P, 1 or C, h, w] float64 weights.
        inverse_norm: The search's smoothing, as for :func:`grid_scores`, or None.
        raw_side: The templates' side for the score returned (of the templates as they are).
        metric: A key of :data:`METRIC_CODES`.
        joint: Channels scored jointly (else the mean of the channels' scores).
        higher: Whether higher scores are better.
        search: (the climbing grids' steps in px, the farthest shift in px, the moves a grid may make beyond its
            edge, the Newton grid's step in px).
        quadratic: (design [25, 6], its pseudo-inverse [6, 25]) of the full quadratic fitted to a 5 × 5 grid
            (:func:`slidesim._refine.quadratic_design`).

    Returns:
        (shift y [P], shift x [P], score [P] (float64, the metric's own sign), handed back [P] bool: a score the
        metric's formula does not give (a zero energy), which the caller's search refines by the degenerate rules).
    """
    design, inverse = quadratic
    if design.shape != (25, 6):
        raise AssertionError("the search kernel is written for 5 × 5 grids")
    steps, drift, moves, newton = search
    P = len(crops)
    shifts = np.zeros((P, 2))
    scores = np.zeros(P)
    handed_back = np.zeros(P, dtype=np.bool_)
    numba_threads()
    _search(
        coefficients.contiguous().numpy(),
        crops.contiguous().numpy(),
        taps_y.to(torch.float64).contiguous().numpy(),
        taps_x.to(torch.float64).contiguous().numpy(),
        searching.contiguous().numpy(),
        *dilation,
        side.to(torch.float64).contiguous().numpy(),
        _weight_totals(side, weights),
        weights.to(torch.float64).contiguous().numpy(),
        _row_extents(weights),
        _norm(inverse_norm, weights),
        raw_side.to(torch.float64).contiguous().numpy(),
        METRIC_CODES[metric],
        joint,
        1.0 if higher else -1.0,
        np.asarray(steps, dtype=np.float64),
        float(drift),
        int(moves),
        float(newton),
        design.numpy(),
        inverse.numpy(),
        shifts,
        scores,
        handed_back,
    )
    return (
        torch.from_numpy(shifts[:, 0].copy()),
        torch.from_numpy(shifts[:, 1].copy()),
        torch.from_numpy(scores),
        torch.from_numpy(handed_back),
    )


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _search(
    coefficients, crops, taps_y, taps_x, searching, dy, dx, side, totals, weights, extents, inverse_norm, raw_side,
    metric, joint, sign, steps, drift, moves, newton, design, inverse, shifts, scores, handed_back,
):  # fmt: skip
    """The loop of :func:`search_peaks`: one task per crop."""
    for q in numba.prange(crops.shape[0]):
        table = np.empty((5, 5))
        row = np.empty(5)
        one = np.empty(1)
        at = np.empty(1)
        offsets = np.empty(5)
        y = 0.0
        x = 0.0
        last_y = np.nan
        last_x = np.nan
        last_step = np.nan
        failed = False
        if searching[q]:
            # climb: 5 × 5 grids that follow the surface while their best shift lies on an edge
            for s in range(steps.shape[0]):
                step = steps[s]
                for _ in range(moves):
                    if not (y == last_y and x == last_x and step == last_step):
                        failed |= _table(
                            coefficients, crops, q, taps_y[q] + y, taps_x[q] + x, y, x, step, drift, dy, dx, side,
                            totals, weights, extents, inverse_norm, metric, joint, sign, table, row, offsets,
                        )  # fmt: skip
                        last_y, last_x, last_step = y, x, step
                    r, c = _best(table)
                    if r == 2 and c == 2:
                        break
                    y += (r - 2) * step
                    x += (c - 2) * step
                    if 0 < r < 4 and 0 < c < 4:
                        break
            # Newton steps on a quadratic fitted to the grid newton px apart; a vertex beyond it moves the grid
            final_y, final_x = y, x
            here_y, here_x = y, x
            for _ in range(moves):
                if not (here_y == last_y and here_x == last_x and newton == last_step):
                    failed |= _table(
                        coefficients, crops, q, taps_y[q] + here_y, taps_x[q] + here_x, here_y, here_x, newton,
                        drift, dy, dx, side, totals, weights, extents, inverse_norm, metric, joint, sign, table, row,
                        offsets,
                    )  # fmt: skip
                    last_y, last_x, last_step = here_y, here_x, newton
                fitted, vy, vx = _vertex(table, design, inverse)
                if not fitted:
                    break
                if abs(vy) <= 2 and abs(vx) <= 2:
                    final_y = here_y + newton * vy
                    final_x = here_x + newton * vx
                    break
                here_y += newton * min(max(vy, -2.0), 2.0)
                here_x += newton * min(max(vx, -2.0), 2.0)
        else:
            final_y, final_x = y, x
        # the vertex only where it scores at least as well as the grids' best shift
        if final_y != y or final_x != x:
            one[0] = taps_x[q] + final_x
            _score_row(
                coefficients, crops, q, taps_y[q] + final_y, one, dy, dx, side, totals, weights, extents, inverse_norm,
                metric, joint, True, at,
            )  # fmt: skip
            vertex = at[0]
            one[0] = taps_x[q] + x
            _score_row(
                coefficients, crops, q, taps_y[q] + y, one, dy, dx, side, totals, weights, extents, inverse_norm,
                metric, joint, True, at,
            )  # fmt: skip
            if not (sign * vertex >= sign * at[0]):
                final_y, final_x = y, x
        # the metric's own score there
        one[0] = taps_x[q] + final_x
        _score_row(
            coefficients, crops, q, taps_y[q] + final_y, one, dy, dx, raw_side, totals, weights, extents,
            inverse_norm[:0], metric, joint, True, at,
        )  # fmt: skip
        score = at[0]
        failed |= np.isnan(score)
        shifts[q, 0] = final_y
        shifts[q, 1] = final_x
        scores[q] = score
        handed_back[q] = failed


@numba.njit(cache=True, error_model="numpy")
def _table(
    coefficients, crops, q, first_y, first_x, y, x, step, drift, dy, dx, side, totals, weights, extents, inverse_norm,
    metric, joint, sign, table, row, offsets,
):  # fmt: skip
    """Fills table [5, 5] with the signed scores (higher better) of the grid of shifts ``step`` apart around
    (y, x), whose centre's first tap lies at (first_y, first_x); shifts beyond ``drift`` and scores that are not
    finite are −inf. Returns whether a score was NaN (a zero energy: the degenerate rules decide)."""
    for k in range(5):
        offsets[k] = first_x + (k - 2) * step
    nan = False
    for i in range(5):
        _score_row(
            coefficients, crops, q, first_y + (i - 2) * step, offsets, dy, dx, side, totals, weights, extents,
            inverse_norm, metric, joint, False, row,
        )  # fmt: skip
        for j in range(5):
            value = sign * row[j]
            nan |= np.isnan(value)
            beyond = abs(y + (i - 2) * step) > drift or abs(x + (j - 2) * step) > drift
            table[i, j] = value if np.isfinite(value) and not beyond else -np.inf
    return nan


@numba.njit(cache=True)
def _best(table):
    """(row, column) of the best entry of a 5 × 5 table: the centre wins its ties, then the first in row order;
    the centre when every entry is −inf."""
    top = -np.inf
    for i in range(5):
        for j in range(5):
            top = max(top, table[i, j])
    if top == -np.inf or table[2, 2] == top:
        return 2, 2
    for i in range(5):
        for j in range(5):
            if table[i, j] == top:
                return i, j
    return 2, 2


@numba.njit(cache=True, error_model="numpy")
def _vertex(table, design, inverse):
    """(fitted, offset y, offset x) of the maximum of a full quadratic 1, y, x, y², x², yx fitted to the finite
    entries of a 5 × 5 table (offsets in grid steps; least squares through the normal equations where some entries
    are −inf; fitted: at least 9 entries and a maximum)."""
    v = table.reshape(25)
    finite = 0
    top = -np.inf
    for k in range(25):
        if np.isfinite(v[k]):
            finite += 1
            top = max(top, v[k])
    if finite < 9:
        return False, 0.0, 0.0
    coefficients = np.zeros(6)
    if finite == 25:
        for m in range(6):
            for k in range(25):
                coefficients[m] += inverse[m, k] * (v[k] - top)
    else:
        normal = np.zeros((6, 7))  # [DᵀD | Dᵀv] over the finite entries, solved by elimination with pivoting
        for k in range(25):
            if np.isfinite(v[k]):
                for m in range(6):
                    for n in range(6):
                        normal[m, n] += design[k, m] * design[k, n]
                    normal[m, 6] += design[k, m] * (v[k] - top)
        for m in range(6):
            pivot = m
            for n in range(m + 1, 6):
                if abs(normal[n, m]) > abs(normal[pivot, m]):
                    pivot = n
            if normal[pivot, m] == 0.0:
                return False, 0.0, 0.0
            for n in range(7):
                normal[m, n], normal[pivot, n] = normal[pivot, n], normal[m, n]
            for n in range(m + 1, 6):
                factor = normal[n, m] / normal[m, m]
                for o in range(m, 7):
                    normal[n, o] -= factor * normal[m, o]
        for m in range(5, -1, -1):
            total = normal[m, 6]
            for n in range(m + 1, 6):
                total -= normal[m, n] * coefficients[n]
            coefficients[m] = total / normal[m, m]
    gy, gx, hyy, hxx, hxy = coefficients[1], coefficients[2], coefficients[3], coefficients[4], coefficients[5]
    det = 4 * hyy * hxx - hxy * hxy
    if not (hyy < 0 and det > 0):
        return False, 0.0, 0.0
    return True, (-2 * hxx * gy + hxy * gx) / det, (hxy * gy - 2 * hyy * gx) / det
