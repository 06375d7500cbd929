"""match() (floor L6): where the templates are, how well they match, at what angle and scale.

The bank of transformed templates streams through the chosen engine a chunk at a time; each chunk's maps are
folded into a running best score and the index of the best transform per position, so memory stays
O(B · T · H' · W') whatever the number of rotations and scales. Peaks of the best map are then refined on the
image data (:mod:`slidesim._refine`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import check_bool, check_factors, check_int, check_threshold
from ._refine import refine_peak
from ._types import ArrayLike
from ._validate import Canonical, canonicalize, window_origin, with_defaults
from .banks import transform_bank
from .errors import SlidesimValueError
from .peaks import locate_peaks
from .planner import select_engine

__all__ = ["Matches", "match"]

_MAP_SHARE = 4  # a chunk's score maps may use memory_limit / _MAP_SHARE bytes
_MOMENT_TEMPORARIES = 6  # float64 maps alive per template while masked window moments are computed


@dataclass(frozen=True)
class Matches:
    """Matches, ordered by image, then template, then best first.

    Attributes:
        batch: Image index [N] (int64).
        template: Template index [N] (int64), into the templates given to :func:`match`.
        y: Row of the template centre in image pixels [N] (float64): (h − 1) / 2 below the top-left corner of an
            untransformed template, the same object point for rotated and scaled ones.
        x: Column of the template centre [N] (float64).
        score: Score of the match [N] (at the refined position with sub-pixel refinement).
        angle: Rotation of the best transform in degrees, counter-clockwise as displayed [N] (float64).
        scale: Scale factor of the best transform [N] (float64).
        maps: The best score over the bank at every position [B, T, H', W'] (what the peaks were found in), or
            None when not kept.

    numpy arrays for numpy images, tensors on the images' device otherwise.
    """

    batch: ArrayLike
    template: ArrayLike
    y: ArrayLike
    x: ArrayLike
    score: ArrayLike
    angle: ArrayLike
    scale: ArrayLike
    maps: ArrayLike | None = None

    def __len__(self) -> int:
        return len(self.batch)

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per match, with plain Python numbers (for JSON, CSV, tables)."""
        columns = {name: _as_list(getattr(self, name)) for name in _FIELDS}
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


_FIELDS = ("batch", "template", "y", "x", "score", "angle", "scale")


def _as_list(values: ArrayLike) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else values.detach().cpu().tolist()


@dataclass(frozen=True)
class MatchSearch:
    """The checked options of one :func:`match` call (shared by :func:`slidesim.dask.match`).

    Attributes:
        k, threshold, border, min_distance: As for :func:`match` (``border`` is ``exclude_border``).
        angles, scales: The rotations and scale factors, or None when not searched.
        call: The keyword options of :func:`slidesim.similarity`, defaults filled.
    """

    k: int
    threshold: float | None
    border: int
    min_distance: int | None
    angles: list[float] | None
    scales: list[float] | None
    call: dict[str, Any]

    @property
    def transformed(self) -> bool:
        """Whether the bank is rotated or scaled."""
        return self.angles is not None or self.scales is not None

    def distance(self, h: int, w: int) -> int:
        """The suppression distance for h × w templates: ``min_distance``, or half the smaller side."""
        return max(1, min(h, w) // 2) if self.min_distance is None else self.min_distance

    def bank(
        self, templates: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(bank [Bk, T·R, C, h', w'], its mask, angles [R], scales [R]): the canonical templates and mask under
        every transform (template t under transform r at t·R + r), or as they are when none is searched."""
        if not self.transformed:
            return templates, mask, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        bank = transform_bank(templates, mask, self.angles or [0.0], self.scales or [1.0])
        return bank.templates, bank.mask, bank.angles, bank.scales


def prepare(
    metric: object,
    k: object,
    min_distance: object,
    threshold: object,
    rotations: object,
    scales: object,
    exclude_border: object,
    options: dict[str, Any],
) -> MatchSearch:
    """Check the arguments of :func:`match` that are not arrays (see there) -> :class:`MatchSearch`."""
    if options.get("channels", "joint") == "separate":
        raise SlidesimValueError(
            "`channels` must be 'joint' or 'mean' for match (one score per template); got 'separate'."
        )
    return MatchSearch(
        k=check_int("k", k, 1),
        threshold=check_threshold(threshold),
        border=check_int("exclude_border", exclude_border, 0),
        min_distance=None if min_distance is None else check_int("min_distance", min_distance, 1),
        angles=check_factors("rotations", rotations, positive=False),
        scales=check_factors("scales", scales, positive=True),
        call=with_defaults({**options, "metric": metric}),
    )


def match(
    images: ArrayLike,
    templates: ArrayLike,
    *,
    metric: str = "zncc",
    k: int = 1,
    min_distance: int | None = None,
    threshold: float | None = None,
    rotations: Sequence[float] | None = None,
    scales: Sequence[float] | None = None,
    subpixel: bool = True,
    exclude_border: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Matches:
    """Find the k best matches of every template in every image, with their angle and scale.

    Args:
        images: [B, C, H, W] or [H, W], as for :func:`slidesim.similarity`.
        templates: [T, C, h, w], [B, T, C, h, w] (a bank per image) or [h, w].
        metric: Any metric of :func:`slidesim.similarity`; sad, mad, ssd and ssd_normed are minimized.
        k: Matches per image and template.
        min_distance: Matches closer than this (Chebyshev, in score-map pixels) keep only the better one.
            Default: half the template's smaller side.
        threshold: Keep matches at least this good (scores >= threshold, or <= for the minimized metrics).
        rotations: Angles in degrees, counter-clockwise as displayed (y down), for example ``range(0, 360, 5)``.
        scales: Scale factors, for example ``[0.8, 0.9, 1.0, 1.1, 1.25]``.
        subpixel: Refine positions on the image data to a fraction of a pixel.
        exclude_border: Ignore matches within this many score-map pixels of the map's edges.
        progress: Called as progress(done, total) after each chunk of the bank (templates done of all), then,
            with sub-pixel refinement, from progress(0, matches) again after each refined match: each phase
            counts from 0 (for progress bars; refinement costs milliseconds per match, which adds up for
            large k).
        **options: stride, dilation, mode, padding, pad_value, mask, channels ("joint" or "mean"), circular,
            method, memory_limit: as for :func:`slidesim.similarity`. A mask is rotated and scaled with its
            template.

    Returns:
        :class:`Matches`.

    Raises:
        SlidesimTypeError: As for similarity; k, min_distance not ints; rotations or scales not sequences;
            subpixel not a bool.
        SlidesimValueError: As for similarity; empty or non-finite rotations, non-positive scales,
            channels="separate".

    Memory:
        Rotated and scaled templates stream through the engine in chunks; each chunk's maps are folded into the
        best score and the best transform per position. Peak memory is the image side, one chunk and the two
        best maps, whatever the number of transforms.

    Examples:
        >>> import numpy as np, slidesim
        >>> rng = np.random.default_rng(0)
        >>> image = rng.random((64, 80), dtype=np.float32)
        >>> found = slidesim.match(image, image[20:31, 30:39].copy())
        >>> round(float(found.y[0]), 2), round(float(found.x[0]), 2)  # centre of rows 20..30, columns 30..38
        (25.0, 34.0)
        >>> found = slidesim.match(image, np.rot90(image[20:31, 30:39]).copy(), rotations=[0, 90, 180, 270])
        >>> float(found.angle[0]), round(float(found.y[0]), 2), round(float(found.x[0]), 2)
        (270.0, 25.0, 34.0)
    """
    search = prepare(metric, k, min_distance, threshold, rotations, scales, exclude_border, options)
    subpixel = check_bool("subpixel", subpixel)
    call = search.call
    canon = canonicalize(images, templates, **call)
    _, T, _, h, w = canon.templates.shape
    numpy_out = canon.numpy_out
    bank_templates, bank_mask, transform_angles, transform_scales = search.bank(canon.templates, canon.mask)
    if search.transformed:
        bank_templates = bank_templates[0] if bank_templates.shape[0] == 1 else bank_templates
        bank_mask = bank_mask[0] if bank_mask.shape[0] == 1 else bank_mask
        canon = canonicalize(canon.images, bank_templates, **{**call, "mask": bank_mask})
    R = len(transform_angles)
    best, which = best_of_bank(canon, T, R, progress)
    higher = canon.spec.higher_is_better
    found = locate_peaks(best, search.k, search.distance(h, w), search.threshold, search.border, higher)
    columns = _columns(canon, call, found, best, which, transform_angles, transform_scales, subpixel, progress)
    if numpy_out:
        return Matches(*(c.numpy() for c in columns), maps=best.cpu().numpy())
    return Matches(*(c.to(canon.images.device) for c in columns), maps=best)


def _chunk(canon: Canonical) -> int:
    """Templates per chunk: their score maps, and the float64 window moments of masks that differ per template
    (a rotated template's mask does), fit a share of memory_limit."""
    problem = canon.problem
    per_pixel = canon.images.element_size()
    if canon.spec.family == "correlation" and canon.mask is not None and canon.mask.shape[1] > 1:
        per_pixel += 8 * _MOMENT_TEMPORARIES
    per_template = canon.images.shape[0] * problem.out_height * problem.out_width * per_pixel
    return int(max(1, min(canon.templates.shape[1], canon.memory_limit // _MAP_SHARE // max(1, per_template))))


def best_of_bank(
    canon: Canonical, T: int, R: int, progress: Callable[[int, int], None] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score [B, T, H', W'], index of the best transform [B, T, H', W'] int64) over the streamed bank, in
    which template t under transform r sits at index t·R + r. Ties keep the first transform; NaN never wins."""
    higher = canon.spec.higher_is_better
    problem = canon.problem
    B = canon.images.shape[0]
    shape = (B, T, problem.out_height, problem.out_width)
    worst = -torch.inf if higher else torch.inf
    best = torch.full(shape, worst, dtype=canon.images.dtype, device=canon.images.device)
    which = torch.zeros(shape, dtype=torch.int64, device=canon.images.device)
    total = canon.templates.shape[1]
    with torch.no_grad():
        for t0, t1, scores in select_engine(canon).stream(canon, _chunk(canon)):
            for j in range(t0, t1):
                t, r = divmod(j, R)
                s = scores[:, j - t0]
                better = s > best[:, t] if higher else s < best[:, t]
                best[:, t] = torch.where(better, s, best[:, t])
                which[:, t].masked_fill_(better, r)
            if progress is not None:
                progress(t1, total)
    return best, which


def best_first(rows: list[tuple], higher: bool) -> list[tuple]:
    """Match rows (image, template, y, x, score, ...) grouped by image and template, best score first within each
    group: refinement moves scores, so the integer peaks' order no longer holds. Ties keep the integer peaks' order;
    a score that is not a number goes last."""

    def key(row: tuple) -> tuple:
        score = row[4]
        return (row[0], row[1], score != score, -score if higher else score)

    return sorted(rows, key=key)  # stable: equal scores keep the integer peaks' order


def _columns(
    canon: Canonical,
    call: dict[str, Any],
    found: torch.Tensor,
    best: torch.Tensor,
    which: torch.Tensor,
    angles: torch.Tensor,
    scales: torch.Tensor,
    subpixel: bool,
    progress: Callable[[int, int], None] | None,
) -> list[torch.Tensor]:
    """The fields of :class:`Matches` for integer peaks found [N, 4] (b, t, y, x) of the best map, on the CPU."""
    R = len(angles)
    (sy, sx) = canon.stride
    oy, ox = window_origin(canon)
    b, t, y, x = found.to(best.device).T
    # one gather for every peak: a lookup per peak costs more than the peak search itself for large k
    transforms = which[b, t, y, x].tolist()
    scores = best[b, t, y, x].tolist()
    angle_of, scale_of = angles.tolist(), scales.tolist()
    rows = []
    if subpixel and progress is not None and len(found):
        progress(0, len(found))
    for i, (b, t, y, x) in enumerate(found.tolist()):
        r, score = transforms[i], scores[i]
        cy, cx = y * sy + oy, x * sx + ox
        if subpixel:
            cy, cx, score = refine_peak(canon, call, b, t * R + r, (cy, cx))
            if progress is not None:
                progress(i + 1, len(found))
        rows.append((b, t, cy, cx, score, angle_of[r], scale_of[r]))
    columns = list(zip(*best_first(rows, canon.spec.higher_is_better), strict=True)) if rows else [()] * 7
    ints = [torch.tensor(c, dtype=torch.int64) for c in columns[:2]]
    floats = [torch.tensor(c, dtype=torch.float64) for c in columns[2:]]
    return [*ints, *floats]
