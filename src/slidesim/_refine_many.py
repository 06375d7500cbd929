"""Sub-pixel refinement of many peaks at once (floor L6).

The search is the one :mod:`slidesim._refine` describes (5 × 5 grids of shifts 0.5, 0.125 and 1/32 px apart that
follow the score surface, then Newton steps on a quadratic fitted to the 1/32 px grid; float32 for narrow inputs
with float64 wherever round-off could move the answer), run for every peak of a call together. Refined one at a
time, a peak cost dozens of small tensor operations per grid, whose dispatch, not their arithmetic, took most of
the 4–6 ms a peak cost. Here each stage scores the grids of all the peaks still searching with a few batched
operations, so a peak costs its arithmetic. Every reduction runs along one axis of fixed length, so a peak's
answer does not depend on the peaks that share its batch.

With numba installed the batched operations still cost about 2 ms of dispatch per peak, more than the scoring they
refine; there the whole search of every peak runs in one compiled pass, a thread per peak, with float64 sums
(:func:`slidesim.kernels.numba_refine.search_peaks`): 0.9 ms for a 32² template. A single peak of a template over
96² keeps the torch search, its grids scored by numba rows of shifts on every thread; a peak whose scores need the
degenerate rules (a zero energy, a channel without weight) is handed back to the torch search.

Peaks whose crops hold NaN or ±inf, circular channels, ``channels="separate"`` and a ``memory_limit`` that cannot
hold a row of a grid of shifts at once go through the one-peak search of :func:`slidesim._refine.refine_on_data`,
which scores through the reference's formulas and agrees to round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import reference
from ._refine import (
    CLIMB_STEPS,
    DRIFT,
    FIT_NOISE,
    HALF,
    KINKED,
    MAX_MOVES,
    NEWTON_STEP,
    grid_reach,
    quadratic_design,
    quadratic_vertex,
    read_crop,
    refine_on_data,
    refinement_bytes,
    resample,
    smooth_within,
    smoothing_norm,
    spline_coefficients,
    tie_roundoff,
    with_pixels_at_whole_positions,
)
from ._validate import DEFAULT_MEMORY_LIMIT
from .kernels.area_sums import fused_statistics_available
from .metrics import resolve_metric

__all__ = ["Peak", "refine_peaks"]

_SIDE = 2 * HALF + 1  # shifts along each side of a grid
# peaks searched together at most: the batches stay in cache, and a long refinement reports its progress
MOST_PEAKS = 64
f64 = torch.float64


@dataclass(frozen=True)
class Peak:
    """One peak to refine.

    Attributes:
        image: Its image [C, H, W].
        template: Its template [C, h, w] (transformed, for banks of rotations and scales).
        mask: The template's weights [1 or C, h, w], or None.
        centre: Integer peak (y, x) of the template centre in image pixels.
    """

    image: torch.Tensor
    template: torch.Tensor
    mask: torch.Tensor | None
    centre: tuple[float, float]


def refine_peaks(
    peaks: Sequence[Peak],
    dilation: tuple[int, int],
    higher: bool,
    options: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[float, float, float]]:
    """(y, x, score) of every peak, refined as :func:`slidesim._refine.refine_on_data` refines one.

    Args:
        peaks: The peaks, with their images and templates.
        dilation: Tap spacing (y, x).
        higher: Whether higher scores are better.
        options: Metric options of the call (metric, channels, circular, padding, mode, memory_limit...).
        progress: Called with (peaks done, peaks) as batches finish.

    Returns:
        Per peak, in order: the refined centre (y, x) in image pixels and the float64 score of the window
        resampled there.
    """
    results: list[tuple[float, float, float] | None] = [None] * len(peaks)
    done = 0

    def finished(indices: Sequence[int], found: Sequence[tuple[float, float, float]]) -> None:
        nonlocal done
        for i, result in zip(indices, found, strict=True):
            results[i] = result
        done += len(indices)
        if progress is not None:
            progress(done, len(peaks))

    if progress is not None and peaks:
        progress(0, len(peaks))
    one_by_one = options.get("channels", "joint") == "separate" or bool(options.get("circular"))
    groups: dict[tuple, list[int]] = {}
    for i, peak in enumerate(peaks):
        mask_shape = None if peak.mask is None else tuple(peak.mask.shape)
        groups.setdefault((tuple(peak.template.shape), mask_shape), []).append(i)
    for members in groups.values():
        C, h, w = peaks[members[0]].template.shape
        fixed, per_shift = refinement_bytes(C, (h, w), dilation)
        limit = DEFAULT_MEMORY_LIMIT if options.get("memory_limit") is None else options["memory_limit"]
        if one_by_one or limit < fixed + _SIDE * per_shift:  # not a row of a grid at once: a shift at a time
            for i in members:
                p = peaks[i]
                finished([i], [refine_on_data(p.image, p.template, p.mask, p.centre, dilation, higher, options)])
            continue
        together = max(1, min(MOST_PEAKS, limit // (fixed + _SIDE * _SIDE * per_shift)))  # whole grids, or one peak
        for start in range(0, len(members), together):
            chunk = members[start : start + together]
            shifts = (limit - len(chunk) * fixed) // per_shift  # at once, beside the chunk's crops
            finished(chunk, _refine_chunk([peaks[i] for i in chunk], dilation, higher, options, shifts))
    return results  # type: ignore[return-value]


def _refine_chunk(
    peaks: Sequence[Peak], dilation: tuple[int, int], higher: bool, options: dict[str, Any], shifts: int
) -> list[tuple[float, float, float]]:
    """Refined (y, x, score) of peaks of one template shape, together, resampling at most ``shifts`` shifts at once
    (at least a row of a grid); a peak whose crop holds a hole alone."""
    h, w = peaks[0].template.shape[-2:]
    read = [read_crop(p.image, p.centre, (h, w), dilation, options) for p in peaks]
    whole = [bool(torch.isfinite(crop).all()) for crop, _ in read]
    out: list[tuple[float, float, float] | None] = [None] * len(peaks)
    for i, p in enumerate(peaks):
        if not whole[i]:
            out[i] = refine_on_data(p.image, p.template, p.mask, p.centre, dilation, higher, options)
    kept = [i for i in range(len(peaks)) if whole[i]]
    if kept:
        crops = torch.stack([read[i][0] for i in kept])
        surfaces = _Surfaces(
            crops,
            torch.stack([peaks[i].template.detach().cpu() for i in kept]),
            None if peaks[0].mask is None else torch.stack([peaks[i].mask.detach().cpu() for i in kept]),
            (torch.stack([read[i][1][0] for i in kept]), torch.stack([read[i][1][1] for i in kept])),
            dilation,
            options,
            higher,
            shifts,
        )
        fy, fx, score = _search(surfaces, higher)
        for n, i in enumerate(kept):
            cy, cx = peaks[i].centre
            out[i] = (cy + float(fy[n]), cx + float(fx[n]), float(score[n]))
    return out  # type: ignore[return-value]


def _search(surfaces: _Surfaces, higher: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shift y [P], shift x [P], score [P] float64 with the metric's sign) of the refined positions of every
    peak of ``surfaces``: by the numba search where it applies (the torch search takes the peaks it hands back),
    else by the batched torch search."""
    P = len(surfaces.crops)
    everyone = torch.arange(P)
    if not surfaces.search_in_kernel():
        return _torch_search(surfaces, everyone, higher)
    fy, fx, score, handed_back = surfaces.kernel_search(higher)
    if bool(handed_back.any()):
        which = everyone[handed_back]
        fy[which], fx[which], score[which] = _torch_search(surfaces, which, higher)
    return fy, fx, score


def _torch_search(
    surfaces: _Surfaces, which: torch.Tensor, higher: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_search` of peaks ``which`` [p] by batched torch operations: climbing grids, Newton steps, and the
    vertex only where it scores at least as well as the grids' best shift -> [p] each."""
    P = len(surfaces.crops)
    y = torch.zeros(P, dtype=f64)
    x = torch.zeros(P, dtype=f64)
    searching = which[~surfaces.constant()[which]]  # a constant surface keeps the integer peak
    for step in CLIMB_STEPS:
        _climb(surfaces, y, x, step, searching)
    fy, fx = _newton(surfaces, y, x, searching)
    y, x, fy, fx = y[which], x[which], fy[which], fx[which]
    moved = (fy != y) | (fx != x)
    # the vertices and, where they moved, the grids' best shifts: one resampling for both
    both = surfaces.at(torch.cat([which, which[moved]]), torch.cat([fy, y[moved]]), torch.cat([fx, x[moved]]), f64)
    score, scored = both[: len(which)], both[len(which) :]
    # the vertex only where it scores at least as well as the grids' best shift (see refine_on_data)
    worse = torch.zeros_like(moved)
    worse[moved] = ~(score[moved] >= scored)
    fy[worse], fx[worse] = y[worse], x[worse]
    # the search compared smoothed windows: the score reported is the metric's own
    score = surfaces.at(which, fy, fx, f64, raw=True)
    return fy, fx, score if higher else -score


class _Surfaces:
    """The score surfaces of P peaks of one template shape: each template against its crop resampled at shifts
    (dy, dx) of its integer peak, negated for minimized metrics (higher is better); a shift more than DRIFT from
    its peak, or without a score, is −inf.

    Args:
        crops: [P, C, Hc, Wc], float32 or float64, without holes.
        templates: [P, C, h, w].
        masks: [P, 1 or C, h, w], or None.
        taps: Crop rows [P, h] and columns [P, w] (float64) that each unshifted window samples.
        dilation: Their spacing (y, x).
        options: The call's options (metric, channels).
        higher: Whether higher scores are better.
        shifts: Shifts resampled at once at most (at least a row of a grid: large templates score their grids a few
            rows at a time).
    """

    def __init__(
        self,
        crops: torch.Tensor,
        templates: torch.Tensor,
        masks: torch.Tensor | None,
        taps: tuple[torch.Tensor, torch.Tensor],
        dilation: tuple[int, int],
        options: dict[str, Any],
        higher: bool,
        shifts: int,
    ) -> None:
        self.crops, self.templates, self.masks = crops, templates, masks
        self.taps_y, self.taps_x = taps
        self.dilation, self.shifts = dilation, max(_SIDE, shifts)
        self.metric = resolve_metric(options.get("metric", "zncc")).name
        self.joint = options.get("channels", "joint") == "joint"
        self.sign = 1.0 if higher else -1.0
        self._coefficients: dict[torch.dtype, torch.Tensor] = {}
        self._sides: dict[tuple[torch.dtype, bool], dict[str, Any]] = {}  # by (dtype, raw)
        P = len(crops)
        # one numba pass per grid where numba is installed (batched torch operations cost their dispatch); its sums
        # are float64 whatever the crops' dtype, so it reads float64 coefficients too: the float64 rechecks of
        # ties and fits, which the float32 torch path needs, then never run
        self._in_kernel = self.metric in _KERNEL_SIDE and fused_statistics_available()
        self.dtype = f64 if self._in_kernel else crops.dtype
        # the last grid of each peak: (centre y, centre x, step, float64?) and its table, for the Newton step that
        # starts on the grid the climb ended on
        self._last_key = torch.full((P, 4), math.nan, dtype=f64)
        self._last_table = torch.full((P, _SIDE, _SIDE), -math.inf, dtype=f64)

    def coefficients(self, dtype: torch.dtype) -> torch.Tensor:
        """The crops' B-spline coefficients [P, C, Hc, Wc] in ``dtype``, prefiltered once per dtype."""
        if dtype not in self._coefficients:
            self._coefficients[dtype] = spline_coefficients(self.crops, dtype)
        return self._coefficients[dtype]

    def table(
        self, index: torch.Tensor, y: torch.Tensor, x: torch.Tensor, step: float, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores [p, 5, 5] float64 of the grids of shifts ±HALF steps around (y[i], x[i]) of peaks ``index``
        [p], their rows' dy [p, 5], their columns' dx [p, 5])."""
        offsets = torch.arange(-HALF, HALF + 1, dtype=f64) * step
        ys, xs = y[:, None] + offsets, x[:, None] + offsets
        key = torch.stack([y, x, torch.full_like(y, step), torch.full_like(y, float(dtype == f64))], dim=1)
        known = (self._last_key[index] == key).all(dim=1)
        values = self._last_table[index].clone()
        fresh = ~known
        if bool(fresh.any()):
            values[fresh] = self._grids(index[fresh], ys[fresh], xs[fresh], step, dtype).to(f64)
        beyond = (ys.abs() > DRIFT)[:, :, None] | (xs.abs() > DRIFT)[:, None, :]
        values = torch.where(torch.isfinite(values) & ~beyond, values, -math.inf)
        self._last_key[index] = key
        self._last_table[index] = values
        return values, ys, xs

    def _grids(
        self, index: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, step: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """Scores [p, 5, 5] (higher better) of the grids, of as many peaks at once as ``shifts`` allows (a shift's
        arithmetic does not depend on the other peaks resampled with it)."""
        first_y = self.taps_y[index, :1] + ys  # [p, 5]: where each row shift's first tap lies
        first_x = self.taps_x[index, :1] + xs  # [p, 5]
        if self._in_kernel:
            scores, covered = self._kernel_scores(index, first_y, first_x, dtype, False)
            scores = self.sign * scores
            if not bool(covered.all()):  # the degenerate rules: the reference's formula on resampled windows
                scores[~covered] = self._resampled_grids(index[~covered], ys[~covered], xs[~covered], step, dtype)
            return scores
        return self._resampled_grids(index, ys, xs, step, dtype)

    def _resampled_grids(
        self, index: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, step: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """:meth:`_grids` by batched torch operations: windows resampled by :func:`resample`, scored by
        :meth:`_scores` -> [p, 5, 5] float64."""
        p = len(index)
        C, h, w = self.templates.shape[1:]
        first_y = self.taps_y[index, :1] + ys
        first_x = self.taps_x[index, :1] + xs
        reach = (grid_reach(step), grid_reach(step))
        coefficients = self.coefficients(dtype)
        peaks_at_once = max(1, self.shifts // (_SIDE * _SIDE))
        rows_at_once = min(_SIDE, self.shifts // _SIDE)  # a few rows of a grid when it does not fit whole
        scores = torch.empty(p, _SIDE, _SIDE, dtype=dtype)
        for a in range(0, p, peaks_at_once):
            some = slice(a, a + peaks_at_once)
            for r in range(0, _SIDE, rows_at_once):
                rows = slice(r, r + rows_at_once)
                windows = resample(
                    coefficients, first_y[some, rows], first_x[some], (h, w), self.dilation, reach, index[some]
                )
                found = self._scores(index[some], windows.reshape(len(windows), -1, C, h, w))
                scores[some, rows] = (self.sign * found).reshape(len(windows), -1, _SIDE)
        return scores.to(f64)

    def search_in_kernel(self) -> bool:
        """Whether the numba search (:func:`slidesim.kernels.numba_refine.search_peaks`) refines these peaks: a
        thread per peak, so one peak only where its grids are cheap (a large template's grids go faster as numba
        rows of grids on every thread, driven by the torch search)."""
        C, h, w = self.templates.shape[1:]
        return self._in_kernel and (len(self.crops) > 1 or C * h * w <= _ONE_PEAK_SEARCH_TAPS)

    def kernel_search(self, higher: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shift y [P], shift x [P], score [P] with the metric's sign, handed back [P] bool) of the numba search
        of every peak; a peak with a channel without weight, or a zero energy on its way, is handed back to the
        torch search (the degenerate rules)."""
        from .kernels.numba_refine import search_peaks

        full, raw = self._side(f64), self._side(f64, raw=True)
        weighted = (full["total"] > 0).reshape(len(self.crops), -1).all(dim=1)
        fy, fx, score, handed_back = search_peaks(
            self.coefficients(f64),
            self.crops,
            self.taps_y[:, 0],
            self.taps_x[:, 0],
            weighted & ~self.constant(),
            self.dilation,
            full[_KERNEL_SIDE[self.metric]],
            full["weights"],
            full["inverse_norm"],
            raw[_KERNEL_SIDE[self.metric]],
            self.metric,
            self.joint,
            higher,
            (CLIMB_STEPS, DRIFT, MAX_MOVES, NEWTON_STEP),
            quadratic_design(),
        )
        return fy, fx, score, handed_back | ~weighted

    def _kernel_scores(
        self,
        index: torch.Tensor,
        first_y: torch.Tensor,
        first_x: torch.Tensor,
        dtype: torch.dtype,
        whole: bool,
        raw: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [p, ny, nx] float64, not signed, of the windows whose first taps lie at (first_y[q, i],
        first_x[q, j]) in crop ``index[q]``, resampled from the coefficients in ``dtype`` and scored by the numba
        kernel; whether the metric's formula covers each item [p]: a channel without weight or a zero energy
        leaves the score to the degenerate rules). ``whole``: windows on pixels read the pixels; ``raw``: the
        metric's own scores, without the search's smoothing."""
        from .kernels.numba_refine import grid_scores

        full = self._side(f64, raw)
        side = full[_KERNEL_SIDE[self.metric]]
        scores = grid_scores(
            self.coefficients(dtype),
            self.crops,
            index,
            first_y,
            first_x,
            self.dilation,
            side,
            full["weights"],
            full["inverse_norm"],
            self.metric,
            self.joint,
            whole,
        )
        covered = (full["total"][index] > 0).reshape(len(index), -1).all(dim=1)
        if self.metric in ("ncc", "zncc"):
            covered &= torch.isfinite(scores).reshape(len(index), -1).all(dim=1)
        return scores, covered

    def at(
        self, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, dtype: torch.dtype, raw: bool = False
    ) -> torch.Tensor:
        """Scores [q] (float64, higher better, NaN kept) of single shifts (dy[i], dx[i]) of peaks ``index`` [q];
        ``raw``: the metric's own scores, without the search's smoothing."""
        dtype = max(dtype, self.dtype, key=lambda d: torch.finfo(d).bits)
        if self._in_kernel:
            first_y = self.taps_y[index, :1] + dy[:, None]
            first_x = self.taps_x[index, :1] + dx[:, None]
            scores, covered = self._kernel_scores(index, first_y, first_x, dtype, True, raw)
            scores = self.sign * scores.reshape(-1)
            if not bool(covered.all()):  # the degenerate rules: the reference's formula on resampled windows
                scores[~covered] = self._resampled_at(index[~covered], dy[~covered], dx[~covered], dtype, raw)
            return scores
        return self._resampled_at(index, dy, dx, dtype, raw)

    def _resampled_at(
        self, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, dtype: torch.dtype, raw: bool
    ) -> torch.Tensor:
        """:meth:`at` by batched torch operations."""
        h, w = self.templates.shape[-2:]
        coefficients = self.coefficients(dtype)
        scores = [torch.zeros(0, dtype=f64)]
        for a in range(0, len(index), self.shifts):
            some = index[a : a + self.shifts]
            positions_y = self.taps_y[some] + dy[a : a + self.shifts, None]  # [q, h]
            positions_x = self.taps_x[some] + dx[a : a + self.shifts, None]  # [q, w]
            windows = resample(
                coefficients, positions_y[:, :1], positions_x[:, :1], (h, w), self.dilation, (0, 0), some
            )[:, 0, 0]
            windows = with_pixels_at_whole_positions(windows, self.crops[some], positions_y, positions_x)
            scores.append((self.sign * self._scores(some, windows[:, None], raw)).reshape(-1).to(f64))
        return torch.cat(scores)

    def constant(self) -> torch.Tensor:
        """Which peaks [P] score the same at every shift: a template whose (centred) weighted values are all 0 has
        a score of 0 everywhere in zncc, ncc, ccoeff and ccorr (the degenerate rules; the crops hold no holes)."""
        name = {"zncc": "centred", "ccoeff": "centred", "ncc": "weighted", "ccorr": "weighted"}.get(self.metric)
        if name is None:
            return torch.zeros(len(self.crops), dtype=torch.bool)
        return (self._side(f64)[name] == 0).reshape(len(self.crops), -1).all(dim=1)

    def _side(self, dtype: torch.dtype, raw: bool = False) -> dict[str, Any]:
        """The templates' side of the quick formulas in ``dtype``, per peak: weights M [P, 1 or C, h, w] (ones
        without a mask), T, M·T and M·(T − its weighted mean) [P, C, h, w], each channel's weight [P, 1 or C, 1,
        1], and the search's smoothing (its inverse norm [P, 1 or C, h, w], or None): T smoothed within the
        footprint (:func:`slidesim._refine.smooth_within`) unless ``raw``."""
        if (dtype, raw) not in self._sides:
            templates = self.templates.to(dtype)
            P, _, h, w = templates.shape
            weights = torch.ones(P, 1, h, w, dtype=dtype) if self.masks is None else self.masks.to(dtype)
            inverse_norm = None if raw else smoothing_norm(weights)
            if inverse_norm is not None:
                templates = smooth_within(templates, weights, inverse_norm)
            total = weights.sum(dim=(-2, -1), keepdim=True)
            weighted = weights * templates
            centred = weights * (templates - weighted.sum(dim=(-2, -1), keepdim=True) / total)
            self._sides[(dtype, raw)] = {
                "template": templates,
                "weights": weights,
                "weighted": weighted,
                "centred": centred,
                "total": total,
                "inverse_norm": inverse_norm,
            }
        return self._sides[(dtype, raw)]

    def _scores(self, index: torch.Tensor, windows: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Scores [p, n] of windows [p, n, C, h, w] (n per peak ``index`` [p]) in their dtype: the metric's formula
        written for one template, or the reference's textbook formula for the peaks it does not cover (ssd_normed,
        a channel without weight, a zero energy: the degenerate rules); the windows smoothed within the footprint
        as the templates are, unless ``raw``."""
        full = self._side(windows.dtype, raw)
        if full["inverse_norm"] is not None:
            weights, inverse_norm = full["weights"][index][:, None], full["inverse_norm"][index][:, None]
            windows = smooth_within(windows, weights, inverse_norm)
        # only the entries the formula reads, gathered for these peaks (a copy of a template per window otherwise)
        names = _SIDE_READ.get(self.metric, ()) if self.masks is None else full.keys()
        side = {name: full[name][index][:, None] for name in names if name != "inverse_norm"}
        side["total"] = full["total"][index][:, None]
        scores, covered = _quick_scores(self.metric, self.joint, windows, side, self.masks is not None)
        if not bool(covered.all()):
            scores = scores.clone()
            scores[~covered] = self._reference(index[~covered], windows[~covered], full["template"])
        return scores

    def _reference(self, index: torch.Tensor, windows: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        """Scores [p, n] of windows [p, n, C, h, w] against templates [P, C, h, w] by the reference's formula
        (:func:`reference.score_windows`)."""
        p, n, C, h, w = windows.shape
        templates = templates.to(windows.dtype)[index]
        weights = torch.ones(p, 1, h, w, dtype=windows.dtype) if self.masks is None else self.masks[index]
        weights = weights.to(windows.dtype)
        scores = reference.score_windows(
            self.metric,
            windows.reshape(p * n, C, 1, 1, h, w),
            templates[:, None].expand(p, n, C, h, w).reshape(p * n, C, 1, 1, h, w),
            weights[:, None].expand(p, n, *weights.shape[1:]).reshape(p * n, weights.shape[1], 1, 1, h, w),
            None,
            self.joint,
        )
        return scores.reshape(p, n, -1).mean(dim=2)  # channels="mean": the mean of the channels' scores


def _quick_scores(
    metric: str, joint: bool, windows: torch.Tensor, side: dict[str, torch.Tensor], masked: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [p, n] of windows [p, n, C, h, w] against each peak's template side (entries [p, 1, ...]) by the
    metric's formula, whether each peak's scores are covered by it [p]); ``masked``: the templates have weights."""
    p, n = windows.shape[:2]
    weights, total = side.get("weights"), side["total"]
    covered = (total > 0).reshape(p, -1).all(dim=1)
    dims = (2, 3, 4) if joint else (3, 4)
    if not masked and metric in _UNMASKED:
        scores = _unmasked_scores(metric, joint, windows, side).reshape(p, n, -1)
    elif metric in ("sad", "mad", "l1_similarity"):
        scores = (weights * (windows - side["template"]).abs()).sum(dim=dims)
        count = total.expand(p, 1, windows.shape[2], 1, 1).sum(dim=dims)
        scores = {"sad": scores, "mad": scores / count, "l1_similarity": 1 - scores / count}[metric]
    elif metric == "ssd":
        scores = (weights * (windows - side["template"])).pow(2).sum(dim=dims)
    elif metric in ("ccorr", "ncc"):
        weighted = weights * windows
        scores = (weighted * side["weighted"]).sum(dim=dims)
        if metric == "ncc":
            energy = side["weighted"].pow(2).sum(dim=dims)
            scores = scores / (energy * weighted.pow(2).sum(dim=dims)).sqrt()
    elif metric in ("ccoeff", "zncc"):
        mean = (weights * windows).sum(dim=(3, 4), keepdim=True) / total
        centred = weights * (windows - mean)
        scores = (centred * side["centred"]).sum(dim=dims)
        if metric == "zncc":
            energy = side["centred"].pow(2).sum(dim=dims)
            scores = scores / (energy * centred.pow(2).sum(dim=dims)).sqrt()
    else:
        return windows.new_full((p, n), math.nan), torch.zeros(p, dtype=torch.bool)
    scores = scores.reshape(p, n, -1)
    if metric in ("ncc", "zncc"):
        covered &= torch.isfinite(scores).reshape(p, -1).all(dim=1)  # a zero energy: the degenerate rules
        scores = scores.clamp(-1, 1)  # beyond ±1 only by round-off
    return scores.mean(dim=2), covered  # channels="mean": the mean of the channels' scores


# the most taps (C·h·w) of a template whose single peak the numba search refines on one thread (about 1.5 ms)
_ONE_PEAK_SEARCH_TAPS = 96 * 96
# the entry of the templates' side that the numba kernel reads, per metric it scores
_KERNEL_SIDE = {
    **dict.fromkeys(("sad", "mad", "l1_similarity", "ssd"), "template"),
    **dict.fromkeys(("ccorr", "ncc"), "weighted"),
    **dict.fromkeys(("ccoeff", "zncc"), "centred"),
}
_UNMASKED = frozenset({"sad", "mad", "l1_similarity", "ssd", "ccorr", "ncc", "ccoeff", "zncc"})
# the entries of the templates' side that each metric's formula without a mask reads (besides the weights' total)
_SIDE_READ = {
    **dict.fromkeys(("sad", "mad", "l1_similarity", "ssd", "ccorr", "ncc"), ("template",)),
    **dict.fromkeys(("ccoeff", "zncc"), ("centred",)),
}


def _unmasked_scores(metric: str, joint: bool, windows: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scores [p, n] (channels "joint") or [p, n, C] ("mean", per channel) of windows [p, n, C, h, w] against
    templates without weights: the formulas of :func:`_quick_scores` without the products by ones, their sums of
    products along one axis (half the passes over the windows)."""
    p, n, C, h, w = windows.shape
    flat = windows.reshape(p, n, C, h * w)
    centred = metric in ("ccoeff", "zncc")
    template = side["centred" if centred else "template"].reshape(p, C, h * w)

    def joined(per_channel: torch.Tensor) -> torch.Tensor:  # [p, n, C] or [p, 1, C]
        return per_channel.sum(dim=2) if joint else per_channel

    if metric in ("sad", "mad", "l1_similarity", "ssd"):
        difference = flat - template[:, None]
        if metric == "ssd":
            return joined(_dot(difference, difference))
        scores = joined(difference.abs_().sum(dim=-1))
        count = h * w * (C if joint else 1)
        return {"sad": scores, "mad": scores / count, "l1_similarity": 1 - scores / count}[metric]
    if centred:
        flat = flat - flat.mean(dim=-1, keepdim=True)
    cross = joined(_dot(flat, template[:, None]))
    if metric in ("ccorr", "ccoeff"):
        return cross
    energy = joined(_dot(template, template)[:, None])
    return cross / (energy * joined(_dot(flat, flat))).sqrt()


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ a·b over the last axis. Products of batches (einsum) were faster but reduce in an order that depends on
    how many peaks share the batch; a sum along the last axis reduces each row alike."""
    return (a * b).sum(dim=-1)


def _best_shifts(
    surfaces: _Surfaces, index: torch.Tensor, values: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row [p], column [p]) of the best score of each peak's table [p, 5, 5]; the centre wins its ties (a grid
    moves only to a better shift). Float32 scores within the round-off bound of their grid's best are compared
    again in float64, so that round-off does not pick the shift."""
    p = len(index)
    flat = values.reshape(p, -1)
    centre = HALF * _SIDE + HALF
    top = flat.max(dim=1).values
    if surfaces.dtype == f64:
        candidates = flat == top[:, None]
    else:
        largest = torch.where(torch.isfinite(flat), flat.abs(), 0.0).amax(dim=1)
        bound = tie_roundoff(surfaces.metric) * torch.finfo(surfaces.dtype).eps * largest
        candidates = flat >= (top - bound)[:, None]
        several = candidates.sum(dim=1) > 1
        if bool(several.any()):
            peak, shift = (candidates & several[:, None]).nonzero().unbind(dim=1)
            exact = surfaces.at(index[peak], ys[peak, shift // _SIDE], xs[peak, shift % _SIDE], f64)
            rescored = torch.full_like(flat, -math.inf)
            rescored[peak, shift] = torch.where(torch.isfinite(exact), exact, -math.inf)
            best = (rescored == rescored.amax(dim=1, keepdim=True)) & candidates
            candidates = torch.where(several[:, None], best, candidates)
    choice = torch.where(candidates[:, centre], centre, candidates.to(torch.int8).argmax(dim=1))
    choice = torch.where(top == -math.inf, centre, choice)
    return choice // _SIDE, choice % _SIDE


def _climb(surfaces: _Surfaces, y: torch.Tensor, x: torch.Tensor, step: float, searching: torch.Tensor) -> None:
    """Moves the shifts (y [P], x [P], in place) of the peaks ``searching`` to the best of 5 × 5 grids ``step``
    apart, each grid following the surface while its best shift lies on its edge."""
    for _ in range(MAX_MOVES):
        if len(searching) == 0:
            return
        values, ys, xs = surfaces.table(searching, y[searching], x[searching], step, surfaces.dtype)
        row, col = _best_shifts(surfaces, searching, values, ys, xs)
        moved = (row != HALF) | (col != HALF)
        which = torch.arange(len(searching))
        y[searching[moved]] = ys[which, row][moved]
        x[searching[moved]] = xs[which, col][moved]
        inner = (row > 0) & (row < 2 * HALF) & (col > 0) & (col < 2 * HALF)
        searching = searching[moved & ~inner]


def _newton(
    surfaces: _Surfaces, y: torch.Tensor, x: torch.Tensor, searching: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton steps from shifts (y [P], x [P]): the vertex of a full quadratic fitted to each peak's 5 × 5 grid
    1/32 px apart; a vertex beyond the grid moves the grid along the ridge. A fit whose residuals are round-off
    rather than the surface is made again on float64 scores. A peak without a fit that has a maximum within its
    grid, or not among ``searching``, keeps (y, x)."""
    step = NEWTON_STEP
    final_y, final_x = y.clone(), x.clone()
    here_y, here_x = y.clone(), x.clone()
    for _ in range(MAX_MOVES):
        if len(searching) == 0:
            break
        values, _, _ = surfaces.table(searching, here_y[searching], here_x[searching], step, surfaces.dtype)
        vy, vx, noisy, fitted = _vertices(values)
        if surfaces.dtype != f64:
            again = ~fitted | (noisy & (surfaces.metric not in KINKED))
            if bool(again.any()):
                which = searching[again]
                wide, _, _ = surfaces.table(which, here_y[which], here_x[which], step, f64)
                vy[again], vx[again], _, fitted[again] = _vertices(wide)
        inside = fitted & (vy.abs() <= HALF) & (vx.abs() <= HALF)
        done = searching[inside]
        final_y[done] = here_y[done] + step * vy[inside]
        final_x[done] = here_x[done] + step * vx[inside]
        moving = fitted & ~inside
        which = searching[moving]
        here_y[which] += step * vy[moving].clamp(-HALF, HALF)
        here_x[which] += step * vx[moving].clamp(-HALF, HALF)
        searching = which
    return final_y, final_x


def _vertices(tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(offset y [p], offset x [p], noisy [p], fitted [p]) of the maxima of full 2-D quadratics fitted to tables
    [p, 5, 5] as :func:`slidesim._refine.quadratic_vertex` fits one (fitted: the fit has a maximum)."""
    p = len(tables)
    v = tables.reshape(p, -1)
    vy, vx = torch.zeros(p, dtype=f64), torch.zeros(p, dtype=f64)
    noisy, fitted = torch.zeros(p, dtype=torch.bool), torch.zeros(p, dtype=torch.bool)
    complete = torch.isfinite(v).all(dim=1)
    for i in (~complete).nonzero()[:, 0].tolist():  # tables with shifts beyond the drift: least squares, one by one
        fit = quadratic_vertex(tables[i])
        if fit is not None:
            vy[i], vx[i], noisy[i], fitted[i] = fit[0], fit[1], fit[2], True
    if not bool(complete.any()):
        return vy, vx, noisy, fitted
    design, inverse = quadratic_design()
    full = v[complete] - v[complete].amax(dim=1, keepdim=True)
    coefficients = full @ inverse.T  # [k, 6]
    residual = (coefficients @ design.T - full).pow(2).mean(dim=1).sqrt()
    _, gy, gx, hyy, hxx, hxy = coefficients.unbind(dim=1)
    det = 4 * hyy * hxx - hxy * hxy
    has_maximum = (hyy < 0) & (det > 0)
    safe = torch.where(has_maximum, det, 1.0)
    vy[complete] = torch.where(has_maximum, (-2 * hxx * gy + hxy * gx) / safe, 0.0)
    vx[complete] = torch.where(has_maximum, (hxy * gy - 2 * hyy * gx) / safe, 0.0)
    noisy[complete] = ~(residual <= FIT_NOISE * -full.amin(dim=1))
    fitted[complete] = has_maximum
    return vy, vx, noisy, fitted
