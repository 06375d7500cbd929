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

from ._checks import check_int, check_threshold
from ._refine import refine_peak
from ._types import ArrayLike
from ._validate import canonicalize, window_origin, with_defaults
from .errors import SlidesimTypeError, SlidesimValueError
from .metrics import resolve_metric

__all__ = ["Peaks", "find_peaks"]


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


def direction(higher_is_better: bool | None, metric: str | None) -> bool:
    """Whether larger scores are better: ``higher_is_better`` if given, else the metric's, else True."""
    if higher_is_better is not None:
        if not isinstance(higher_is_better, bool):
            raise SlidesimTypeError(f"`higher_is_better` must be True, False or None; got {higher_is_better!r}.")
        return higher_is_better
    if metric is not None:
        return resolve_metric(metric).higher_is_better
    return True


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
    if maps.ndim == 2:
        return maps[None, None], numpy_out, True
    if maps.ndim != 4:
        raise SlidesimValueError(
            f"`scores` must be [H', W'] or [B, T, H', W'] (as similarity returns them); got shape {tuple(maps.shape)}."
        )
    return maps, numpy_out, False


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

    Args:
        scores: Maps [B, T, H', W'] or [H', W'], as :func:`slidesim.similarity` returns them.
        k: Peaks per image and template (fewer when fewer exist).
        min_distance: Two peaks closer than this (Chebyshev distance in map pixels) keep only the better one.
            None or 1: every local maximum (3 × 3) counts.
        threshold: Keep peaks at least this good: scores >= threshold, or <= threshold where lower is better.
        exclude_border: Ignore peaks within this many pixels of the map's edges.
        subpixel: Sub-pixel positions: refined on the data when ``images`` and ``templates`` are given (as
            :func:`slidesim.match` does), otherwise the vertex of a quadratic fitted to the 3 × 3 neighbourhood.
        higher_is_better: Whether peaks are maxima (True) or minima (False). Default: from ``metric``.
        metric: The metric that produced the scores (sad, mad, ssd and ssd_normed are minima); default maxima.
        images: The images the scores came from, for refinement on the data.
        templates: Their templates.
        **options: The other options of the :func:`slidesim.similarity` call that produced the scores (stride,
            mode, mask...), for refinement on the data.

    Returns:
        :class:`Peaks` ordered by image, then template, then best first.

    Raises:
        SlidesimTypeError: scores not an array of real numbers; k, min_distance or exclude_border not ints.
        SlidesimValueError: scores of another rank; negative counts or distances; an unknown metric.

    Examples:
        >>> import numpy as np, slidesim
        >>> scores = np.zeros((1, 1, 20, 20), np.float32)
        >>> scores[0, 0, 4, 5], scores[0, 0, 12, 15], scores[0, 0, 13, 15] = 0.9, 0.8, 0.7
        >>> peaks = slidesim.find_peaks(scores, k=3, threshold=0.5, subpixel=False)
        >>> [(int(y), int(x), round(float(s), 2)) for y, x, s in zip(peaks.y, peaks.x, peaks.score)]
        [(4, 5, 0.9), (12, 15, 0.8)]
        >>> len(slidesim.find_peaks(scores, k=3, threshold=0.5, min_distance=3))  # (13, 15) lies next to a better peak
        2
    """
    maps, numpy_out, _ = _as_maps(scores)
    k = check_int("k", k, 1)
    distance = 1 if min_distance is None else check_int("min_distance", min_distance, 1)
    border = check_int("exclude_border", exclude_border, 0)
    higher = direction(higher_is_better, metric)
    found = locate_peaks(maps, k, distance, check_threshold(threshold), border, higher)
    columns = torch.tensor(found, dtype=torch.int64).reshape(-1, 4).T
    batch, template, y, x = columns
    values = maps[batch, template, y, x].to(torch.float64)
    fy, fx = y.to(torch.float64), x.to(torch.float64)
    if subpixel and len(found) and images is not None:
        fy, fx, values = _refined_on_data(found, maps, metric, images, templates, options)
    elif subpixel and len(found):
        flat = maps.reshape(-1, *maps.shape[-2:])
        fy, fx, values = surface_offsets(flat, batch * maps.shape[1] + template, y, x, higher)
    return _package(batch, template, fy, fx, values, maps, numpy_out)


def _refined_on_data(
    found: list[tuple[int, int, int, int]], maps: torch.Tensor, metric: str | None, images, templates, options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks refined on the data, back in score-map coordinates: (y, x, score)."""
    if templates is None:
        raise SlidesimValueError("`templates` must be given with `images` to refine peaks on the data.")
    call = with_defaults({**options, "metric": metric or "zncc"})
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
) -> list[tuple[int, int, int, int]]:
    """Integer peaks (b, t, y, x) of maps [B, T, H, W], best first per (b, t)."""
    B, T, H, W = maps.shape
    key = maps.to(torch.float64) if higher else -maps.to(torch.float64)
    key = torch.where(torch.isfinite(key), key, -torch.inf)
    if threshold is not None:
        key = torch.where(key >= (threshold if higher else -threshold), key, -torch.inf)
    if border:
        key[..., :border, :] = -torch.inf
        key[..., H - border :, :] = -torch.inf
        key[..., :, :border] = -torch.inf
        key[..., :, W - border :] = -torch.inf
    radius = max(1, min_distance - 1)
    # separable: rows then columns, O(radius) per pixel rather than O(radius²)
    pooled = F.max_pool2d(key.reshape(B * T, 1, H, W), (1, 2 * radius + 1), stride=1, padding=(0, radius))
    pooled = F.max_pool2d(pooled, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    candidates = (key.reshape(B * T, 1, H, W) == pooled) & (pooled > -torch.inf)
    peaks = []
    for index in range(B * T):
        where = candidates[index, 0].reshape(-1).nonzero().squeeze(1)
        if where.numel() == 0:
            continue
        values = key[index // T, index % T].reshape(-1)[where]
        order = torch.argsort(values, descending=True, stable=True)  # ties: the earlier position first
        accepted: list[tuple[int, int]] = []
        for flat in where[order].tolist():
            y, x = divmod(flat, W)
            if all(max(abs(y - ay), abs(x - ax)) >= min_distance for ay, ax in accepted):
                accepted.append((y, x))
                if len(accepted) == k:
                    break
        peaks.extend((index // T, index % T, y, x) for y, x in accepted)
    return peaks


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
