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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_bool, check_int, check_threshold
from ._refine import refine_peak
from ._threads import for_calls
from ._types import ArrayLike
from ._validate import canonicalize, window_origin, with_defaults
from .errors import SlidesimTypeError, SlidesimValueError
from .metrics import METRICS, resolve_metric

__all__ = ["Peaks", "find_peaks"]

_DECISIONS_PER_BATCH = 4096  # crowded candidates turned into Python numbers at a time by the greedy suppression


@dataclass(frozen=True)
class Peaks:
    """Peaks of a score map, best first within each (image, template).

    Attributes:
        batch: Image index of each peak [N] (int64).
        template: Template index [N] (int64).
        y: Row in score-map pixels [N] (float; fractional with sub-pixel offsets).
        x: Column in score-map pixels [N].
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
    metric: str | None = None,
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
        row-major order).

    Raises:
        SlidesimTypeError: Neither ``metric`` nor ``higher_is_better`` given (or no ``metric`` with ``images``);
            scores not an array of real numbers; k, min_distance or exclude_border not ints; subpixel or
            higher_is_better not a bool; threshold not a number.
        SlidesimValueError: Empty scores or scores of another rank; k or min_distance below 1, exclude_border
            below 0; a NaN threshold; an unknown metric, or one that contradicts ``higher_is_better``.

    Cost:
        Linear in the map's size and in its local maxima, whatever ``k``: one max-pool finds the candidates, one
        sort orders them, and suppression looks up kept peaks in a grid of cells. Refinement on the data costs a
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
    expected = (canon.images.shape[0], canon.templates.shape[1], canon.problem.out_height, canon.problem.out_width)
    if tuple(maps.shape) != expected:
        raise SlidesimValueError(
            f"`scores` of shape {tuple(maps.shape)} did not come from these images and templates, whose scores "
            f"are {expected}; pass the same options (metric, stride, mode...) as to similarity."
        )
    (sy, sx), (oy, ox) = canon.stride, window_origin(canon)
    refined = [refine_peak(canon, call, b, t, (y * sy + oy, x * sx + ox)) for b, t, y, x in found]
    cy, cx, values = (torch.tensor(column, dtype=torch.float64) for column in zip(*refined, strict=True))
    return (cy - oy) / sy, (cx - ox) / sx, values


def _package(batch, template, y, x, score, maps: torch.Tensor, numpy_out: bool) -> Peaks:
    dtype = maps.dtype if maps.is_floating_point() else torch.float64
    fields = (batch, template, y.to(torch.float64), x.to(torch.float64), score.to(dtype))
    if numpy_out:
        return Peaks(*(f.cpu().numpy() for f in fields))
    return Peaks(*(f.to(maps.device) for f in fields))


def locate_peaks(
    maps: torch.Tensor, k: int, min_distance: int, threshold: float | None, border: int, higher: bool
) -> torch.Tensor:
    """Integer peaks of maps [B, T, H, W] as rows (b, t, y, x) [N, 4] int64 on the CPU, best first per (b, t),
    equal scores in row-major order.

    A peak is a local maximum of the ranking key over a (2r + 1)² window, r = max(1, min_distance − 1); of two
    peaks closer than min_distance the first in that order suppresses the other (greedy). Only candidates with
    another candidate that close can suppress or be suppressed (a candidate is the maximum of its whole window,
    so these are ties on plateaus); all others are kept without a look. The work is linear in the map and its
    candidates, never k × candidates.
    """
    B, T, H, W = maps.shape
    key = ranking_key(maps, threshold, border, higher).reshape(B * T, 1, H, W)
    reach = min(min_distance - 1, max(H, W))  # a window wider than the map sees no more of it
    candidate = local_maxima(key, (max(1, reach), max(1, reach)))
    group, flat = candidate.reshape(B * T, H * W).nonzero(as_tuple=True)
    order = torch.argsort(key.reshape(B * T, H * W)[group, flat], descending=True, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by map, best first; ties keep row-major order
    group, flat = group[order].cpu(), flat[order].cpu()
    if reach >= 1 and len(group):
        crowded = _crowded(candidate, reach).reshape(B * T, H * W)[group.to(key.device), flat.to(key.device)]
        kept = _suppress(group, flat // W, flat % W, crowded.cpu(), k, min_distance)
        group, flat = group[kept], flat[kept]
    first_k = _rank_in_group(group) < k
    group, flat = group[first_k], flat[first_k]
    return torch.stack([group // T, group % T, flat // W, flat % W], dim=1)


def ranking_key(maps: torch.Tensor, threshold: float | None, border: int, higher: bool) -> torch.Tensor:
    """Maps [B, T, H, W] as floats where larger is better, −inf wherever no peak may be: non-finite scores,
    scores worse than the threshold, the border. float32 maps stay float32 (exact, and half the work of the
    pooling); the threshold is compared in float64, as given."""
    H, W = maps.shape[-2:]
    exact = torch.float32 if maps.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    key = maps.to(exact) if higher else -maps.to(exact)
    key = torch.where(torch.isfinite(key), key, -torch.inf)
    if threshold is not None:
        scores = maps.to(torch.float64)
        passes = scores >= threshold if higher else scores <= threshold
        key = torch.where(passes, key, -torch.inf)
    if border:
        key[..., :border, :] = -torch.inf
        key[..., max(H - border, 0) :, :] = -torch.inf
        key[..., :, :border] = -torch.inf
        key[..., :, max(W - border, 0) :] = -torch.inf
    return key


def local_maxima(key: torch.Tensor, radius: tuple[int, int]) -> torch.Tensor:
    """Where key [G, 1, H, W] is finite and the maximum of its (2·radius[0] + 1) × (2·radius[1] + 1) window (rows,
    columns) -> bool [G, 1, H, W]. A radius beyond the map's side is the side: the window sees no more of it."""
    ry, rx = radius
    # separable: rows then columns, O(radius) per pixel rather than O(radius²)
    pooled = F.max_pool2d(key, (1, 2 * rx + 1), stride=1, padding=(0, rx))
    pooled = F.max_pool2d(pooled, (2 * ry + 1, 1), stride=1, padding=(ry, 0))
    return (key == pooled) & (pooled > -torch.inf)


def _crowded(candidate: torch.Tensor, reach: int) -> torch.Tensor:
    """Where a candidate [G, 1, H, W] has another candidate within Chebyshev distance ``reach`` -> bool [G, H, W].
    Window counts from an integral image: exact, and O(1) per pixel whatever the reach."""
    H, W = candidate.shape[-2:]
    span = 2 * reach + 1
    padded = F.pad(candidate[:, 0].to(torch.int32), (reach + 1, reach, reach + 1, reach))
    # sums[i, j]: candidates in padded rows <= i, columns <= j (at most H·W: int32 holds it)
    sums = padded.cumsum(-1, dtype=torch.int32).cumsum(-2, dtype=torch.int32)
    counts = sums[:, span:, span:] - sums[:, :-span, span:] - sums[:, span:, :-span] + sums[:, :-span, :-span]
    return candidate[:, 0] & (counts[:, :H, :W] > 1)


def suppress_points(group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, k: int, min_distance: int) -> torch.Tensor:
    """The greedy suppression of :func:`locate_peaks` for candidates given as points: which of them are among the
    first k survivors of their map -> bool [N].

    Args:
        group, y, x: Map index, row and column [N] int64 of candidates (local maxima of their maps, as
            :func:`local_maxima` finds them), sorted by map and best first within each (equal scores: row-major
            order), gathered from anywhere (the chunks of a dask array).
        k: Survivors kept per map.
        min_distance: Two peaks closer than this (Chebyshev) keep only the first.
    """
    if min_distance > 1 and len(group):
        crowded = _near_another(group, y, x, min_distance)
        keep = _suppress(group, y, x, crowded, k, min_distance)
    else:
        keep = torch.ones(len(group), dtype=torch.bool)
    survivors = keep.nonzero().squeeze(1)
    first_k = survivors[_rank_in_group(group[survivors]) < k]
    return torch.zeros(len(group), dtype=torch.bool).index_fill_(0, first_k, True)


def _near_another(group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, min_distance: int) -> torch.Tensor:
    """Whether another point [N] of the same map lies in the 3 × 3 cells of min_distance × min_distance pixels
    around each one -> bool [N]: every point closer than min_distance is among them, so the others can neither
    suppress nor be suppressed (the ``crowded`` of :func:`_suppress`, for points without a map to count on)."""
    d = min_distance
    cy, cx = y // d + 1, x // d + 1  # from 1: the cells beside them stay >= 0
    height, width = int(cy.max()) + 2, int(cx.max()) + 2
    cell = (group * height + cy) * width + cx
    cells, counts = torch.unique(cell, return_counts=True)  # sorted
    around = torch.zeros_like(cell)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            probe = cell + dy * width + dx
            at = torch.searchsorted(cells, probe).clamp(max=len(cells) - 1)
            around += torch.where(cells[at] == probe, counts[at], 0)
    return around > 1  # itself, and at least one more


def _suppress(
    group: torch.Tensor, y: torch.Tensor, x: torch.Tensor, crowded: torch.Tensor, k: int, min_distance: int
) -> torch.Tensor:
    """Which candidates [N] (map index, row, column; best first within each map) survive greedy suppression
    -> bool [N].

    Uncrowded candidates (``crowded`` False) always survive and never suppress another. Crowded ones are decided
    in order: a kept peak lies in a cell of min_distance × min_distance pixels, which holds at most one (two
    points in one cell are closer than min_distance), so each decision looks at nine cells. Candidates after
    their map's k-th survivor are not looked at (they are reported as suppressed: no caller keeps them)."""
    keep = (~crowded).numpy().copy()
    # uncrowded candidates of the same map before each one: survivors whatever the greedy decides
    calm = (~crowded).to(torch.int64)
    before = calm.cumsum(0) - calm
    before = before - before[torch.searchsorted(group, group)]
    pending = (crowded & (before < k)).nonzero().squeeze(1)
    cells: dict[tuple[int, int, int], tuple[int, int]] = {}
    taken: dict[int, int] = {}  # crowded candidates kept so far, per map
    full: set[int] = set()  # maps whose k-th survivor is known
    d = min_distance
    for start in range(0, len(pending), _DECISIONS_PER_BATCH):
        batch = pending[start : start + _DECISIONS_PER_BATCH]
        if full:  # a plateau of a map already done need not be walked
            batch = batch[~torch.isin(group[batch], torch.tensor(sorted(full)))]
        columns = (batch, group[batch], y[batch], x[batch], before[batch])
        for index, g, py, px, calm_before in zip(*(column.tolist() for column in columns), strict=True):
            if g in full:
                continue
            if calm_before + taken.get(g, 0) >= k:
                full.add(g)
                continue
            cy, cx = py // d, px // d
            near = (cells.get((g, cy + dy, cx + dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
            if any(p is not None and max(abs(p[0] - py), abs(p[1] - px)) < d for p in near):
                continue
            cells[(g, cy, cx)] = (py, px)
            taken[g] = taken.get(g, 0) + 1
            keep[index] = True
    return torch.from_numpy(keep)


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
