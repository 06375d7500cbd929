"""Coarse-to-fine search over position × angle × scale (floor L6), reached by ``match(..., search=...)``.

Image and template are halved ``levels`` times by 2 × 2 area averaging. At the coarsest level every position is
scored under every pose of a grid that the template's size there needs (a turn or a change of scale that moves the
template's farthest pixel by about one pixel), by the same streaming search that :func:`slidesim.match` runs at full
resolution (passed in as ``exhaustive``). Without a mask and for 8 angles or more, each pose is seen there through
the footprint common to the angles of its 15° sector (:class:`SectorStream`): a few masks per scale, whose window
statistics are computed once each, so that most angles cost one cross-correlation (each turned footprint would
need its own statistics), while the mask keeps nearly all of the template. Each
scale is searched wherever its own footprint fits the image (the image is padded with weightless reflections where the
largest scale's canvas needs more room). The best ``beam`` candidates of each image and template are carried down
(:func:`default_beam`): peaks of the best pose within each band of neighbouring scales, each band keeping its share
of the beam before the best of the rest fill it, at least a quarter of the template apart unless
their poses differ by several steps (at most four poses per place). At each finer level a candidate's position is
doubled and re-searched ±3 pixels around it, under the poses of the finer grid within one coarser step of its pose
(turned footprints, exact scores), by scoring a crop of the image against a small bank of templates drawn by
:class:`slidesim.banks.TransformStream`; the candidates of a level are scored together, every window of their stacked
crops in one pass by :func:`slidesim.kernels.numba_dense.dense_scores` (or one :func:`slidesim.similarity` call
with a bank per crop without numba). At full resolution the scores are those of the metric at
whole-pixel positions, as the exhaustive search computes them. For ranges given as :func:`slidesim.interval`, the
angle and scale are then refined below the grid step (parabolas through the scores at neighbouring poses), and the
position to a fraction of a pixel by :func:`slidesim._refine_many.refine_peaks`.

Guarantee: the exhaustive search returns the best pose of the grid at every position; the pyramid returns poses
scored exactly, but it can miss a pose whose coarse version does not rank among the beam at the coarsest level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._interval import Interval, angle_step, interval_values, is_full_circle, scale_step
from ._refine_many import Peak, refine_peaks
from ._similarity import similarity
from ._validate import Canonical, canonicalize, options_of, window_origin
from .banks import TransformStream, canvas_size, usable_scales
from .errors import SlidesimTypeError, SlidesimValueError
from .kernels.area_sums import can_score_in_place
from .peaks import locate_peaks
from .scoring.rescoring import IN_PLACE_METRICS

__all__ = [
    "SEARCHES",
    "PoseSpace",
    "Pyramid",
    "check_search",
    "default_beam",
    "finish",
    "plan_pyramid",
    "pyramid_search",
]

SEARCHES = ("auto", "pyramid", "exhaustive")
COARSEST_SIDE = 12  # pixels: the template's smaller side at the coarsest level stays at least this
REACH = 3  # pixels searched either side of a candidate's doubled position at each finer level
CLIMB_MOVES = 4  # searches per candidate and level while its best lands on the edge of the one before
_FIT_STEPS = (1.0, 0.25)  # sub-step refinement: parabolas through poses this many grid steps apart, in turn
_FIT_MOVES = 3  # parabola fits per axis and step while the best pose is an outer one
_SECTOR_ANGLES = 8  # the coarsest level scores this many angles or more through footprints shared by sectors
_SECTOR_DEGREES = 15.0  # ... of this many degrees (see SectorStream)
_AUTO_GAIN = 2.0  # search="auto" takes the pyramid when its estimated cost is this many times lower
_BEAM = 8  # candidates carried down by default (see default_beam)
_PEAK_POOL = 8  # the coarsest level's local maxima considered per beam candidate
_DISTINCT_STEPS = 3  # coarsest-grid steps of angle (or of log scale) that make two poses distinct candidates
_SCALES_PER_BAND = 4  # the coarsest level keeps the best of each band of this many neighbouring scales
# Candidates of distinct poses kept within one suppression neighbourhood of the coarsest level: where a wrong pose
# (most often a wrong scale) outscores the right one at its place, the right one is often third or fourth there;
# over 300 real-photo trials 4 found 4 of 11 poses that 2 missed and lost one (recall 96.3 -> 97.3 %).
_POSES_PER_PLACE = 4


@dataclass(frozen=True)
class PoseSpace:
    """The poses searched: the finest grid of angles and scales, and the ranges they sample (if any).

    Attributes:
        angles: Degrees, the finest grid (the values given, or the grid of a range).
        scales: Factors, the finest grid.
        angle_range: The rotation range the grid samples (refined below the grid), or None.
        scale_range: The scale range, or None.
        angle_spacing: Degrees between grid angles at full resolution (coarser levels double it).
        scale_spacing: log(scale) between grid scales at full resolution.
    """

    angles: list[float]
    scales: list[float]
    angle_range: Interval | None
    scale_range: Interval | None
    angle_spacing: float
    scale_spacing: float

    @property
    def poses(self) -> int:
        return len(self.angles) * len(self.scales)


def pose_space(
    template_size: tuple[int, int],
    angles: Sequence[float] | None,
    scales: Sequence[float] | None,
    angle_range: Interval | None,
    scale_range: Interval | None,
) -> PoseSpace:
    """The grid of poses for an h × w template: the given values, or a range sampled so that the farthest pixel
    moves by at most about one pixel from one pose to the next (at the largest scale)."""
    h, w = template_size
    largest = scale_range.stop if scale_range is not None else max(scales or [1.0])
    a_step, s_step = angle_step(h, w, largest), scale_step(h, w, largest)
    if scale_range is not None:
        scales = interval_values(scale_range, s_step, rotations=False)
        s_step = math.log(scale_range.stop / scale_range.start) / max(1, len(scales) - 1)
    if angle_range is not None:
        angles = interval_values(angle_range, a_step, rotations=True)
        a_step = (360.0 if is_full_circle(angle_range) else angle_range.span) / max(
            1, len(angles) - (0 if is_full_circle(angle_range) else 1)
        )
    return PoseSpace(
        angles=list(angles) if angles is not None else [0.0],
        scales=list(scales) if scales is not None else [1.0],
        angle_range=angle_range,
        scale_range=scale_range,
        angle_spacing=a_step,
        scale_spacing=s_step,
    )


def default_beam(k: int, space: PoseSpace) -> int:
    """Candidates carried down when ``beam`` is not given: max(8, 2k), eight times that when more than one scale is
    searched. A coarse level tells scale apart least well (a template shrunk to a few pixels fits many places
    at a wrong scale): over 300 real-photo trials of angle × scale (benchmarks/pose_recall.py) a beam of 16
    missed 22 poses where 8 missed 31 (median time per trial 0.70 s against 0.57 s); with the coarsest level's
    sector footprints, a beam of 32 missed 12 where 16 missed 18; with four poses per place, a beam of 64 missed
    5 where 32 missed 8 (3 found, none lost), once the descent drew its members in few calls (the 96² angle ×
    scale search in a 1024² photograph 0.50-0.57 s with 64 against 0.48-0.56 s with 32 before); a full circle at
    one scale keeps 8. Only the coarsest level and its first descent see the wider beam (see
    :func:`pyramid_search`)."""
    beam = max(_BEAM, 2 * k)
    return 8 * beam if len(space.scales) > 1 else beam


def check_search(search: object, levels: object, beam: object) -> tuple[str, int | None, int | None]:
    """The checked ``search``, ``levels`` and ``beam`` of :func:`slidesim.match`.

    Raises:
        SlidesimTypeError: ``search`` not a string, ``levels`` or ``beam`` not an int (or None).
        SlidesimValueError: ``search`` not one of :data:`SEARCHES`; ``levels`` below 0; ``beam`` below 1.
    """
    if not isinstance(search, str):
        raise SlidesimTypeError(f"`search` must be one of {', '.join(map(repr, SEARCHES))}; got {search!r}.")
    if search.lower() not in SEARCHES:
        raise SlidesimValueError(f"`search` must be one of {', '.join(map(repr, SEARCHES))}; got {search!r}.")
    checked = []
    for name, value, low in (("levels", levels, 0), ("beam", beam, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise SlidesimTypeError(f"`{name}` must be an int or None (chosen for you); got {value!r}.")
        if value is not None and value < low:
            raise SlidesimValueError(f"`{name}` must be at least {low} or None (chosen for you); got {value}.")
        checked.append(value)
    return search.lower(), checked[0], checked[1]


def _unsupported(canon: Canonical, border: int) -> str | None:
    """Why the pyramid cannot search this call (None when it can)."""
    reasons = (
        (canon.mode != "valid", f"mode {canon.mode!r} (the pyramid searches mode 'valid')"),
        (canon.stride != (1, 1), f"stride {canon.stride}"),
        (canon.dilation != (1, 1), f"dilation {canon.dilation}"),
        (canon.periods is not None, "circular channels"),
        (canon.problem.nonfinite != "none", "NaN or infinite image pixels"),
        (canon.problem.requires_grad, "inputs that require gradients"),
        (border > 0, "exclude_border"),
    )
    return next((why for bad, why in reasons if bad), None)


def _largest_levels(canon: Canonical, space: PoseSpace) -> int:
    """The most levels at which the template's smaller side stays >= COARSEST_SIDE and every pose of the coarsest
    grid still fits the coarsest image."""
    h, w = canon.templates.shape[-2:]
    H, W = canon.image_shape[-2:]
    levels = 0
    while True:
        f = 2 ** (levels + 1)
        hl, wl, Hl, Wl = h // f, w // f, H // f, W // f
        if min(hl, wl) < COARSEST_SIDE:
            return levels
        angles = thinned(space.angles, space.angle_spacing * f, circular=True)
        scales = [math.exp(v) for v in thinned([math.log(s) for s in space.scales], space.scale_spacing * f)]
        Hc, Wc = canvas_size(hl, wl, angles, scales)
        low, _ = usable_scales((hl, wl), angles, None)
        if Hc > Hl or Wc > Wl or min(scales) < low:
            return levels
        levels += 1


def plan_pyramid(
    search: str, levels: int | None, canon: Canonical, space: PoseSpace, border: int, beam: int
) -> tuple[int, str]:
    """(levels of the pyramid, why) for a call; 0 levels means the exhaustive search.

    Raises:
        SlidesimValueError: ``search="pyramid"`` for a call the pyramid cannot search (the reason is named), or
            more ``levels`` than the template and image allow.
    """
    if search == "exhaustive":
        return 0, "search='exhaustive'"
    if search == "auto" and space.angle_range is None and space.scale_range is None:
        # a sequence of poses keeps its meaning: the exact best of those poses everywhere, and the maps
        return 0, "a sequence of poses is searched exhaustively (search='pyramid' searches it coarse to fine)"
    why = _unsupported(canon, border)
    if why is not None:
        if search == "pyramid":
            raise SlidesimValueError(
                f"`search` 'pyramid' cannot search {why}; use search='exhaustive' (or 'auto', which takes it)."
            )
        return 0, f"the pyramid cannot search {why}"
    most = _largest_levels(canon, space)
    if levels is not None and levels > most:
        h, w = canon.templates.shape[-2:]
        raise SlidesimValueError(
            f"`levels` must be at most {most} for {h}x{w} templates on these images (the coarsest template keeps "
            f"{COARSEST_SIDE} pixels a side and fits the image); got {levels}. Use levels={most} or None."
        )
    chosen = most if levels is None else levels
    if chosen == 0:
        return 0, f"the template is too small for a pyramid (under {2 * COARSEST_SIDE} pixels a side)"
    if search == "pyramid" or levels is not None:
        return chosen, "search='pyramid'"
    exhaustive_cost, pyramid_cost = _costs(canon, space, chosen, beam)
    if exhaustive_cost > _AUTO_GAIN * pyramid_cost:
        return chosen, "the pyramid is estimated cheaper"
    return 0, "the exhaustive search is estimated cheaper"


def _costs(canon: Canonical, space: PoseSpace, levels: int, beam: int) -> tuple[float, float]:
    """Rough costs (window-pose scorings, with a template-sized local search counted per tap) of the exhaustive
    search and of the pyramid: enough to tell which is far cheaper, not a timing."""
    B, T = canon.image_shape[0], canon.templates.shape[1]
    H, W = canon.image_shape[-2:]
    h, w = canon.templates.shape[-2:]
    f = 2**levels
    coarse_poses = len(thinned(space.angles, space.angle_spacing * f, circular=True)) * len(
        thinned([math.log(s) for s in space.scales], space.scale_spacing * f)
    )
    fft = math.log2(max(2, H * W))  # an FFT correlation costs about log(HW) per position
    exhaustive = B * T * space.poses * H * W * fft
    local = (2 * REACH + 1) ** 2 * min(25, space.poses) * h * w * 4 / 3  # 1 + 1/4 + 1/16 ... of full resolution
    pyramid = B * T * (coarse_poses * H * W / f**2 * fft + beam * local)
    return exhaustive, pyramid


def thinned(values: Sequence[float], step: float, circular: bool = False) -> list[float]:
    """The sorted ``values`` thinned to steps of at most ``step`` (the farthest value within ``step`` of the last
    one kept comes next; a wider gap of the values' own is kept as it is), with both ends (for ``circular``
    angles in degrees, the last only where the gap round the circle needs it). Every value is then within
    ``step`` / 2 of a kept one where the values are no sparser than ``step``."""
    ordered = sorted(values)
    reach = step * (1 + 1e-6)
    kept = [ordered[0]]
    for previous, value in itertools.pairwise(ordered):
        if value - kept[-1] > reach and previous != kept[-1]:
            kept.append(previous)
        if value - kept[-1] > reach:
            kept.append(value)
    wrap = ordered[0] + 360.0 - kept[-1] > reach if circular else True
    if ordered[-1] != kept[-1] and wrap:
        kept.append(ordered[-1])
    return kept


def _turn(a: float, b: float) -> float:
    """Signed smallest turn from angle b to angle a, degrees in (−180, 180]."""
    d = math.fmod(a - b, 360.0)
    return d - 360.0 if d > 180 else d + 360.0 if d <= -180 else d


def _poses_close(a: Candidate, b: Candidate, angle_reach: float, scale_reach: float) -> bool:
    """Whether two candidates' poses differ by less than ``angle_reach`` degrees (round the circle) and less than
    ``scale_reach`` in log scale."""
    return abs(_turn(a.angle, b.angle)) < angle_reach and abs(math.log(a.scale / b.scale)) < scale_reach


def near(values: Sequence[float], centre: float, radius: float, step: float, angles: bool) -> list[float]:
    """The ``values`` within ``radius`` of ``centre`` (round the circle for ``angles``), and on each side at least
    the nearest value (the grid of the level above may have kept every value of a sparse sequence), no two closer
    than ``step`` walking outwards from the one nearest the centre; never empty."""
    given = np.asarray(values, dtype=np.float64)
    turns = given - centre
    if angles:  # as _turn: the signed smallest turn, in (−180, 180]
        turns = np.fmod(turns, 360.0)
        turns = np.where(turns > 180, turns - 360.0, np.where(turns <= -180, turns + 360.0, turns))
    order = np.lexsort((given, turns))  # by offset, then by value (a fine grid of the full circle has hundreds)
    offsets = list(zip(turns[order].tolist(), given[order].tolist(), strict=True))
    middle = int(np.argmin(np.abs(turns[order])))
    d0 = offsets[middle][0]
    kept = [offsets[middle]]
    for side in (offsets[middle + 1 :], offsets[:middle][::-1]):
        last = d0
        for i, (d, v) in enumerate(side):
            if abs(d - d0) > radius * (1 + 1e-6) and i > 0:
                break
            if abs(d - last) >= step * (1 - 1e-6) and (d, v) not in kept:
                kept.append((d, v))
                last = d
    return [v for _, v in sorted(kept)]


@dataclass(frozen=True)
class Candidate:
    """A pose of template t in image b: centre (y, x) in pixels of its level, angle, scale, score there."""

    b: int
    t: int
    y: float
    x: float
    angle: float
    scale: float
    score: float


@dataclass(frozen=True)
class Pyramid:
    """Images [B, C, H, W], bank [Bk, T, C, h, w] and mask [Bm, Tm, Cm, h, w] (or None) of each level, level 0
    the validated call's own."""

    images: list[torch.Tensor]
    templates: list[torch.Tensor]
    masks: list[torch.Tensor | None]


def _halved(planes: torch.Tensor) -> torch.Tensor:
    """2 × 2 area averages of [..., H, W] (an odd last row or column is dropped)."""
    lead = planes.shape[:-2]
    flat = planes.reshape(-1, 1, *planes.shape[-2:])
    pooled = F.avg_pool2d(flat, 2)
    return pooled.reshape(*lead, *pooled.shape[-2:])


def build_pyramid(canon: Canonical, levels: int) -> Pyramid:
    """The validated call's images, templates and mask, halved ``levels`` times."""
    images, templates, masks = [canon.images], [canon.templates], [canon.mask]
    for _ in range(levels):
        images.append(_halved(images[-1]))
        templates.append(_halved(templates[-1]))
        masks.append(None if masks[-1] is None else _halved(masks[-1]))
    return Pyramid(images, templates, masks)


def _steps(space: PoseSpace, level: int) -> tuple[float, float]:
    """(degrees, log scale) between the poses searched at ``level`` (level 0: every pose of the grid)."""
    if level == 0:
        return 0.0, 0.0
    return space.angle_spacing * 2**level, space.scale_spacing * 2**level


def _grid_at(space: PoseSpace, level: int) -> tuple[list[float], list[float]]:
    """The angles and scales searched everywhere at the coarsest ``level``."""
    a_step, s_step = _steps(space, level)
    angles = thinned(space.angles, a_step, circular=True)
    scales = [math.exp(v) for v in thinned([math.log(s) for s in space.scales], s_step)]
    return angles, scales


def _bank_args(templates: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A canonical bank and mask as similarity and canonicalize take them (no leading 1 for one bank)."""
    templates = templates[0] if templates.shape[0] == 1 else templates
    if mask is not None and mask.shape[0] == 1:
        mask = mask[0]
    return templates, mask


def _coarsest(
    canon: Canonical,
    pyramid: Pyramid,
    space: PoseSpace,
    levels: int,
    beam: int,
    distance: int,
    exhaustive: Callable,
    progress: Callable[[int, int], None] | None,
) -> list[Candidate]:
    """The best ``beam`` positions of each image and template at the coarsest level, each with its best pose."""
    templates, mask = _bank_args(pyramid.templates[levels], pyramid.masks[levels])
    # in float64: a float32 cross term leaves the low-contrast windows of a photograph to an exact rescoring
    # that costs more than the whole float64 search, and a coarse level only ranks candidates
    images = pyramid.images[levels]
    images = images.to(torch.float64) if canon.spec.family == "correlation" else images
    angles, scales = _grid_at(space, levels)
    h, w = templates.shape[-2:]
    sectors = mask is None and len(angles) >= _SECTOR_ANGLES
    if sectors:  # the members of a sector stream one after the other, so that they share its statistics
        angles = sector_order(angles, h, w, _SECTOR_DEGREES)
    canvas = canvas_size(h, w, angles, scales)
    # A pose is searched wherever its own footprint fits the image, which for the smaller scales reaches nearer
    # the edges than the common canvas does: the image is padded with weightless reflections by the difference, and
    # each scale's positions whose footprint leaves the image are set to the worst score.
    smallest = canvas_size(h, w, angles, [min(scales)])
    pads = [max(0, math.ceil((side - full) / 2)) for side, full in zip(canvas, smallest, strict=True)]
    padded = _padded(images, pads)
    coarse = canonicalize(padded, templates, **options_of(canon, mask=mask))
    best, which, head = _per_scale_search(coarse, angles, scales, canvas, sectors, pads, exhaustive, progress)
    stream = TransformStream(coarse.templates, coarse.mask, angles, scales)  # the poses r = scale · angles + angle
    apart = max(1, min(min(h, w) // 4, math.ceil(distance / 2**levels)))
    oy, ox = window_origin(head)
    oy, ox = oy - pads[0], ox - pads[1]
    peaks = _diverse_peaks(best, which, stream, beam, apart, head.spec.higher_is_better, _steps(space, levels))
    return [replace(c, y=c.y + oy, x=c.x + ox) for c in peaks]


def _padded(images: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """[B, C, H, W] padded by ``pads`` (rows, columns) on each side with their reflection: the padding only ever
    lies under weightless pixels of a valid pose, and a reflected texture, unlike a flat band, leaves no windows
    of low variance for the exact rescoring."""
    if not any(pads):
        return images
    mode = "reflect" if all(p < n for p, n in zip(pads, images.shape[-2:], strict=True)) else "replicate"
    return F.pad(images, (pads[1], pads[1], pads[0], pads[0]), mode=mode)


def _scale_bands(count: int) -> int:
    """How many bands of neighbouring scales keep maps of their own at the coarsest level (see _per_scale_search)."""
    return max(1, math.ceil(count / _SCALES_PER_BAND))


def _diverse_peaks(
    best: torch.Tensor,
    which: torch.Tensor,
    stream: TransformStream,
    beam: int,
    apart: int,
    higher: bool,
    steps: tuple[float, float],
) -> list[Candidate]:
    """The ``beam`` best peaks of each image and template on the coarsest level's maps, centres in map positions.

    Peaks closer than ``apart`` suppress each other only when their poses are close too (within
    ``_DISTINCT_STEPS`` grid ``steps`` of angle and of log scale), and at most ``_POSES_PER_PLACE`` share a
    neighbourhood. At a coarse level a wrong pose can outscore the right one a pixel or two away (a symmetric
    texture turned by 180°, a rounder part of the scene), and the finer levels only search near the pose they are
    given: a suppression by position alone would drop the right pose for good."""
    templates = stream.n_templates
    bands = best.shape[1] // templates
    # 3 × 3 local maxima of each band's map (best first per map b, band · T + t), then best first per (b, t)
    local = locate_peaks(best, beam * _PEAK_POOL, 1, None, 0, higher)
    b, g, y, x = local.to(best.device).T
    poses = which[b, g, y, x].cpu().tolist()
    scores = best[b, g, y, x].cpu().to(torch.float64).tolist()
    band_of = (local[:, 1] // templates).tolist()
    local[:, 1] %= templates
    order = sorted(range(len(scores)), key=lambda i: (*local[i, :2].tolist(), -scores[i] if higher else scores[i]))
    a_far, s_far = (_DISTINCT_STEPS * step * (1 - 1e-6) for step in steps)
    kept: list[Candidate] = []
    per_group: dict[tuple[int, int], int] = {}
    per_band: dict[tuple[int, int, int], int] = {}
    taken: set[int] = set()
    # A template shrunk to a few coarse pixels correlates well with more of the scene, so the smaller scales' bands
    # would fill the beam by score alone: each band first keeps its best max(1, beam // bands), then the best of
    # the rest fill the beam.
    quota = max(1, beam // bands)
    for share in (quota, beam):
        for i in order:
            (bi, ti, yi, xi), r, s = local[i].tolist(), poses[i], scores[i]
            group, band = (bi, ti), (bi, ti, band_of[i])
            if i in taken or not math.isfinite(s) or per_group.get(group, 0) >= beam:
                continue
            if per_band.get(band, 0) >= share:
                continue
            c = Candidate(bi, ti, float(yi), float(xi), float(stream.angles[r]), float(stream.scales[r]), s)
            near = [o for o in kept if (o.b, o.t) == group and max(abs(o.y - c.y), abs(o.x - c.x)) < apart]
            if len(near) >= _POSES_PER_PLACE or any(_poses_close(o, c, a_far, s_far) for o in near):
                continue
            kept.append(c)
            taken.add(i)
            per_group[group] = per_group.get(group, 0) + 1
            per_band[band] = per_band.get(band, 0) + 1
    return sorted(kept, key=lambda c: (c.b, c.t, -c.score if higher else c.score))


def _per_scale_search(
    coarse: Canonical,
    angles: Sequence[float],
    scales: Sequence[float],
    canvas: tuple[int, int],
    sectors: bool,
    pads: Sequence[int],
    exhaustive: Callable,
    progress: Callable[[int, int], None] | None,
) -> tuple[torch.Tensor, torch.Tensor, Canonical]:
    """(best [B, N·T, H', W'], its pose r = scale index · angles + angle index [B, N·T, H', W'], the call of one
    bank) of every angle and scale: one streamed search per scale on one ``canvas``, so that the maps line up,
    through the footprints of their angles' sectors (``sectors``) or their own turned footprints. The best is
    taken within each of
    N bands of neighbouring scales (:func:`_scale_bands`; band n's maps at n·T + t): at a coarse level the
    scale is the pose's least certain part, and a position's best over every scale would hide the right one.

    ``coarse`` holds the image padded by ``pads`` (rows, columns) on each side; positions where a scale's footprint
    (under any of the angles) leaves the unpadded image keep the worst score for that scale."""
    head = None
    bands = _scale_bands(len(scales))
    best: list[torch.Tensor | None] = [None] * bands
    which: list[torch.Tensor | None] = [None] * bands
    higher = coarse.spec.higher_is_better
    worst = -math.inf if higher else math.inf
    h, w = coarse.templates.shape[-2:]
    sizes = [n - 2 * pad for n, pad in zip(coarse.images.shape[-2:], pads, strict=True)]
    total = len(angles) * len(scales)
    for i, scale in enumerate(scales):
        band = i * bands // len(scales)
        done = i * len(angles)
        report = None if progress is None else (lambda d, _n, done=done: progress(done + d, total))
        if sectors:
            stream = SectorStream(coarse.templates, angles, scale, canvas, _SECTOR_DEGREES)
        else:
            stream = TransformStream(coarse.templates, coarse.mask, angles, [scale])
            stream.canvas = canvas  # drawn about the canvas centre: a larger canvas only adds weightless pixels
        scores, poses, head = exhaustive(coarse, stream, report)
        footprint = canvas_size(h, w, angles, [scale])
        for axis, (full, side, size, pad) in enumerate(zip(footprint, canvas, sizes, pads, strict=True), start=2):
            # map position i is centred at i + (side − 1) / 2 − pad in the image; the footprint fits from there
            # ± (full − 1) / 2
            first = math.ceil((full - side) / 2 + pad)
            last = math.floor(size + pad - (full + side) / 2) + 1  # one past the last such position
            scores.narrow(axis, 0, max(0, min(first, scores.shape[axis]))).fill_(worst)
            scores.narrow(axis, max(0, last), max(0, scores.shape[axis] - last)).fill_(worst)
        poses = poses + done
        if best[band] is None:
            best[band], which[band] = scores, poses
            continue
        better = scores > best[band] if higher else scores < best[band]
        best[band] = torch.where(better, scores, best[band])
        which[band] = torch.where(better, poses, which[band])
    return torch.cat(best, dim=1), torch.cat(which, dim=1), head


def _sector(angle: float, period: float, width: float) -> int:
    """The sector (of ``width`` degrees, sector 0 centred on 0°) that ``angle`` falls in, modulo ``period``."""
    count = max(1, round(period / width))
    return math.floor((angle % period) / (period / count) + 0.5) % count


def sector_order(angles: Sequence[float], h: int, w: int, width: float) -> list[float]:
    """The angles grouped by sector (see :class:`SectorStream`), each group in the order given."""
    period = 90.0 if h == w else 180.0
    order = sorted(range(len(angles)), key=lambda i: (_sector(float(angles[i]), period, width), i))
    return [float(angles[i]) for i in order]


class SectorStream(TransformStream):
    """Templates under every angle at one scale, each seen through the footprint common to every angle of its
    sector (angles within ``width`` degrees, modulo 90° for a square template and 180° otherwise): the members of
    a sector share one mask, so that a streamed bank computes the window statistics of each sector once, and the
    mask keeps nearly the whole turned template.

    The disk inscribed in the template is common to every angle (one mask per scale, the cheapest), but it leaves
    out a fifth of a square template, which a coarse level's few pixels cannot spare: over 300 real-photo trials of
    angle × scale (benchmarks/pose_recall.py) the pyramid missed 24 poses through the disk and 18 through 15°
    sectors (13 of the 24 found, 7 others lost); through every angle's own footprint it found 15 of 31 such poses
    near the truth where 15° sectors found 8 and the disk 5, but a 64² template's full circle in a 1024² photo took
    0.25-0.29 s against 0.12-0.15 s through sectors and 0.06-0.07 s through the disk (96²: 0.06-0.07, 0.042-0.044
    and 0.039-0.042 s).

    Args:
        templates: [Bk, T, C, h, w] (canonical bank, float, no mask of its own).
        angles: Degrees (best grouped by sector: :func:`sector_order`).
        scale: The factor.
        canvas: (rows, columns) of the template's parity that hold it under every angle.
        width: Degrees of a sector.
    """

    def __init__(
        self, templates: torch.Tensor, angles: Sequence[float], scale: float, canvas: tuple[int, int], width: float
    ) -> None:
        super().__init__(templates, None, angles, [scale])
        self.canvas = canvas
        h, w = templates.shape[-2:]
        period = 90.0 if h == w else 180.0
        self.sector_of = [_sector(a, period, width) for a in self.angle_list]
        _, footprints = TransformStream.draw(self, 0, len(self.angle_list))  # [1, A, 1, Hc, Wc] each 0 or 1
        self.masks: dict[int, torch.Tensor] = {}
        for sector in dict.fromkeys(self.sector_of):
            members = [i for i, s in enumerate(self.sector_of) if s == sector]
            self.masks[sector] = footprints[:, members].amin(dim=1, keepdim=True).contiguous()

    def draw(self, j0: int, j1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Members j0..j1 -> (templates [Bk, j1 − j0, C, Hc, Wc] zero outside their sector's mask, the masks
        [1, j1 − j0, 1, Hc, Wc])."""
        pictures, _ = super().draw(j0, j1)
        masks = torch.cat([self.masks[self.sector_of[j % len(self.angle_list)]] for j in range(j0, j1)], dim=1)
        return pictures * masks, masks


@dataclass(frozen=True)
class LocalScores:
    """Scores of poses [R] at whole-pixel centres around a candidate: scores [R, ny, nx] (float64, CPU, worst
    where not a number), the centre (y0, x0) of [.., 0, 0], the poses' angles and scales [R]."""

    scores: torch.Tensor
    y0: float
    x0: float
    angles: torch.Tensor
    scales: torch.Tensor


def local_scores(
    canon: Canonical,
    image: torch.Tensor,
    templates: torch.Tensor,
    mask: torch.Tensor | None,
    c: Candidate,
    angles: Sequence[float],
    scales: Sequence[float],
    reach: int,
) -> LocalScores | None:
    """The metric of template ``c.t`` of bank ``templates`` [Bk, T, C, h, w] (mask [Bm, Tm, Cm, h, w] or None)
    under every (scale, angle) at the whole-pixel centres within ``reach`` of (c.y, c.x) in ``image`` [B, C, H, W]
    (positions whose window leaves the image are not scored); None when no window fits.

    The windows are scored by :func:`slidesim.similarity` with the call's options on a crop of the image: the same
    numbers as the full search gives at those positions (pixels outside a drawn template weigh nothing, whatever
    the canvas).
    """
    bank = templates[c.b if templates.shape[0] > 1 else 0, c.t][None, None]
    weights = None if mask is None else mask[c.b if mask.shape[0] > 1 else 0, c.t if mask.shape[1] > 1 else 0]
    stream = TransformStream(bank, None if weights is None else weights[None, None], angles, scales)
    Hc, Wc = stream.canvas
    H, W = image.shape[-2:]
    top, left = round(c.y - (Hc - 1) / 2), round(c.x - (Wc - 1) / 2)
    r0, r1 = max(0, top - reach), min(H, top + reach + Hc)
    c0, c1 = max(0, left - reach), min(W, left + reach + Wc)
    if r1 - r0 < Hc or c1 - c0 < Wc:
        return None
    pictures, drawn = _drawn(stream, 0, stream.members)
    crop = image[c.b : c.b + 1, :, r0:r1, c0:c1]
    scores = _local_similarity(canon, crop, pictures, drawn)[0].to(torch.float64).cpu()
    worst = -math.inf if canon.spec.higher_is_better else math.inf
    scores = scores.nan_to_num(nan=worst)
    return LocalScores(scores, r0 + (Hc - 1) / 2, c0 + (Wc - 1) / 2, stream.angles, stream.scales)


def _local_similarity(
    canon: Canonical, crops: torch.Tensor, pictures: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The scores [N, R, ny, nx] of crops [N, C, H, W] against their banks pictures [1 or N, R, C, Hc, Wc] with
    weights [1 or N, R, Cm, Hc, Wc], as :func:`slidesim.similarity` gives them with the call's options.

    A local search's crops leave a few dozen centres per pose: where the numba kernels apply (finite crops, valid
    windows of stride 1, channels joint and not circular, a correlation metric or ssd, numba installed, no
    gradient) every window is scored in place in one pass (:func:`slidesim.kernels.numba_dense.dense_scores`,
    the reference's numbers to float64 round-off), which costs a fraction of a masked similarity call's
    transforms and window statistics: 2 crops × 5 poses × 49 centres of a 700 × 500 template turned on an
    858 × 838 canvas in 44 ms against 1.2 s.
    """
    H, W = crops.shape[-2:]
    Hc, Wc = pictures.shape[-2:]
    dy, dx = canon.dilation
    fits = dy * (Hc - 1) < H and dx * (Wc - 1) < W
    if fits and _in_place(canon, crops, pictures):
        from .kernels.numba_dense import dense_scores

        return dense_scores(crops, pictures, weights, (dy, dx), canon.spec.name)
    bank = pictures if len(pictures) > 1 else pictures[0]
    mask = weights if len(weights) > 1 else weights[0]
    return similarity(crops, bank, **options_of(canon, mask=mask))


def _in_place(canon: Canonical, crops: torch.Tensor, pictures: torch.Tensor) -> bool:
    """Whether :func:`_local_similarity` may score windows one by one in place."""
    grad = torch.is_grad_enabled() and (crops.requires_grad or pictures.requires_grad)
    return (
        not grad
        and canon.spec.name in IN_PLACE_METRICS
        and canon.mode == "valid"
        and tuple(canon.stride) == (1, 1)
        and canon.channels_mode == "joint"
        and canon.periods is None
        and canon.method == "auto"
        and can_score_in_place(not crops.is_floating_point() or bool(torch.isfinite(crops).all()), crops)
    )


def _best(local: LocalScores, c: Candidate, higher: bool) -> Candidate | None:
    """The candidate moved to the best pose and centre of ``local``."""
    flat = local.scores.reshape(-1)
    i = int(torch.argmax(flat) if higher else torch.argmin(flat))
    score = float(flat[i])
    if math.isinf(score):
        return None
    ny, nx = local.scores.shape[-2:]
    r, rest = divmod(i, ny * nx)
    iy, ix = divmod(rest, nx)
    return replace(
        c,
        y=local.y0 + iy,
        x=local.x0 + ix,
        angle=float(local.angles[r]),
        scale=float(local.scales[r]),
        score=score,
    )


def _drawn(stream: TransformStream, j0: int, j1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Members j0..j1 of ``stream`` drawn, canonical: a pixel of weight zero is 0 even where the template holds
    NaN or ±inf (the drawing of a finite template is finite: only then is a drawn canvas searched for them)."""
    pictures, drawn = stream.draw(j0, j1)
    if not bool(torch.isfinite(stream.source).all()):
        pictures = torch.where(drawn > 0, pictures, 0.0)
    return pictures, drawn


class MemberCache:
    """Members of a level's bank drawn on the canvases asked for, kept for the level: a candidate searched again
    around a moved centre (and candidates that share poses) reuse them, within ``budget`` bytes (past it, what
    is kept is dropped before more is drawn).

    Args:
        templates: The level's bank [Bk, T, C, h, w].
        mask: Its mask [Bm, Tm, Cm, h, w] or None.
        budget: Bytes the kept members may take.
    """

    def __init__(self, templates: torch.Tensor, mask: torch.Tensor | None, budget: int) -> None:
        self.templates, self.mask, self.budget = templates, mask, budget
        self._drawn: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._bytes = 0

    def member_bytes(self, canvas: tuple[int, int], item: int | None = None) -> int:
        """Bytes of one drawn member (picture and weights) on ``canvas``, in the bank's dtype or with ``item``
        bytes an element."""
        channels = self.templates.shape[2] + (1 if self.mask is None else self.mask.shape[2])
        return channels * canvas[0] * canvas[1] * (self.templates.element_size() if item is None else item)

    def _key(self, c: Candidate, canvas: tuple[int, int]) -> tuple:
        """(bank, mask bank, template, canvas) of candidate ``c``'s members."""
        b = c.b if self.templates.shape[0] > 1 else 0
        bm = None if self.mask is None else (c.b if self.mask.shape[0] > 1 else 0)
        return b, bm, c.t, canvas

    def draw(self, wanted: Sequence[tuple[Candidate, Sequence[float], Sequence[float], tuple[int, int]]]) -> None:
        """Draws the members that (candidate, angles, scales, canvas) requests ask for and are not kept yet,
        every angle wanted of one template at one scale on one canvas in one call: a level's candidates ask for
        a few poses each, and drawing them one candidate at a time made most of the cost of a wide beam's descent
        (one low-pass of the template per call before a smaller scale, and the drawing kernel's own set-up)."""
        todo = self._missing(wanted)
        new = sum(len(angles) * self.member_bytes(key[3]) for key, angles in todo.items())
        if self._bytes + new > self.budget:  # drop what is kept, then draw every member asked for
            self._drawn.clear()
            self._bytes = 0
            todo = self._missing(wanted)
            new = sum(len(angles) * self.member_bytes(key[3]) for key, angles in todo.items())
        self._bytes += new
        for (b, bm, t, canvas, scale), angles in todo.items():
            weights = None
            if self.mask is not None:
                weights = self.mask[bm, t if self.mask.shape[1] > 1 else 0][None, None]
            stream = TransformStream(self.templates[b, t][None, None], weights, list(angles), [scale])
            stream.canvas = canvas  # drawn about the canvas centre: a larger canvas only adds weightless pixels
            pictures, drawn = _drawn(stream, 0, stream.members)
            for i, a in enumerate(angles):
                self._drawn[(b, bm, t, canvas, a, scale)] = (pictures[0, i], drawn[0, i])

    def _missing(
        self, wanted: Sequence[tuple[Candidate, Sequence[float], Sequence[float], tuple[int, int]]]
    ) -> dict[tuple, dict[float, None]]:
        """The angles not kept yet of each (bank, mask bank, template, canvas, scale) that ``wanted`` asks for."""
        todo: dict[tuple, dict[float, None]] = {}
        for c, angles, scales, canvas in wanted:
            key = self._key(c, canvas)
            for s in scales:
                for a in angles:
                    if (*key, a, s) not in self._drawn:
                        todo.setdefault((*key, s), {})[a] = None
        return todo

    def members(
        self, c: Candidate, angles: Sequence[float], scales: Sequence[float], canvas: tuple[int, int]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Template ``c.t`` of image ``c.b``'s bank under every (scale, angle), scale-major, on ``canvas`` (at
        least the poses' own, of the template's parity): (picture [C, Hc, Wc], weights [Cm, Hc, Wc]) each,
        canonical (a weight of zero hides a non-finite pixel), as :meth:`draw` drew them for this request."""
        key = self._key(c, canvas)
        return [self._drawn[(*key, a, s)] for s in scales for a in angles]


def local_scores_many(
    canon: Canonical,
    image: torch.Tensor,
    cache: MemberCache,
    found: Sequence[Candidate],
    poses: Sequence[tuple[list[float], list[float]]],
    reach: int,
) -> list[LocalScores | None]:
    """:func:`local_scores` of every candidate under its own (angles, scales), in few calls.

    Candidates are scored together by one :func:`_local_similarity` call on the stack of their crops, each with
    its own bank and mask (per-image banks [N, R, C, Hc, Wc]), when their pose lists have one length: on the
    largest of their canvases where its crop lies inside the image (pixels outside a drawn template weigh
    nothing, and canvases of the template's parity put the centres on the same grid, so the scores are those of
    the candidate's own canvas), else on their own canvas and crop, grouped by shape.
    """
    h, w = cache.templates.shape[-2:]
    own = [canvas_size(h, w, angles, scales) for angles, scales in poses]
    shared = (max(Hc for Hc, _ in own), max(Wc for _, Wc in own))
    H, W = image.shape[-2:]

    def crop(c: Candidate, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
        top, left = round(c.y - (canvas[0] - 1) / 2), round(c.x - (canvas[1] - 1) / 2)
        r0, c0 = max(0, top - reach), max(0, left - reach)
        return r0, min(H, top + reach + canvas[0]) - r0, c0, min(W, left + reach + canvas[1]) - c0

    groups: dict[tuple, list[tuple[int, int, int]]] = {}
    for i, c in enumerate(found):
        R = len(poses[i][0]) * len(poses[i][1])
        r0, rows, c0, cols = crop(c, shared)
        if rows == shared[0] + 2 * reach and cols == shared[1] + 2 * reach:
            groups.setdefault((shared, rows, cols, R), []).append((i, r0, c0))
            continue
        r0, rows, c0, cols = crop(c, own[i])
        if rows >= own[i][0] and cols >= own[i][1]:
            groups.setdefault((own[i], rows, cols, R), []).append((i, r0, c0))
    out: list[LocalScores | None] = [None] * len(found)
    for (canvas, rows, cols, R), members in groups.items():
        # candidates in chunks whose drawn members (kept by the cache, within its budget), their stacked copies
        # (and the float64 ones that an exact rescoring of near-flat windows takes), crops (and their float64
        # copy) and scores stay within the call's memory_limit: a wide beam of a large turned template is
        # gigabytes otherwise
        ny, nx = rows - canvas[0] + 1, cols - canvas[1] + 1
        members_bytes = R * (cache.member_bytes(canvas) + cache.member_bytes(canvas, 8) + ny * nx * 17)
        unit = members_bytes + image.shape[1] * rows * cols * (image.element_size() + 8)
        step = max(1, canon.memory_limit // 2 // unit)
        for start in range(0, len(members), step):
            _score_chunk(canon, image, cache, found, poses, canvas, rows, cols, members[start : start + step], out)
    return out


def _score_chunk(
    canon: Canonical,
    image: torch.Tensor,
    cache: MemberCache,
    found: Sequence[Candidate],
    poses: Sequence[tuple[list[float], list[float]]],
    canvas: tuple[int, int],
    rows: int,
    cols: int,
    members: Sequence[tuple[int, int, int]],
    out: list[LocalScores | None],
) -> None:
    """Scores candidates ``members`` (index, crop's first row and column) on ``canvas`` and crops of ``rows`` x
    ``cols`` in one :func:`_local_similarity` call, into ``out`` (see :func:`local_scores_many`)."""
    worst = -math.inf if canon.spec.higher_is_better else math.inf
    cache.draw([(found[i], *poses[i], canvas) for i, _, _ in members])
    crops = torch.stack([image[found[i].b, :, r0 : r0 + rows, c0 : c0 + cols] for i, r0, c0 in members])
    banks = [cache.members(found[i], *poses[i], canvas) for i, _, _ in members]
    # one copy of every drawn member into the stack (large turned templates: tens of megabytes)
    picture, weight = banks[0][0]
    pictures = picture.new_empty(len(banks), len(banks[0]), *picture.shape)
    weights = weight.new_empty(len(banks), len(banks[0]), *weight.shape)
    for n, bank in enumerate(banks):
        for r, (picture, weight) in enumerate(bank):
            pictures[n, r] = picture
            weights[n, r] = weight
    scores = _local_similarity(canon, crops, pictures, weights)
    scores = scores.to(torch.float64).cpu().nan_to_num(nan=worst)
    for n, (i, r0, c0) in enumerate(members):
        angles, scales = poses[i]
        out[i] = LocalScores(
            scores[n],
            r0 + (canvas[0] - 1) / 2,
            c0 + (canvas[1] - 1) / 2,
            torch.tensor(angles * len(scales), dtype=torch.float64),
            torch.tensor([s for s in scales for _ in angles], dtype=torch.float64),
        )


def _descend(
    canon: Canonical, pyramid: Pyramid, space: PoseSpace, level: int, found: list[Candidate]
) -> list[Candidate]:
    """The candidates of level + 1 re-searched at ``level``: position doubled, ±REACH, poses of the grid at
    ``level`` within one step of the level above; a candidate whose best lands on the edge of what was searched
    (position, angle or scale) is searched again around it, up to CLIMB_MOVES times (angle, scale and position
    err together at a coarse level, and a pose one step off can sit a few pixels off). Each round scores every
    candidate still moving in few calls (:func:`local_scores_many`)."""
    centres = [replace(c, y=2 * c.y + 0.5, x=2 * c.x + 0.5) for c in found]
    scored: list[Candidate | None] = [None] * len(found)
    moving = list(range(len(found)))
    cache = MemberCache(pyramid.templates[level], pyramid.masks[level], canon.memory_limit // 2)
    for _ in range(CLIMB_MOVES):
        if not moving:
            break
        climbed = _climb(canon, pyramid, space, level, [centres[i] for i in moving], cache)
        still = []
        for i, (better, settled) in zip(moving, climbed, strict=True):
            if better is None:  # no window fits around it: the last one scored stands
                continue
            centres[i] = scored[i] = better
            if not settled:
                still.append(i)
        moving = still
    return [c for c in scored if c is not None]


def _climb(
    canon: Canonical, pyramid: Pyramid, space: PoseSpace, level: int, found: list[Candidate], cache: MemberCache
) -> list[tuple[Candidate | None, bool]]:
    """For each candidate: (the best pose and centre around it at ``level``, whether it lies inside what was
    searched)."""
    higher = canon.spec.higher_is_better
    a_step, s_step = _steps(space, level)
    a_radius, s_radius = _steps(space, level + 1)
    logs = [math.log(s) for s in space.scales]
    poses = []
    for c in found:
        angles = near(space.angles, c.angle, a_radius, a_step, angles=True)
        scales = [math.exp(v) for v in near(logs, math.log(c.scale), s_radius, s_step, angles=False)]
        poses.append((angles, scales))
    results = []
    for c, local, (angles, scales) in zip(
        found, local_scores_many(canon, pyramid.images[level], cache, found, poses, REACH), poses, strict=True
    ):
        better = None if local is None else _best(local, c, higher)
        if better is None:
            results.append((None, True))
            continue
        on_edge = (
            max(abs(better.y - c.y), abs(better.x - c.x)) >= REACH
            or (len(angles) > 1 and better.angle in (angles[0], angles[-1]))
            or (len(scales) > 1 and better.scale in (scales[0], scales[-1]))
        )
        results.append((better, not on_edge))
    return results


def _ranked(found: list[Candidate], higher: bool) -> list[Candidate]:
    """Grouped by image and template, best first within each (a score that is not a number last)."""
    return sorted(found, key=lambda c: (c.b, c.t, c.score != c.score, -c.score if higher else c.score))


def select(
    found: list[Candidate],
    k: int,
    min_distance: float,
    threshold: float | None,
    higher: bool,
    distinct: tuple[float, float] | None = None,
) -> list[Candidate]:
    """The k best candidates of each image and template that pass ``threshold``, greedily keeping only the better
    of two closer than ``min_distance`` (Chebyshev, pixels); with ``distinct`` (degrees, log scale), two so close
    are both kept when their poses differ by at least that much in angle or in scale."""
    kept: list[Candidate] = []
    a_far, s_far = distinct if distinct is not None else (math.inf, math.inf)
    for c in _ranked(found, higher):
        if threshold is not None and not (c.score >= threshold if higher else c.score <= threshold):
            continue
        same = [o for o in kept if (o.b, o.t) == (c.b, c.t)]
        if len(same) >= k:
            continue
        if any(max(abs(o.y - c.y), abs(o.x - c.x)) < min_distance and _poses_close(o, c, a_far, s_far) for o in same):
            continue
        kept.append(c)
    return kept


def pyramid_search(
    canon: Canonical,
    space: PoseSpace,
    levels: int,
    beam: int,
    k: int,
    threshold: float | None,
    min_distance: int,
    exhaustive: Callable,
    progress: Callable[[int, int], None] | None,
) -> list[Candidate]:
    """The k best matches of each image and template (whole-pixel centres, grid poses, exact scores), searched
    coarse to fine over ``levels`` halvings.

    Args:
        canon: The validated call on the untransformed templates (mode "valid", stride and dilation 1).
        space: The poses.
        levels: Halvings (>= 1).
        beam: Positions per image and template carried down from the coarsest level.
        k, threshold, min_distance: As for :func:`slidesim.match`.
        exhaustive: ``best_of_stream(canon, stream, progress) -> (best, which, canon of the bank)``.
        progress: Reported by the coarsest level's search.
    """
    higher = canon.spec.higher_is_better
    pyramid = build_pyramid(canon, levels)
    found = _coarsest(canon, pyramid, space, levels, beam, min_distance, exhaustive, progress)
    h, w = canon.templates.shape[-2:]
    for level in range(levels - 1, -1, -1):
        found = _descend(canon, pyramid, space, level, found)
        # candidates that climbed to the same place (within 2 pixels of the level) and pose (within three of its
        # steps) keep the best one: two poses far apart at one place both go on (over 300 real-photo trials a
        # merge by place alone dropped the right angle, second there, once); distinct
        # optima nearer each other than the template stay apart (a periodic wall's bricks: the right one is
        # often second there, and over 300 real-photo trials a quarter of the template's side as the radius lost
        # it once); the scores of a finer level rank the candidates better than the coarser ones did, so the
        # default beam's share halves at each level down to 2k. A wider beam widens the coarsest level and its
        # first descent only: over 300 angle x scale trials a beam of 16 cut to 4 after the first descent missed
        # the same 22 poses as one halving to 8, 4, 2, in 0.78 s against 1.28 s on a 1024² scene.
        apart = max(1, min(2, min(h, w) // 2 ** (level + 2), min_distance))
        steps = (space.angle_spacing * 2**level, space.scale_spacing * 2**level)  # this level's grid steps
        distinct = (_DISTINCT_STEPS * steps[0] * (1 - 1e-6), _DISTINCT_STEPS * steps[1] * (1 - 1e-6))
        found = select(found, max(2 * k, min(beam, _BEAM) >> (levels - level)), apart, None, higher, distinct)
    return select(found, k, min_distance, threshold, higher)


def _fitted(values: Sequence[float], scores: Sequence[float], higher: bool) -> float:
    """The best of three poses ``values`` (evenly spaced) or, when the middle one is best, the vertex of the
    parabola through their ``scores``."""
    s = [v if higher else -v for v in scores]
    best = max(range(3), key=lambda i: s[i])
    if best != 1 or not all(math.isfinite(v) for v in s):
        return values[best]
    curve = s[0] - 2 * s[1] + s[2]
    if curve >= 0:
        return values[1]
    offset = 0.5 * (s[0] - s[2]) / curve  # in steps, within ±0.5 when the middle is best
    return values[1] + offset * (values[2] - values[1])


def _refined_pose(canon: Canonical, c: Candidate, space: PoseSpace) -> Candidate:
    """``c`` with its angle and scale refined below the grid step within their ranges: parabolas through the best
    scores within one pixel at three poses 1, then 1/4 of the step apart (moving on while an outer pose scores
    best), angle and scale in turn; the centre is the best whole-pixel one of the last poses tried."""
    for fraction in _FIT_STEPS:
        for axis in ("angle", "scale"):
            if (space.angle_range if axis == "angle" else space.scale_range) is None:
                continue
            for _ in range(_FIT_MOVES):
                c, settled = _fit_axis(canon, c, space, axis, fraction)
                if settled:
                    break
    return c


def _fit_axis(canon: Canonical, c: Candidate, space: PoseSpace, axis: str, fraction: float) -> tuple[Candidate, bool]:
    """(``c`` moved along one axis of pose by a parabola through three poses ``fraction`` of the grid step apart,
    whether the middle one scored best)."""
    higher = canon.spec.higher_is_better
    if axis == "angle":
        step = space.angle_spacing * fraction
        values = [c.angle - step, c.angle, c.angle + step]
        angles, scales = values, [c.scale]
    else:
        step = space.scale_spacing * fraction
        values = [c.scale * math.exp(-step), c.scale, c.scale * math.exp(step)]
        angles, scales = [c.angle], values
    local = local_scores(canon, canon.images, canon.templates, canon.mask, c, angles, scales, 1)
    if local is None:
        return c, True
    profile = local.scores.reshape(3, -1)
    profile = (profile.max(dim=1) if higher else profile.min(dim=1)).values.tolist()
    rng = space.angle_range if axis == "angle" else space.scale_range
    value = _clamped(_fitted(values, profile, higher), rng, axis == "angle")
    moved = _best(local, c, higher)
    best = max(range(3), key=lambda i: profile[i] if higher else -profile[i])
    return replace(c if moved is None else moved, **{axis: value}), best == 1 or value in (rng.start, rng.stop)


def _clamped(value: float, rng: Interval, angle: bool) -> float:
    """``value`` within the range (a full circle of angles wraps into [start, start + 360))."""
    if angle and is_full_circle(rng):
        return rng.start + math.fmod(math.fmod(value - rng.start, 360.0) + 360.0, 360.0)
    return min(max(value, rng.start), rng.stop)


def finish(
    canon: Canonical,
    found: list[Candidate],
    space: PoseSpace,
    subpixel: bool,
    call: dict[str, Any],
    progress: Callable[[int, int], None] | None,
) -> list[torch.Tensor]:
    """The columns of :class:`slidesim.Matches` (batch, template, y, x, score, angle, scale) [N] on the CPU for
    matches at whole-pixel centres and grid poses with exact scores, best first per image and template.

    With ``subpixel``, poses from ranges are refined below the grid step and every centre to a fraction of a
    pixel on the template drawn at the refined pose (:func:`slidesim._refine_many.refine_peaks`); the score is
    then the one at the refined pose.
    """
    higher = canon.spec.higher_is_better
    if subpixel and found:
        if space.angle_range is not None or space.scale_range is not None:
            found = [_refined_pose(canon, c, space) for c in found]
        peaks = []
        for c in found:
            bank = canon.templates[c.b if canon.templates.shape[0] > 1 else 0, c.t][None, None]
            mask = canon.mask
            weights = None if mask is None else mask[c.b if mask.shape[0] > 1 else 0, c.t if mask.shape[1] > 1 else 0]
            stream = TransformStream(bank, None if weights is None else weights[None, None], [c.angle], [c.scale])
            picture, drawn = _drawn(stream, 0, 1)
            peaks.append(Peak(canon.images[c.b], picture[0, 0], drawn[0, 0], (c.y, c.x)))
        refined = refine_peaks(peaks, canon.dilation, higher, call, progress)
        found = _ranked([replace(c, y=y, x=x, score=s) for c, (y, x, s) in zip(found, refined, strict=True)], higher)
    else:
        found = _ranked(found, higher)
    ints = [torch.tensor([getattr(c, n) for c in found], dtype=torch.int64) for n in ("b", "t")]
    floats = [torch.tensor([getattr(c, n) for c in found], dtype=torch.float64) for n in ("y", "x", "score")]
    poses = [torch.tensor([getattr(c, n) for c in found], dtype=torch.float64) for n in ("angle", "scale")]
    return [*ints, *floats, *poses]


def candidates_of(columns: Sequence[torch.Tensor]) -> list[Candidate]:
    """Matches given as columns (batch, template, y, x, score, angle, scale) [N] -> candidates."""
    rows = zip(*(c.tolist() for c in columns[:7]), strict=True)
    return [Candidate(int(b), int(t), y, x, a, s, score) for b, t, y, x, score, a, s in rows]


def describe_search(
    canon: Canonical, space: PoseSpace, levels: int, beam: int, why: str, seconds_per_pose: float
) -> list[str]:
    """What a match search will do, as lines for ``explain``: the search chosen (the pyramid's levels, its
    coarsest template, its coarsest pose grid and beam, or the exhaustive search's poses), why (``plan_pyramid``'s
    reason), and a rough cost.

    Args:
        canon: The validated call on the untransformed templates.
        space: Its poses (:func:`pose_space`).
        levels: The pyramid's levels from :func:`plan_pyramid` (0: the exhaustive search).
        beam: Positions per image and template carried down the pyramid.
        why: :func:`plan_pyramid`'s reason.
        seconds_per_pose: The planner's estimate of one similarity call of one transformed template on every
            image (NaN when the engine has no estimate).

    The exhaustive cost is that estimate times the poses (times the templates); the pyramid's is that scaled by
    the share of window-pose scorings it makes (:func:`_costs`), a rough guide, not a timing.
    """
    T = canon.templates.shape[1]
    exhaustive_seconds = seconds_per_pose * space.poses * T
    grid = _grid_text(space.angles, space.scales)
    if levels == 0:
        return [
            f"search: exhaustive: {space.poses} pose{'s' if space.poses != 1 else ''} ({grid}) at every position",
            f"  why: {why}",
            f"  cost: roughly {_seconds(exhaustive_seconds)} (one similarity call of a turned template, "
            f"{_seconds(seconds_per_pose)}, x {space.poses} poses x {T} template{'s' if T != 1 else ''})",
        ]
    h, w = (side // 2**levels for side in canon.templates.shape[-2:])
    angles, scales = _grid_at(space, levels)
    exhaustive_cost, pyramid_cost = _costs(canon, space, levels, beam)
    share = pyramid_cost / exhaustive_cost
    return [
        f"search: pyramid: {levels} level{'s' if levels != 1 else ''}, coarsest template {h}x{w}, "
        f"{_grid_text(angles, scales)} at the coarsest level, beam {beam} "
        f"(the full-resolution grid: {grid})",
        f"  why: {why}",
        f"  cost: roughly {_seconds(exhaustive_seconds * share)}, about 1/{max(1.0, 1 / share):.0f} of the "
        f"exhaustive search's {_seconds(exhaustive_seconds)} ({space.poses} poses x one similarity call of "
        f"{_seconds(seconds_per_pose)})",
    ]


def _seconds(value: float) -> str:
    """A rough time: '12 ms', '3.4 s', or 'unknown' without an estimate."""
    if not math.isfinite(value):
        return "unknown"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def _grid_text(angles: Sequence[float], scales: Sequence[float]) -> str:
    """'A angles x S scales', singular where one."""
    return " x ".join(
        f"{len(v)} {name}{'s' if len(v) != 1 else ''}" for v, name in ((angles, "angle"), (scales, "scale"))
    )
