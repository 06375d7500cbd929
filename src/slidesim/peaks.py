"""Peaks of score maps (floor L6): the k best positions per image and template, with suppression and sub-pixel
offsets.

A peak is a position whose score is the best within a square neighbourhood (at least 3 × 3): suppression keeps
the best of any two peaks closer than ``min_distance`` (Chebyshev distance, the larger of the row and column
offsets, in score-map pixels; equal scores go to the earlier position in row-major order). Non-finite scores are
never peaks. Sub-pixel offsets come from the image data when the images and templates are passed (as in
:func:`slidesim.match`), which a quadratic fitted to the score map cannot match where the integer peak sits on the
wrong pixel; from the score map alone otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_bool, check_int, check_threshold
from ._refine import bank_member
from ._refine_many import Peak, refine_peaks
from ._threads import for_calls
from ._types import ArrayLike
from ._validate import canonicalize, window_origin, with_defaults
from .errors import SlidesimTypeError, SlidesimValueError
from .metrics import METRICS, resolve_metric

__all__ = ["Peaks", "find_peaks"]


@dataclass(frozen=True)
class Peaks:
    """Peaks of a score map, best first within each (image, template).

    Attributes:
        batch: Image index of each peak [N] (int64).
        template: Template index [N] (int64).
        y: Row in score-map pixels [N] (float; fractional with sub-pixel offsets). Row y of a
            :func:`slidesim.similarity` map scores the window whose top-left pixel is image row
            y · stride − pad_top: the window's top row itself in mode "valid" with stride 1, as OpenCV's
            ``matchTemplate`` maps read. (:func:`slidesim.match` gives image-pixel centres and boxes instead.)
        x: Column in score-map pixels [N]: the window's left column x · stride − pad_left.
        score: Score at the peak [N] (the fitted surface's value with sub-pixel offsets).

    All fields are numpy arrays for numpy scores, tensors on the scores' device otherwise.
    """

    batch: ArrayLike
    template: ArrayLike
    y: ArrayLike
    x: ArrayLike
    score: ArrayLike

    def __len__(self) -> int:
        return len(self.batch)


_MINIMIZED = ", ".join(name for name, spec in METRICS.items() if not spec.higher_is_better)


def direction(higher_is_better: object, metric: object) -> bool:
    """Whether larger scores are better, from ``metric`` or ``higher_is_better``: one of them is required (a score
    map does not say which way it points, and the wrong way returns the worst positions), and both must agree."""
    if higher_is_better is None and metric is None:
        raise SlidesimTypeError(
            "`find_peaks` needs to know which scores are best: pass `metric` (the metric that produced the scores) "
            "or `higher_is_better` (True for maxima, False for minima); got neither. "
            f"{_MINIMIZED} are minimized, the others maximized: for example "
            "find_peaks(scores, metric='ssd') or find_peaks(scores, higher_is_better=False)."
        )
    if higher_is_better is not None and not isinstance(higher_is_better, (bool, np.bool_)):
        raise SlidesimTypeError(f"`higher_is_better` must be True, False or None; got {higher_is_better!r}.")
    if metric is None:
        return bool(higher_is_better)
    spec = resolve_metric(metric)
    if higher_is_better is not None and bool(higher_is_better) != spec.higher_is_better:
        best = "highest" if spec.higher_is_better else "lowest"
        raise SlidesimValueError(
            f"`higher_is_better={higher_is_better}` contradicts `metric={metric!r}`, whose best scores are the "
            f"{best}; pass `metric` alone."
        )
    return spec.higher_is_better


def _as_maps(scores: object) -> tuple[torch.Tensor, bool, bool]:
    """(maps [B, T, H, W], numpy_out, two_d) from scores [H, W], [T, H, W]... as similarity returns them."""
    numpy_out = isinstance(scores, np.ndarray)
    if numpy_out:
        if scores.dtype.kind not in "fiu":
            raise SlidesimTypeError(f"`scores` must hold real numbers; got numpy dtype {scores.dtype}.")
        maps = torch.from_numpy(np.ascontiguousarray(scores))
    elif isinstance(scores, torch.Tensor):
        if scores.is_complex() or scores.dtype == torch.bool:
            raise SlidesimTypeError(f"`scores` must hold real numbers; got {scores.dtype}.")
        maps = scores.detach()
    else:
        raise SlidesimTypeError(f"`scores` must be a numpy array or a torch tensor; got {type(scores).__name__}.")
    if maps.numel() == 0:
        raise SlidesimValueError(
            f"`scores` must hold at least one score; got shape {tuple(maps.shape)}. Pass the maps similarity "
            "returned (they are never empty)."
        )
    if maps.ndim == 2:
        return maps[None, None], numpy_out, True
    if maps.ndim != 4:
        raise SlidesimValueError(
            f"`scores` must be [H', W'] or [B, T, H', W'] (as similarity returns them); got shape {tuple(maps.shape)}."
        )
    return maps, numpy_out, False


@for_calls
def find_peaks(
    scores: ArrayLike,
    *,
    k: int = 1,
    min_distance: int | None = None,
    threshold: float | None = None,
    exclude_border: int = 0,
    subpixel: bool = True,
    higher_is_better: bool | None = None,
    metric: str | int | None = None,
    images: ArrayLike | None = None,
    templates: ArrayLike | None = None,
    **options: Any,
) -> Peaks:
    """The k best peaks of every score map, per image and per template.

    Which scores are best is not in the map: give ``metric`` (the metric that produced it) or ``higher_is_better``.

    Args:
        scores: Maps [B, T, H', W'] or [H', W'], as :func:`slidesim.similarity` returns them.
        k: Peaks per image and template (fewer when fewer exist).
        min_distance: Two peaks closer than this (Chebyshev distance in map pixels) keep only the better one.
            None or 1: every local maximum (3 × 3) counts.
        threshold: Keep peaks at least this good: scores >= threshold, or <= threshold where lower is better.
        exclude_border: Ignore peaks within this many pixels of the map's edges.
        subpixel: Sub-pixel positions: refined on the data when ``images`` and ``templates`` are given (as
            :func:`slidesim.match` does), otherwise the vertex of a quadratic fitted to the 3 × 3 neighbourhood.
        higher_is_better: Whether peaks are maxima (True) or minima (False). Required unless ``metric`` is given.
        metric: The metric that produced the scores (sad, mad, ssd and ssd_normed are minima, the others maxima).
            Required unless ``higher_is_better`` is given, and always with ``images`` (refinement scores with it).
        images: The images the scores came from, for refinement on the data.
        templates: Their templates.
        **options: The other options of the :func:`slidesim.similarity` call that produced the scores (stride,
            mode, mask, channels_last...), for refinement on the data.

    Returns:
        :class:`Peaks` ordered by image, then template, then best first (equal scores: the earlier position in
        row-major order), in score-map pixels: the top-left corner of the window in mode "valid" with stride 1
        (see :class:`Peaks`), where :func:`slidesim.match` gives the centre, dilation · (h − 1) / 2 further down.

    Raises:
        SlidesimTypeError: Neither ``metric`` nor ``higher_is_better`` given (or no ``metric`` with ``images``);
            scores not an array of real numbers; k, min_distance or exclude_border not ints; subpixel or
            higher_is_better not a bool; threshold not a number.
        SlidesimValueError: Empty scores or scores of another rank; k or min_distance below 1, exclude_border
            below 0; a NaN threshold; an unknown metric, or one that contradicts ``higher_is_better``.

    Cost:
        A few passes over the maps in their own dtype, then linear in the candidates (up to the logs of a sort),
        whatever ``k``: with a threshold, only the rows where some score passes are searched; without one, the
        window maxima take O(log min_distance) passes. Candidates tied on plateaus are suppressed in vectorized
        rounds (about one per cell of min_distance pixels across the plateau). Refinement on the data costs a
        few milliseconds per peak (it scores about a hundred resampled windows); the quadratic fit is vectorized.

    Examples:
        >>> import numpy as np, slidesim
        >>> scores = np.zeros((1, 1, 20, 20), np.float32)
        >>> scores[0, 0, 4, 5], scores[0, 0, 12, 15], scores[0, 0, 13, 15] = 0.9, 0.8, 0.7
        >>> peaks = slidesim.find_peaks(scores, k=3, threshold=0.5, subpixel=False, metric="zncc")
        >>> [(int(y), int(x), round(float(s), 2)) for y, x, s in zip(peaks.y, peaks.x, peaks.score)]
        [(4, 5, 0.9), (12, 15, 0.8)]
        >>> len(slidesim.find_peaks(scores, k=3, threshold=0.5, min_distance=3, higher_is_better=True))
        2
        >>> distances = 1 - scores  # ssd, sad...: the best positions are the lowest scores
        >>> peaks = slidesim.find_peaks(distances, k=1, subpixel=False, metric="ssd")
        >>> int(peaks.y[0]), int(peaks.x[0])
        (4, 5)
    """
    maps, numpy_out, _ = _as_maps(scores)
    k = check_int("k", k, 1)
    distance = 1 if min_distance is None else check_int("min_distance", min_distance, 1)
    border = check_int("exclude_border", exclude_border, 0)
    threshold = check_threshold(threshold)
    subpixel = check_bool("subpixel", subpixel)
    higher = direction(higher_is_better, metric)
    _check_data(images, templates, metric)
    table = locate_peaks(maps, k, distance, threshold, border, higher)
    batch, template, y, x = table.T
    values = maps[batch, template, y, x].to(torch.float64)
    fy, fx = y.to(torch.float64), x.to(torch.float64)
    if subpixel and len(table) and images is not None:
        fy, fx, values = _refined_on_data(table.tolist(), maps, metric, images, templates, options)
    elif subpixel and len(table):
        flat = maps.reshape(-1, *maps.shape[-2:])
        fy, fx, values = surface_offsets(flat, batch * maps.shape[1] + template, y, x, higher)
    return _package(batch, template, fy, fx, values, maps, numpy_out)


def _check_data(images: object, templates: object, metric: object) -> None:
    """Refinement on the data needs the images, their templates and the metric to score them with."""
    if images is None and templates is None:
        return
    if images is None or templates is None:
        given, missing = ("images", "templates") if templates is None else ("templates", "images")
        raise SlidesimValueError(
            f"`{missing}` must be given with `{given}` to refine peaks on the data; pass both, or neither for the "
            "quadratic fit of the map."
        )
    if metric is None:
        raise SlidesimTypeError(
            "`metric` must be given with `images`: refinement on the data scores resampled windows with it; pass "
            "the metric of the similarity call, for example metric='zncc'."
        )


def _refined_on_data(
    found: list[list[int]], maps: torch.Tensor, metric: str, images, templates, options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks (b, t, y, x) refined on the data, back in score-map coordinates: (y, x, score)."""
    call = with_defaults({**options, "metric": metric})
    canon = canonicalize(images, templates, **call)
    expected = (canon.image_shape[0], canon.templates.shape[1], canon.problem.out_height, canon.problem.out_width)
    if tuple(maps.shape) != expected:
        raise SlidesimValueError(
            f"`scores` of shape {tuple(maps.shape)} did not come from these images and templates, whose scores "
            f"are {expected}; pass the same options (metric, stride, mode...) as to similarity."
        )
    (sy, sx), (oy, ox) = canon.stride, window_origin(canon)
    peaks = []
    for b, t, y, x in found:
        template, weights = bank_member(canon.templates, canon.mask, b, t)
        peaks.append(Peak(canon.images[b], template, weights, (y * sy + oy, x * sx + ox)))
    refined = refine_peaks(peaks, canon.dilation, canon.spec.higher_is_better, call)
    cy, cx, values = (torch.tensor(column, dtype=torch.float64) for column in zip(*refined, strict=True))
    return (cy - oy) / sy, (cx - ox) / sx, values


def _package(batch, template, y, x, score, maps: torch.Tensor, numpy_out: bool) -> Peaks:
    dtype = maps.dtype if maps.is_floating_point() else torch.float64
    fields = (batch, template, y.to(torch.float64), x.to(torch.float64), score.to(dtype))
    if numpy_out:
        return Peaks(*(f.cpu().numpy() for f in fields))
    return Peaks(*(f.to(maps.device) for f in fields))


_TILED_SHARE = 4  # positions passing a threshold are searched alone when at most 1/_TILED_SHARE of the map
_ROWS_SHARE = 2  # ... and when their rows are at most 1/_ROWS_SHARE of the map's rows, else a dense search wins


def locate_peaks(
    maps: torch.Tensor, k: int, min_distance: int, threshold: float | None, border: int, higher: bool
) -> torch.Tensor:
    """Integer peaks of maps [B, T, H, W] as rows (b, t, y, x) [N, 4] int64 on the CPU, best first per (b, t),
    equal scores in row-major order.

    A peak is a local maximum of the ranking key (:func:`ranking_key`) over a (2r + 1)² window,
    r = max(1, min_distance − 1); of two peaks closer than min_distance the first in that order suppresses the
    other (greedy, :func:`suppress_points`).

    Cost: each row's best score rules out the rows where nothing passes the threshold, in the map's own dtype;
    when few rows are left, only they are searched for window maxima. Otherwise (no threshold, or one that most
    of the map passes) the window maxima come from a few passes over the map, O(log r) whatever the radius.
    Sorting and suppression then work on the candidates alone: linear in them (up to a log), never in k or in
    the map.
    """
    B, T, H, W = maps.shape
    if 2 * border >= min(H, W):  # the border covers every position
        return torch.zeros((0, 4), dtype=torch.int64)
    radius = max(1, min(min_distance - 1, max(H, W)))  # a window wider than the map sees no more of it
    core = maps.reshape(B * T, H, W)[:, border : H - border, border : W - border]
    work = core.to(_exact_dtype(core.dtype))  # a view for float32 and float64 maps
    lo, hi = _passing_range(work.dtype, threshold, higher)
    if k <= _FEW_PEAKS:
        found = _first_of_few(work, lo, hi, radius, higher, k, min_distance)
        if found is not None:
            group, y, x = found
            return torch.stack([group // T, group % T, y + border, x + border], dim=1)
    group, y, x, value = _candidates(work, lo, hi, radius, higher, thresholded=threshold is not None)
    key = value if higher else -value
    order = torch.argsort(key, descending=True, stable=True)  # candidates come in row-major order: ties keep it
    order = order[torch.argsort(group[order], stable=True)]
    group, y, x = group[order].cpu(), y[order].cpu() + border, x[order].cpu() + border
    kept = suppress_points(group, y, x, k, min_distance)
    group, y, x = group[kept], y[kept], x[kept]
    return torch.stack([group // T, group % T, y, x], dim=1)


_FEW_PEAKS = 16  # k up to which the peaks are looked for among each map's best scores first
_BEST_FIRST = (256, 64)  # scores per map looked at first: 256 + 64 per peak asked for
_MOST_BEST = 4096  # ... growing eightfold while the peaks are not settled, up to this many
_PAIRS_AT_ONCE = 2**22  # pairs of best scores compared at once (a few tens of MB)


def _first_of_few(
    work: torch.Tensor, lo: float, hi: float, radius: int, higher: bool, k: int, min_distance: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`locate_peaks`'s first k (at most _FEW_PEAKS) peaks of maps work [G, H, W] -> (map index, row,
    column) [N], best first per map, or None where the window maxima of the whole maps cost less: from the
    blocks' bests (:func:`_first_of_blocks`) when min_distance makes blocks worth it, then from the best scores
    (:func:`_first_of_the_best`) for the maps still open."""
    if k == 1:
        found = _first_best(work, lo, hi, higher)
        if found is not None:
            return found
    if k == 1 or min_distance < _BLOCKS_FROM or radius + 1 != min_distance:
        return _first_of_the_best(work, lo, hi, radius, higher, k, min_distance)
    group, y, x, still_open = _first_of_blocks(work, lo, hi, higher, k, min_distance)
    if not bool(still_open.any()):
        return group, y, x
    maps = still_open.nonzero().squeeze(1)
    rest = _first_of_the_best(work[maps], lo, hi, radius, higher, k, min_distance)
    if rest is None:
        return None
    group, y, x = torch.cat([group, maps[rest[0]]]), torch.cat([y, rest[1]]), torch.cat([x, rest[2]])
    order = torch.argsort(group, stable=True)  # by map, best first within each
    return group[order], y[order], x[order]


def _first_best(
    work: torch.Tensor, lo: float, hi: float, higher: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The one peak (k = 1) of each map of work [G, H, W]: its first best score in row-major order -> (map index,
    row, column) [N], maps where nothing passes left out; None where a map holds NaN or a score beyond the far end
    of [lo, hi] (±inf), which the ranking key must take out first.

    The best score of each row (one reduction, the cheapest pass over the maps), then the first row that holds
    the map's best, then its first column there. The best score passes the threshold or nothing does."""
    rows = work.amax(dim=2) if higher else work.amin(dim=2)  # [G, H], NaN propagates
    best = rows.amax(dim=1) if higher else rows.amin(dim=1)
    if not bool((best <= hi).all() if higher else (best >= lo).all()):  # NaN fails too
        return None
    group = ((best >= lo) if higher else (best <= hi)).nonzero().squeeze(1)
    y = (rows[group] == best[group, None]).to(torch.int8).argmax(dim=1)  # the first row holding the best
    x = (work[group, y] == best[group, None]).to(torch.int8).argmax(dim=1)
    return group, y, x


def _first_of_the_best(
    work: torch.Tensor, lo: float, hi: float, radius: int, higher: bool, k: int, min_distance: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`locate_peaks`'s first k peaks of maps work [G, H, W] (in [lo, hi]) found among each map's M best
    scores alone -> (map index, row, column) [N], best first per map; None when those do not settle them.

    A score s above the M-th best v of its map is a local maximum exactly when no score within its window beats
    it, and any that does is above v too: the M best decide, pairwise. Every candidate above v is among them, so
    their greedy suppression, in order, gives the first peaks of the map exactly, as long as k of them survive;
    otherwise (plateaus, many peaks of nearly equal scores) M grows eightfold, up to _MOST_BEST. Flat maps have
    their peaks at known places (:func:`_first_of_flat`). A selection and
    a sort of the M best per map, where the window maxima of the whole map take O(log radius) passes over it and
    a sort of all its local maxima (8 maps of 2001² with k = 1 took 3.9 s, as long as their matching). With k = 1
    the peak is the first best score in row-major order, even on a plateau.
    """
    G, H, W = work.shape
    scores = work.reshape(G, H * W)
    low, high = scores.amin(dim=1), scores.amax(dim=1)  # NaN reaches both (two reductions beat one aminmax)
    if bool(((low >= lo) & (high <= hi)).all()):  # every score passes (no threshold, nothing missing): one pass
        key = scores if higher else scores.neg()
        passing = torch.full((G,), H * W)
        flat = low == high
    else:
        key = torch.where((scores >= lo) & (scores <= hi), scores if higher else -scores, -torch.inf)
        passing = (key > -torch.inf).sum(dim=1)
        flat = (key.amin(dim=1) == key.amax(dim=1)) & (passing > 0)  # every score equal, and a peak
    if k == 1:  # the best score is a local maximum, and the first of equal ones in row-major order is the peak
        best, index = key.max(dim=1)  # the first of the maximal values
        group = (best > -torch.inf).nonzero().squeeze(1)
        return group, index[group] // W, index[group] % W
    flat_peaks = _first_of_flat(flat, H, W, k, min_distance)
    M = min(H * W, _BEST_FIRST[0] + _BEST_FIRST[1] * k)
    while True:
        values, index = top_scores(key, M)  # [G, M]
        whole = passing <= M  # every passing score of the map is among the M: all of them count
        floor = torch.where(whole[:, None], -torch.inf, values[:, -1:])
        index, order = index.sort(dim=1)  # row-major: equal scores keep locate_peaks's order
        values = values.gather(1, order)
        y, x = index // W, index % W
        beaten = torch.cat(
            [
                _beaten_within(values[g : g + chunk], y[g : g + chunk], x[g : g + chunk], radius)
                for g, chunk in _chunks(G, max(1, _PAIRS_AT_ONCE // (M * M)))
            ]
        )
        candidate = (values > floor) & ~beaten & ~flat[:, None]
        ranked = torch.argsort(torch.where(candidate, values, -torch.inf), dim=1, descending=True, stable=True)
        taken = torch.arange(M)[None, :] < candidate.sum(dim=1, keepdim=True)  # the candidates, best first
        group = torch.arange(G)[:, None].expand(G, M)[taken]
        cy, cx = y.gather(1, ranked)[taken], x.gather(1, ranked)[taken]
        kept = suppress_points(group, cy, cx, k, min_distance)
        settled = (torch.bincount(group[kept], minlength=G) >= k) | whole | flat
        if bool(settled.all()):
            group, cy, cx = (torch.cat([a[kept], b]) for a, b in zip((group, cy, cx), flat_peaks, strict=True))
            order = torch.argsort(group, stable=True)  # by map, best first within each (flat maps: row-major)
            return group[order], cy[order], cx[order]
        M = min(8 * M, H * W)
        if M > _MOST_BEST:  # too many to compare pairwise: the rows that hold them are searched instead
            done = settled[group] & kept  # the maps settled here keep these peaks
            found = [(group[done], cy[done], cx[done]), flat_peaks]
            for g in (~settled).nonzero().squeeze(1).tolist():
                one = _first_by_rows(work, key, g, M, radius, higher, k, min_distance, (lo, hi))
                if one is None:
                    return None  # most of a map: the window maxima of the whole map cost less
                found.append(one)
            group, cy, cx = (torch.cat(column) for column in zip(*found, strict=True))
            order = torch.argsort(group, stable=True)
            return group[order], cy[order], cx[order]


_BLOCKS_FROM = 4  # min_distance from which few peaks are looked for among the best of blocks first
_BLOCKS_FIRST = (16, 8)  # blocks per map looked at first: 16 + 8 per peak asked for, growing fourfold
_BLOCK_WINDOWS = 4  # ... while their peaks' windows together are at most a 1/_BLOCK_WINDOWS share of the maps


def _first_of_blocks(
    work: torch.Tensor, lo: float, hi: float, higher: bool, k: int, min_distance: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`locate_peaks`'s first k peaks of maps work [G, H, W] (passing [lo, hi]; window radius
    min_distance − 1) from the best score of each block of min_distance² positions -> (map index, row, column)
    [N], best first per map, and the maps left open (bool [G]: ties within a block, too many blocks), whose
    peaks are not among them.

    Every position of a block lies within the window of every other, so a peak is the best of its block: one
    reduction over the maps (where :func:`_first_of_the_best` selects the M best scores, and on smooth maps M
    grows, as a broad peak's slopes hold most of them) and a selection among the blocks' bests give every
    candidate above the L-th best block; their windows, gathered alone, decide which are peaks. As in
    :func:`_first_of_the_best`, their greedy suppression in order gives the first peaks exactly when k of them
    survive. Flat maps have their peaks at known places (:func:`_first_of_flat`).
    """
    G, H, W = work.shape
    side = min_distance
    best = _block_best(work, side, lo, hi, higher)  # [G, Hb, Wb], larger is better, -inf where nothing passes
    blocks = best.shape[1] * best.shape[2]
    L = min(blocks, _BLOCKS_FIRST[0] + _BLOCKS_FIRST[1] * k)
    growing = torch.ones(G, dtype=torch.bool)  # maps still searched here
    handed = torch.zeros(G, dtype=torch.bool)  # maps left to the other searches
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def read(at: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _key_at(work, at, y, x, lo, hi, higher)

    while bool(growing.any()):
        if G * L * (2 * side - 1) ** 2 > work.numel() // _BLOCK_WINDOWS:
            handed |= growing  # too many windows to gather: the other searches cost less
            break
        maps = growing.nonzero().squeeze(1)
        top = top_blocks(best, maps, L, (side, side), (0, 0), read, read)
        if bool(top.tied.any()):
            flat = torch.zeros(G, dtype=torch.bool)
            flat[maps[top.tied]] = _flat_maps(work, maps[top.tied], lo, hi)
            found.append(_first_of_flat(flat, H, W, k, min_distance))
            handed[maps[top.tied]] = ~flat[maps[top.tied]]
            growing[maps[top.tied]] = False
        group, cy, cx, _ = top.candidates(maps, W)
        kept = suppress_points(group, cy, cx, k, min_distance)
        settled = (torch.bincount(group[kept], minlength=G) >= k) | (top.whole & growing)
        done = settled[group] & kept
        found.append((group[done], cy[done], cx[done]))
        growing &= ~settled
        L = min(blocks, 4 * L)
    if not found:
        return (torch.zeros(0, dtype=torch.int64),) * 3 + (handed,)
    group, cy, cx = (torch.cat(column) for column in zip(*found, strict=True))
    order = torch.argsort(group, stable=True)  # by map, best first within each (flat maps: row-major)
    return group[order], cy[order], cx[order], handed


@dataclass(frozen=True)
class TopBlocks:
    """The L best blocks of some maps, each block's first best position, and which of those are peaks.

    Attributes:
        values: The blocks' bests [g, L], best first.
        y, x: Their first best positions in row-major order [g, L].
        candidate: Which are candidates (the best of their window) above the L-th best block [g, L]: with no tie,
            every candidate of the map above that floor is among them.
        tied: Maps [g] where positions tie within a block (which of them is a candidate depends on the others)
            or the L best blocks tie at the top; their candidates are not given.
        whole: Whether the L blocks are all of them (the floor is then −inf).
    """

    values: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    candidate: torch.Tensor
    tied: torch.Tensor
    whole: bool

    def candidates(
        self, maps: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(map index, row, column, key) [N] of the candidates, by map, best first, ties in row-major order
        (``maps`` [g]: the index of each row; ``width``: the row length positions are ordered by)."""
        group = maps[:, None].expand(-1, self.values.shape[1])[self.candidate]
        y, x, value = self.y[self.candidate], self.x[self.candidate], self.values[self.candidate]
        order = torch.argsort(y * width + x, stable=True)  # row-major, then best first, then by map
        order = order[torch.argsort(value[order], descending=True, stable=True)]
        order = order[torch.argsort(group[order], stable=True)]
        return group[order], y[order], x[order], value[order]


def top_blocks(
    best: torch.Tensor,
    maps: torch.Tensor,
    L: int,
    sides: tuple[int, int],
    origin: tuple[int, int],
    read_core: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    read: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> TopBlocks:
    """The L best of the blocks of maps ``maps`` [g] and their candidates.

    Args:
        best: The best key of each block [G, Hb, Wb] (−inf where nothing passes); block (i, j) covers rows
            origin[0] + i·sides[0] onwards and columns origin[1] + j·sides[1] onwards.
        maps: Which maps to look at [g].
        L: Blocks per map.
        sides: The blocks' side (rows, columns): the window radius plus one along each, so that a block lies
            within the window of each of its positions and a candidate is the best of its block.
        origin: The first block's top-left position.
        read_core: The ranking key at positions (maps, rows, columns) broadcast together, −inf outside the
            blocks' area (a block's positions beyond it never count).
        read: The same, with every position a window may reach (−inf outside the maps).
    """
    (sy, sx), Wb = sides, best.shape[2]
    values, index = best.reshape(best.shape[0], -1)[maps].topk(L, dim=1)  # [g, L]
    whole = best.shape[1] * Wb == L
    floor = torch.full_like(values[:, -1:], -torch.inf) if whole else values[:, -1:]
    top, left = origin[0] + index // Wb * sy, origin[1] + index % Wb * sx
    at = maps[:, None, None, None]
    rows, cols = torch.arange(sy), torch.arange(sx)
    block = read_core(at, top[..., None, None] + rows[:, None], left[..., None, None] + cols).reshape(len(maps), L, -1)
    first = block.argmax(dim=2)  # the first best position in row-major order
    y, x = top + first // sx, left + first % sx
    above = values > floor  # every candidate above the floor is the best of one of these blocks
    tied = (((block == values[..., None]).sum(dim=2) > 1) & above).any(dim=1) | (values[:, 0] == floor[:, 0])
    reach_y, reach_x = torch.arange(-(sy - 1), sy), torch.arange(-(sx - 1), sx)
    window = read(at, y[..., None, None] + reach_y[:, None], x[..., None, None] + reach_x)
    beaten = (window > values[..., None, None]).flatten(2).any(dim=2)
    return TopBlocks(values, y, x, above & ~beaten & ~tied[:, None], tied, whole)


def core_candidates(
    maps: torch.Tensor,
    threshold: float | None,
    higher: bool,
    allowed: tuple[int, int, int, int],
    radius: tuple[int, int],
    core: tuple[int, int, int, int],
    count: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``count`` best candidates of each map's core: positions that may be peaks (:func:`ranking_key`) and are
    the best of their window.

    Args:
        maps: Scores [G, Hb, Wb], with the neighbours that the windows of the core reach.
        threshold, higher: As for :func:`locate_peaks`.
        allowed: Rows y0:y1 and columns x0:x1 where a peak may be (outside the border); the others count as −inf.
        radius: The window's half-sides (rows, columns).
        core: Rows y0:y1 and columns x0:x1 whose candidates are wanted.
        count: Candidates per map.

    Returns:
        (map index, row, column, ranking key) [N] by map, best first, ties in row-major order; and the key of each
        map's best candidate left out [G] (−inf where none was).

    From the best of blocks of (radius + 1)² positions (:func:`top_blocks`, one reduction of the maps where every
    score passes), growing fourfold; maps with ties within a block, or too many blocks, take the window maxima of
    the whole core.
    """
    work = maps.to(_exact_dtype(maps.dtype))
    lo, hi = _passing_range(work.dtype, threshold, higher)
    G = work.shape[0]
    y0, y1 = max(core[0], allowed[0]), min(core[1], allowed[1])
    x0, x1 = max(core[2], allowed[2]), min(core[3], allowed[3])
    following = torch.full((G,), -torch.inf, dtype=work.dtype)
    if y0 >= y1 or x0 >= x1:  # the border covers the core
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty, work.new_zeros(0), following
    sides = (radius[0] + 1, radius[1] + 1)
    best = _block_best(work[:, y0:y1, x0:x1], sides, lo, hi, higher)
    blocks = best.shape[1] * best.shape[2]

    def read(at: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inside = (y >= allowed[0]) & (y < allowed[1]) & (x >= allowed[2]) & (x < allowed[3])
        return torch.where(inside, _key_at(work, at, y, x, lo, hi, higher), -torch.inf)

    def read_core(at: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inside = (y >= y0) & (y < y1) & (x >= x0) & (x < x1)
        return torch.where(inside, read(at, y, x), -torch.inf)

    found: list[tuple[torch.Tensor, ...]] = []
    open_maps = torch.ones(G, dtype=torch.bool)
    dense = torch.zeros(G, dtype=torch.bool)
    L = min(blocks, count + 1 + _BLOCKS_FIRST[0])
    while bool(open_maps.any()):
        if G * L * (2 * sides[0] - 1) * (2 * sides[1] - 1) > work.numel() // _BLOCK_WINDOWS:
            dense |= open_maps
            break
        chosen = open_maps.nonzero().squeeze(1)
        top = top_blocks(best, chosen, L, sides, (y0, x0), read_core, read)
        dense[chosen[top.tied]] = True
        group, y, x, value = top.candidates(chosen, work.shape[2])
        rank = torch.arange(len(group)) - torch.searchsorted(group, group)
        have = torch.bincount(group, minlength=G)
        settled = torch.zeros(G, dtype=torch.bool)
        settled[chosen] = ~top.tied & (top.whole | (have[chosen] > count))
        take = settled[group]
        sent = take & (rank < count)
        found.append((group[sent], y[sent], x[sent], value[sent]))
        after = take & (rank == count)
        following[group[after]] = value[after]
        open_maps &= ~settled & ~dense
        L = min(blocks, 4 * L)
    if bool(dense.any()):
        chosen = dense.nonzero().squeeze(1)
        rows = torch.arange(work.shape[1])[:, None]
        cols = torch.arange(work.shape[2])[None, :]
        inside = (rows >= allowed[0]) & (rows < allowed[1]) & (cols >= allowed[2]) & (cols < allowed[3])
        key = _key_at(work, chosen[:, None, None], rows, cols, lo, hi, higher).masked_fill_(~inside, -torch.inf)
        found.append(_dense_core_candidates(key, chosen, radius, (y0, y1, x0, x1), count, following))
    if not found:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty, work.new_zeros(0), following
    group, y, x, value = (torch.cat(column) for column in zip(*found, strict=True))
    order = torch.argsort(group, stable=True)  # by map; within each already best first
    return group[order], y[order], x[order], value[order], following


def _dense_core_candidates(
    key: torch.Tensor,
    maps: torch.Tensor,
    radius: tuple[int, int],
    core: tuple[int, int, int, int],
    count: int,
    following: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`core_candidates` of maps ``maps`` [n] from their ranking keys [n, Hb, Wb] by the window maxima of the
    whole block (writes ``following``)."""
    y0, y1, x0, x1 = core
    peak = local_maxima(key[:, None], radius)[:, 0, y0:y1, x0:x1]
    which, y, x = peak.nonzero(as_tuple=True)
    y, x = y + y0, x + x0
    value = key[which, y, x]
    group = maps[which]
    order = torch.argsort(y * key.shape[2] + x, stable=True)
    order = order[torch.argsort(value[order], descending=True, stable=True)]
    order = order[torch.argsort(group[order], stable=True)]
    group, y, x, value = group[order], y[order], x[order], value[order]
    rank = torch.arange(len(group)) - torch.searchsorted(group, group)
    after = rank == count
    following[group[after]] = value[after]
    keep = rank < count
    return group[keep], y[keep], x[keep], value[keep]


def _flat_maps(work: torch.Tensor, maps: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Which of the maps [n] of work [G, H, W] hold one passing score everywhere -> bool [n]."""
    flat = torch.zeros(len(maps), dtype=torch.bool)
    for i, g in enumerate(maps.tolist()):
        low, high = work[g].min(), work[g].max()
        flat[i] = bool((low == high) & (low >= lo) & (high <= hi))
    return flat


def _block_best(work: torch.Tensor, side: int | tuple[int, int], lo: float, hi: float, higher: bool) -> torch.Tensor:
    """The best ranking key (:func:`ranking_key`) of each side × side block of maps work [G, H, W] (the last
    blocks of a row or column may be smaller) -> [G, ⌈H / side⌉, ⌈W / side⌉], −inf where nothing passes.

    One reduction of the maps, towards the better end: a block's best score passes unless it lies beyond the
    threshold's side (then nothing in the block does). Where a best is NaN or beyond the other end of [lo, hi]
    (±inf), the key is formed first."""
    if higher:
        best = _blocks_reduced(work, side, True)
        if bool((best <= hi).all()):  # NaN fails
            return best.masked_fill_(best < lo, -torch.inf)
    else:
        least = _blocks_reduced(work, side, False)
        if bool((least >= lo).all()):
            return least.masked_fill_(least > hi, torch.inf).neg_()
    key = torch.where((work >= lo) & (work <= hi), work if higher else -work, -torch.inf)
    return _blocks_reduced(key, side, True)


def _blocks_reduced(work: torch.Tensor, sides: int | tuple[int, int], largest: bool) -> torch.Tensor:
    """The largest (or least) value of each block of sides (rows, columns; one int: square) of work [G, H, W] ->
    [G, ⌈H / rows⌉, ⌈W / columns⌉]; NaN propagates. Rows first (a reduction along a middle axis of a view), then
    the columns of the result."""
    sy, sx = (sides, sides) if isinstance(sides, int) else sides
    G, H, W = work.shape
    reduce = torch.amax if largest else torch.amin
    full = H // sy * sy
    rows = reduce(work[:, :full].reshape(G, H // sy, sy, W), dim=2)
    if full < H:
        rows = torch.cat([rows, reduce(work[:, full:], dim=1, keepdim=True)], dim=1)
    columns = -(-W // sx) * sx
    padded = F.pad(rows, (0, columns - W), value=-torch.inf if largest else torch.inf)
    return reduce(padded.reshape(G, rows.shape[1], -1, sx), dim=3)


def _key_at(
    work: torch.Tensor,
    maps: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    lo: float,
    hi: float,
    higher: bool,
) -> torch.Tensor:
    """The ranking key of maps work [G, H, W] at the positions (maps, y, x) (broadcast together, any shape),
    −inf outside the maps and where the score does not pass [lo, hi]."""
    H, W = work.shape[1:]
    inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    score = work[maps, y.clamp(0, H - 1), x.clamp(0, W - 1)]
    passing = inside & (score >= lo) & (score <= hi)
    return torch.where(passing, score if higher else -score, -torch.inf)


_SAMPLED_FROM = 8  # sampled selection of the M best scores when a map holds at least this many times 64·M


def top_scores(key: torch.Tensor, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The M largest values of each row of key [G, N] and their indices -> ([G, M] descending, [G, M]), as
    ``key.topk(M, dim=1)`` gives them (equal values in any order).

    A full selection costs as much as a sort of the row on CPU (67 ms for 8 maps of 2001²). A strided sample of
    about 64·M values per row estimates the value t ranked about 2M in the row instead; one comparison then keeps
    the values above t, and the selection runs on those alone. Rows where fewer than M pass (a sample that
    overestimated t) are selected whole.
    """
    G, N = key.shape
    if N < _SAMPLED_FROM * 64 * M:
        return key.topk(M, dim=1)
    stride = N // (64 * M)
    sample = key[:, ::stride]
    t = sample.topk(min(sample.shape[1], -(-2 * M // stride) + 1), dim=1).values[:, -1:]  # [G, 1]
    rows, columns = (key > t).nonzero(as_tuple=True)  # row-major: each row's in one run
    count = torch.bincount(rows, minlength=G).tolist()
    values = torch.empty(G, M, dtype=key.dtype)
    index = torch.empty(G, M, dtype=torch.int64)
    for g, where in enumerate(columns.split(count)):
        if count[g] < M:
            values[g], index[g] = key[g].topk(M)
            continue
        best, pick = key[g, where].topk(M)
        values[g], index[g] = best, where[pick]
    return values, index


def _first_by_rows(
    work: torch.Tensor,
    key: torch.Tensor,
    g: int,
    M: int,
    radius: int,
    higher: bool,
    k: int,
    min_distance: int,
    passing: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`_first_of_the_best` for map g of ``work`` [G, H, W] (ranking key [G, H·W]) from its M best scores
    and more, M growing eightfold: the scores above the M-th best v form a threshold's passing set, whose local
    maxima :func:`_candidates_in_rows` finds in their rows alone (no score at or below v can beat them). None once
    the rows are too many, or M a quarter of the map."""
    H, W = work.shape[1:]
    lo, hi = passing
    while M * 4 <= H * W:
        v = top_scores(key[g : g + 1], M)[0][0, -1]
        above = (key[g] > v).nonzero().squeeze(1)
        if higher:
            lo = float(torch.nextafter(v, torch.tensor(torch.inf, dtype=v.dtype)))
        else:
            hi = float(torch.nextafter(-v, torch.tensor(-torch.inf, dtype=v.dtype)))
        zero = torch.zeros_like(above)
        found = _candidates_in_rows(work[g : g + 1], zero, above // W, above % W, lo, hi, radius, higher)
        if found is None:
            return None
        _, y, x, value = found
        order = torch.argsort(value if higher else -value, descending=True, stable=True)  # ties: row-major
        y, x = y[order], x[order]
        kept = suppress_points(torch.zeros_like(y), y, x, k, min_distance)
        if int(kept.sum()) >= k or int((key[g] > -torch.inf).sum()) <= M:
            return torch.full((int(kept.sum()),), g, dtype=torch.int64), y[kept], x[kept]
        M *= 8
    return None


def _first_of_flat(
    flat: torch.Tensor, H: int, W: int, k: int, min_distance: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first k peaks (map index, row, column) of the ``flat`` maps [G] of H × W (one score everywhere: a flat
    template's zncc): the greedy survivors of their positions in row-major order, all among the first rows that
    hold k of them (a later position never suppresses an earlier one)."""
    maps = flat.nonzero().squeeze(1)
    if not len(maps):
        return maps, maps, maps
    per_row = -(-W // min_distance)  # survivors in a row of a flat map
    rows = min(H, min_distance * (-(-k // per_row) + 1))
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(W), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    kept = suppress_points(torch.zeros_like(y), y, x, k, min_distance)  # the same on every flat map
    y, x = y[kept], x[kept]
    return maps.repeat_interleave(len(y)), y.repeat(len(maps)), x.repeat(len(maps))


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, size) for start in range(0, total, size)]


def _beaten_within(values: torch.Tensor, y: torch.Tensor, x: torch.Tensor, radius: int) -> torch.Tensor:
    """Whether another of the points [G, M] of the same map with a larger value lies within ``radius``
    (Chebyshev) of each -> bool [G, M]."""
    near = (y[:, :, None] - y[:, None, :]).abs_() <= radius
    near &= (x[:, :, None] - x[:, None, :]).abs_() <= radius
    return (near & (values[:, None, :] > values[:, :, None])).any(dim=2)


def _exact_dtype(dtype: torch.dtype) -> torch.dtype:
    """The float dtype scores are ranked in: float32 holds half floats exactly; integers go to float64."""
    return torch.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _passing_range(dtype: torch.dtype, threshold: float | None, higher: bool) -> tuple[float, float]:
    """(lo, hi), both representable in ``dtype``, such that a score s of that dtype may be a peak exactly when
    lo <= s <= hi: finite (NaN fails both) and passing the threshold as given in float64.

    For s in ``dtype``, s >= t holds exactly when s >= t rounded up to ``dtype`` (s <= t: rounded down), so the
    map is compared in its own dtype and never copied to float64."""
    finite = torch.finfo(dtype).max
    lo, hi = -finite, finite
    if threshold is None:
        return lo, hi
    exact = torch.tensor(threshold, dtype=torch.float64)
    bound = exact.to(dtype)
    if higher:
        if bound < exact:
            bound = torch.nextafter(bound, torch.tensor(torch.inf, dtype=dtype))
        return max(lo, float(bound)), hi
    if bound > exact:
        bound = torch.nextafter(bound, torch.tensor(-torch.inf, dtype=dtype))
    return lo, min(hi, float(bound))


def _candidates(
    work: torch.Tensor, lo: float, hi: float, radius: int, higher: bool, thresholded: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of maps work [G, H, W] in [lo, hi] that are the best of their (2·radius + 1)² window, in
    row-major order per map -> (map index, row, column, score) [N] each.

    With ``thresholded`` (a threshold was given) the positions that pass it are found first; when they are few, and
    their rows too, only those rows are searched."""
    if thresholded:
        group, y, x = _passing_threshold(work, lo, hi, higher)
        if len(group) * _TILED_SHARE <= work.numel():
            found = _candidates_in_rows(work, group, y, x, lo, hi, radius, higher)
            if found is not None:
                return found
    return _candidates_dense(work, lo, hi, radius, higher)


def _passing_threshold(
    work: torch.Tensor, lo: float, hi: float, higher: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of maps work [G, H, W] on the threshold's side of [lo, hi] (±inf may be among them), in
    row-major order -> (map index, row, column) [N] each.

    Each row's best score (one reduction, the cheapest pass over the map) rules out the rows where nothing
    passes; only the others are compared and searched (rows holding NaN among them)."""
    # NaN propagates to the row's best, which then is not hopeless
    hopeless = work.amax(dim=-1) < lo if higher else work.amin(dim=-1) > hi
    group, y = (~hopeless).nonzero(as_tuple=True)
    rows = work[group, y]  # [rows, W]
    loose = rows >= lo if higher else rows <= hi  # NaN fails
    row, x = loose.nonzero(as_tuple=True)
    return group[row], y[row], x


def _candidates_dense(
    work: torch.Tensor, lo: float, hi: float, radius: int, higher: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_candidates` over whole maps: a comparison, the window best in O(log radius) passes, a nonzero."""
    passing = (work >= lo) & (work <= hi)
    key = torch.where(passing, work, -torch.inf if higher else torch.inf)
    best = _window_best(key, (radius, radius), higher)
    group, y, x = ((key == best) & passing).nonzero(as_tuple=True)
    return group, y, x, key[group, y, x]


def _candidates_in_rows(
    work: torch.Tensor,
    group: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    lo: float,
    hi: float,
    radius: int,
    higher: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """:func:`_candidates` for the positions (group, y, x) [N] that pass one side of the range, in row-major
    order, searched in their rows alone: a position is the best of its window exactly when no passing position
    in it is better (the others are never candidates), and those lie in the rows listed within ``radius``.
    None when the rows are too many (the dense search is cheaper then)."""
    G, H = work.shape[:2]
    if not len(group):
        return group, y, x, work.new_zeros(0)
    rows, row_of = torch.unique_consecutive(group * H + y, return_inverse=True)  # sorted: the points are
    if len(rows) * _ROWS_SHARE > G * H:
        return None
    line = work[rows // H, rows % H]  # [R, W]
    key = torch.where((line >= lo) & (line <= hi), line if higher else -line, -torch.inf)
    across = _window_best(key, (0, radius), True)
    # the listed rows within the radius of each: a run of the list, [first, last]
    top = rows - rows % H  # the map's first row
    reach = min(radius, H - 1)
    first = torch.searchsorted(rows, torch.maximum(rows - reach, top))
    last = torch.searchsorted(rows, torch.minimum(rows + reach, top + H - 1), right=True) - 1
    best = _runs_best(across, first[row_of], last[row_of], x)
    own = key[row_of, x]
    is_best = (own == best) & (own > -torch.inf)
    return group[is_best], y[is_best], x[is_best], line[row_of, x][is_best]


def _runs_best(values: torch.Tensor, first: torch.Tensor, last: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """The largest of values[first[i] : last[i] + 1, column[i]] for each i -> [N], from a table of the best of
    runs of 1, 2, 4... rows (each run is covered by two runs of the largest power of two within it)."""
    length = last - first + 1
    level = torch.floor(torch.log2(length.to(torch.float64))).to(torch.int64)
    level = level - (2**level > length).to(torch.int64) + (2 ** (level + 1) <= length).to(torch.int64)  # exact
    tables = [values]
    while 2 ** len(tables) <= int(length.max()):
        run = 2 ** (len(tables) - 1)
        previous = tables[-1]
        shifted = torch.cat([previous[run:], previous[-1:].expand(run, -1)])  # runs past the end are never asked
        tables.append(torch.maximum(previous, shifted))
    table = torch.stack(tables)  # [levels, R, W]
    return torch.maximum(table[level, first, column], table[level, last - 2**level + 1, column])


def ranking_key(maps: torch.Tensor, threshold: float | None, border: int, higher: bool) -> torch.Tensor:
    """Maps [B, T, H, W] as floats where larger is better, −inf wherever no peak may be: non-finite scores,
    scores worse than the threshold, the border. float32 maps stay float32 (exact, and half the work of the
    pooling); the threshold is compared as given in float64, exactly, without a float64 copy of the maps."""
    H, W = maps.shape[-2:]
    scores = maps.to(_exact_dtype(maps.dtype))
    lo, hi = _passing_range(scores.dtype, threshold, higher)
    key = torch.where((scores >= lo) & (scores <= hi), scores if higher else -scores, -torch.inf)
    if border:
        key[..., :border, :] = -torch.inf
        key[..., max(H - border, 0) :, :] = -torch.inf
        key[..., :, :border] = -torch.inf
        key[..., :, max(W - border, 0) :] = -torch.inf
    return key


def local_maxima(key: torch.Tensor, radius: tuple[int, int]) -> torch.Tensor:
    """Where key [G, 1, H, W] is finite and the maximum of its (2·radius[0] + 1) × (2·radius[1] + 1) window (rows,
    columns) -> bool [G, 1, H, W]. A radius beyond the map's side is the side: the window sees no more of it."""
    pooled = _window_best(key, radius, True)
    return (key == pooled) & (pooled > -torch.inf)


def _window_best(key: torch.Tensor, radius: tuple[int, int], higher: bool) -> torch.Tensor:
    """The best (largest with ``higher``, else smallest) value of key [..., H, W] in the window of half-sides
    ``radius`` (rows, columns) around each position, the outside of the map never best -> [..., H, W]."""
    worst = -torch.inf if higher else torch.inf
    for dim, reach in ((-1, radius[1]), (-2, radius[0])):
        reach = min(reach, key.shape[dim] - 1)  # a window beyond the side sees no more of it
        if reach < 1:
            continue
        pad = [0, 0, 0, 0]
        pad[2 * (-1 - dim)], pad[2 * (-1 - dim) + 1] = reach, reach
        key = _sliding_best(F.pad(key, pad, value=worst), 2 * reach + 1, dim, higher)
    return key


def _sliding_best(values: torch.Tensor, width: int, dim: int, higher: bool) -> torch.Tensor:
    """Best of every run of ``width`` consecutive values along ``dim`` (L of them -> L − width + 1): runs of
    1, 2, 4... by doubling, then the two overlapping runs that cover each window. O(log width) passes, exact."""
    best = torch.maximum if higher else torch.minimum
    run = 1
    while 2 * run <= width:
        length = values.shape[dim] - run
        values = best(values.narrow(dim, 0, length), values.narrow(dim, run, length))
        run *= 2
    length = values.shape[dim] - (width - run)
    return best(values.narrow(dim, 0, length), values.narrow(dim, width - run, length))


def suppress_points(group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, k: int, min_distance: int) -> torch.Tensor:
    """The greedy suppression of :func:`locate_peaks` for candidates given as points: which of them are among the
    first k survivors of their map -> bool [N].

    Args:
        group, y, x: Map index, row and column [N] int64 of candidates, sorted by map and best first within each
            (equal scores: row-major order), gathered from anywhere (the maps, or the chunks of a dask array).
        k: Survivors kept per map.
        min_distance: Two peaks closer than this (Chebyshev) keep only the first.

    The greedy decides each candidate from those before it alone, so the first candidates of each map are
    suppressed first, as many as k survivors may need (4k + 1024), then eight times more for the maps that fell
    short: a map of many more candidates than k costs what its first ones do.
    """
    if not len(group):
        return torch.zeros(0, dtype=torch.bool)
    rank = _rank_in_group(group)
    wanted = 4 * k + 1024
    while True:
        head = rank < wanted
        chosen = head.nonzero().squeeze(1)
        keep = torch.zeros(len(group), dtype=torch.bool)
        keep[chosen[_first_survivors(group[chosen], y[chosen], x[chosen], k, min_distance)]] = True
        cut = torch.unique(group[~head])  # the maps not looked at to the end
        if not len(cut) or bool((torch.bincount(group[keep], minlength=int(group[-1]) + 1)[cut] >= k).all()):
            return keep
        wanted *= 8


def _first_survivors(group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, k: int, min_distance: int) -> torch.Tensor:
    """:func:`suppress_points` on all the candidates given.

    Candidates with no other candidate that close can neither suppress nor be suppressed: they are kept without a
    look (local maxima of a window of radius min_distance − 1 are such unless they tie on a plateau). The others
    go through :func:`_greedy`. Linear in the candidates up to the logs of their sorts and searches.
    """
    keep = torch.ones(len(group), dtype=torch.bool)
    if min_distance > 1 and len(group):
        crowded = _near_another(group, y, x, min_distance)
        if bool(crowded.any()):
            calm = (~crowded).to(torch.int64)
            start = torch.searchsorted(group, group)  # each map's first candidate
            before = calm.cumsum(0) - calm
            before = before - before[start]  # calm candidates of the same map before each one: survivors all
            pending = (crowded & (before < k)).nonzero().squeeze(1)
            keep = ~crowded
            if len(pending):
                decided = _greedy(pending, start[pending], y[pending], x[pending], before[pending], k, min_distance)
                keep[pending[decided]] = True
    survivors = keep.nonzero().squeeze(1)
    first_k = survivors[_rank_in_group(group[survivors]) < k]
    return torch.zeros(len(group), dtype=torch.bool).index_fill_(0, first_k, True)


def _cells(group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of side × side pixels of points [N] -> (cell id of each point [N], the steps [9] from a cell's id to
    those of the 3 × 3 cells around it, itself in the middle). Ids order cells by map, then row-major."""
    cy, cx = y // side + 1, x // side + 1  # from 1: the cells beside them stay >= 0
    height, width = int(cy.max()) + 2, int(cx.max()) + 2
    cell = (group * height + cy) * width + cx
    steps = torch.tensor([dy * width + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=cell.dtype)
    return cell, steps


def _near_another(group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, min_distance: int) -> torch.Tensor:
    """Whether another point [N] of the same map lies in the 3 × 3 cells of min_distance × min_distance pixels
    around each one -> bool [N]: every point closer than min_distance is among them, so the others can neither
    suppress nor be suppressed. The cells are counted on a grid when it is not larger than the points (plus a
    constant), else looked up among the occupied ones."""
    cy, cx = y // min_distance + 1, x // min_distance + 1  # from 1: the cells beside them stay >= 0
    height, width, maps = int(cy.max()) + 2, int(cx.max()) + 2, int(group.max()) + 1
    if maps * height * width <= len(group) + 65536:
        counts = torch.bincount((group * height + cy) * width + cx, minlength=maps * height * width)
        counts = counts.reshape(maps, height, width)
        rows = counts[:, :-2] + counts[:, 1:-1] + counts[:, 2:]
        around = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]  # cell (cy, cx) and its 8 neighbours
        return around[group, cy - 1, cx - 1] > 1  # itself, and at least one more
    cell, steps = _cells(group, y, x, min_distance)
    cells, counts = torch.unique(cell, return_counts=True)  # sorted
    around = torch.zeros_like(cell)
    for step in steps.tolist():
        probe = cell + step
        at = torch.searchsorted(cells, probe).clamp(max=len(cells) - 1)
        around += torch.where(cells[at] == probe, counts[at], 0)
    return around > 1


def _greedy(
    order: torch.Tensor,
    start: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    calm_before: torch.Tensor,
    k: int,
    d: int,
) -> torch.Tensor:
    """Greedy suppression of points [N] in the order of ``order`` (their ascending positions in the sorted
    candidates; ``start``: the position of their map's first candidate), each kept unless a kept one lies closer
    than d (Chebyshev) -> bool [N]. ``calm_before``: survivors of the map before each point that are not among
    these; a point with k survivors before it is not needed and reported as not kept.

    The decisions are made in rounds, all vectorized. Points fall in cells of d × d pixels: two points in one
    cell are closer than d, so a kept point suppresses the rest of its cell, and every point closer than d lies
    in the 3 × 3 cells around. A cell's first undecided point is kept once no undecided point of the cells
    around comes before it (every earlier point near it is then decided, none of them kept); keeping it
    suppresses the undecided points near it. Each round decides at least the first undecided point of each map;
    a point is looked at from at most nine kept points, so the work is O(N) plus a few operations per cell and
    round. Rounds follow chains of points that each wait for the one before (on a plateau: about its width plus
    twice its height, in cells).
    """
    cell, steps = _cells(start, y, x, d)  # the map's first position identifies the map
    by_cell = torch.argsort(cell, stable=True)  # by cell, then in order
    cells, size = torch.unique_consecutive(cell[by_cell], return_counts=True)
    end = size.cumsum(0)
    head = end - size  # each cell's first undecided point (in by_cell positions); end when none is left
    ids = cells[:, None] + steps
    at = torch.searchsorted(cells, ids).clamp(max=len(cells) - 1)
    neighbours = torch.where(cells[at] == ids, at, len(cells))  # [cells, 9], itself among them; none: a sentinel
    o, sy, sx, sb, ss = (v[by_cell] for v in (order, y, x, calm_before, start))
    never = torch.iinfo(torch.int64).max
    first = torch.cat([o[head], torch.tensor([never])])  # the order of each cell's first undecided point
    undecided = torch.ones(len(o), dtype=torch.bool)
    kept = torch.zeros(len(o), dtype=torch.bool)
    kept_positions = torch.zeros(0, dtype=torch.int64)  # in order
    live, around_live = torch.arange(len(cells)), neighbours
    most_calm = int(sb.max())
    while len(live):
        h, f = head[live], first[live]
        winner = f <= first[around_live].amin(dim=1)  # itself is among them: equal when no earlier one is
        if len(kept_positions) + most_calm >= k:
            # survivors before each first point: the calm ones and the kept ones of its map; a lower bound until
            # all before it are decided, which only grows: past k now is past k for good, and so is the rest of
            # its cell (all later in order)
            survivors = sb[h] + torch.searchsorted(kept_positions, f) - torch.searchsorted(kept_positions, ss[h])
            past = survivors >= k
            head[live[past]], first[live[past]] = end[live[past]], never
            winner &= ~past
        chosen = h[winner]
        if len(chosen):
            kept[chosen], undecided[chosen] = True, False
            kept_positions = torch.sort(torch.cat([kept_positions, o[chosen]])).values
            touched = _suppress_near(chosen, around_live[winner], head, end, sy, sx, undecided, d)
            first[touched] = torch.where(head[touched] < end[touched], o[head[touched].clamp(max=len(o) - 1)], never)
        still = head[live] < end[live]
        live, around_live = live[still], around_live[still]
    return kept[torch.argsort(by_cell)]


def _suppress_near(
    chosen: torch.Tensor,
    neighbours: torch.Tensor,
    head: torch.Tensor,
    end: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    undecided: torch.Tensor,
    d: int,
) -> torch.Tensor:
    """Mark (in ``undecided``) the points closer than d to the newly kept points ``chosen`` [n] as decided, in
    the 3 × 3 cells around each (``neighbours`` [n, 9], the sentinel for none), and move those cells' heads (in
    place) to their first undecided point, or their end -> the cells looked at."""
    cells = len(head)
    cell = neighbours.reshape(-1)
    owner = chosen.repeat_interleave(neighbours.shape[1])
    present = cell < cells
    cell, owner = cell[present], owner[present]
    first = head[cell]
    count = end[cell] - first
    pair = torch.repeat_interleave(count)
    point = first[pair] + torch.arange(len(pair)) - (count.cumsum(0) - count)[pair]
    near = torch.maximum((y[point] - y[owner[pair]]).abs(), (x[point] - x[owner[pair]]).abs()) < d
    undecided[point[near]] = False
    alive = undecided[point]
    head[cell] = end[cell]
    head.scatter_reduce_(0, cell[pair[alive]], point[alive], reduce="amin")
    return cell


def _rank_in_group(group: torch.Tensor) -> torch.Tensor:
    """Position of each entry within its run of equal values of a sorted [N] -> [N] int64."""
    return torch.arange(len(group)) - torch.searchsorted(group, group)


def surface_offsets(
    flat: torch.Tensor, index: torch.Tensor, y: torch.Tensor, x: torch.Tensor, higher: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sub-pixel (y, x, score) of integer peaks on maps flat [N, H, W] from a quadratic fit of each 3 × 3
    neighbourhood: the stationary point of the full 2-D quadratic (with its cross term) when it is an extremum
    within one pixel, else a parabola per axis with the offset clamped to half a pixel. Axes where a neighbour is
    off the map or not finite keep the integer position."""
    H, W = flat.shape[-2:]
    yp, ym = (y + 1).clamp(max=H - 1), (y - 1).clamp(min=0)
    xp, xm = (x + 1).clamp(max=W - 1), (x - 1).clamp(min=0)

    def at(rows, cols):
        return flat[index, rows, cols].to(torch.float64)

    centre = at(y, x)
    up, down, left, right = at(ym, x), at(yp, x), at(y, xm), at(y, xp)
    corners = (at(ym, xm), at(ym, xp), at(yp, xm), at(yp, xp))
    inside_y = (y > 0) & (y < H - 1) & torch.isfinite(up) & torch.isfinite(down)
    inside_x = (x > 0) & (x < W - 1) & torch.isfinite(left) & torch.isfinite(right)
    gy, gx = (down - up) / 2, (right - left) / 2
    hyy, hxx = down + up - 2 * centre, right + left - 2 * centre
    hxy = (corners[3] - corners[1] - corners[2] + corners[0]) / 4
    sign = -1.0 if higher else 1.0  # a maximum has a negative definite Hessian, a minimum a positive one
    det = hyy * hxx - hxy * hxy
    both = inside_y & inside_x & torch.stack([torch.isfinite(c) for c in corners]).all(dim=0)
    definite = both & (det > 0) & (sign * hyy > 0)
    dy2 = torch.where(definite, -(hxx * gy - hxy * gx) / torch.where(definite, det, 1.0), 0.0)
    dx2 = torch.where(definite, -(hyy * gx - hxy * gy) / torch.where(definite, det, 1.0), 0.0)
    full = definite & (dy2.abs() <= 1) & (dx2.abs() <= 1)
    # per axis: the vertex of a parabola, where the curvature has the right sign
    ok_y = inside_y & (sign * hyy > 0)
    ok_x = inside_x & (sign * hxx > 0)
    dy1 = torch.where(ok_y, (-gy / torch.where(ok_y, hyy, 1.0)).clamp(-0.5, 0.5), 0.0)
    dx1 = torch.where(ok_x, (-gx / torch.where(ok_x, hxx, 1.0)).clamp(-0.5, 0.5), 0.0)
    dy = torch.where(full, dy2, dy1)
    dx = torch.where(full, dx2, dx1)
    gy, gx = torch.where(inside_y, gy, 0.0), torch.where(inside_x, gx, 0.0)
    hyy, hxx = torch.where(inside_y, hyy, 0.0), torch.where(inside_x, hxx, 0.0)
    hxy = torch.where(full, hxy, 0.0)
    value = centre + gy * dy + gx * dx + 0.5 * (hyy * dy * dy + hxx * dx * dx) + hxy * dy * dx
    value = torch.where(sign * (value - centre) <= 0, value, centre)  # never worse than the integer peak
    return y.to(torch.float64) + dy, x.to(torch.float64) + dx, value
