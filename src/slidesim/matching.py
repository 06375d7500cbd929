"""match() (floor L6): where the templates are, how well they match, at what angle and scale.

Transformed templates are drawn a chunk of the bank at a time (:class:`slidesim.banks.TransformStream`) and
stream through one engine, chosen for the whole bank; each chunk's maps are folded into a running best score and
the index of the best transform per position, so memory stays O(B · T · H' · W') plus one chunk whatever the
number of rotations and scales. Every allocation that grows with the arguments is checked against
``memory_limit`` before it is made. Peaks of the best map are then refined on the image data
(:mod:`slidesim._refine`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._checks import check_bool, check_callable, check_factors, check_has_values, check_int, check_threshold
from ._geometry import pad_amounts
from ._interval import Interval, check_range
from ._refine import bank_member, shifts_per_batch
from ._refine_many import Peak, refine_peaks
from ._threads import for_calls
from ._types import ArrayLike
from ._validate import Canonical, all_finite, canonicalize, window_origin, with_bank, with_defaults
from .banks import TransformStream, canvas_size, drawing_bytes, member_bytes, usable_scales
from .engines.base import Engine
from .errors import SlidesimValueError
from .kernels.area_sums import fused_statistics_available
from .peaks import locate_peaks
from .planner import Plan, make_plan, select_engine
from .planner import explain as planner_explain
from .pose_search import (
    PoseSpace,
    candidates_of,
    check_search,
    default_beam,
    describe_search,
    finish,
    plan_pyramid,
    pose_space,
    pyramid_search,
)

__all__ = ["Matches", "explain", "match"]

_MAP_SHARE = 4  # a chunk's score maps may use memory_limit / _MAP_SHARE bytes
_BANK_SHARE = 4  # a chunk of drawn transforms may use memory_limit / _BANK_SHARE bytes
_MOMENT_TEMPORARIES = 6  # float64 maps alive per template while masked window moments are computed


@dataclass(frozen=True, repr=False)
class Matches:
    """Matches, ordered by image, then template, then best first.

    Every position is in pixels of the image, (row, column) from its top-left pixel at (0, 0). ``y``, ``x`` are
    the match's centre; ``top``, ``left``, ``height``, ``width`` its box, the bounding box of the template as
    matched (turned and scaled), whose pixels run from ``top`` to ``top + height − 1``: for an untransformed
    template (stride and mode as you like) ``image[top:top + height, left:left + width]`` is the window that was
    scored, as OpenCV's ``minMaxLoc`` gives its top-left corner. A rotated match's turned outline is the h × w
    template scaled by ``scale`` and turned by ``angle`` about (y, x) (:func:`slidesim.draw.box_corners`).
    :func:`slidesim.find_peaks` gives score-map positions instead: peak (i, j) of a ``similarity`` map is the
    window whose top-left corner is (i · stride − pad_top, j · stride − pad_left), pad 0 in mode "valid".

    Attributes:
        batch: Image index [N] (int64).
        template: Template index [N] (int64), into the templates given to :func:`match`.
        y: Row of the template centre in image pixels [N] (float64): (h − 1) / 2 below the top-left corner of an
            untransformed template, the same object point for rotated and scaled ones.
        x: Column of the template centre [N] (float64).
        score: Score of the match [N] (at the refined position with sub-pixel refinement).
        angle: Rotation of the best transform in degrees, counter-clockwise as displayed [N] (float64).
        scale: Scale factor of the best transform [N] (float64).
        top: Row of the box's top-left pixel [N] (float64): y − (height − 1) / 2.
        left: Column of the box's top-left pixel [N] (float64): x − (width − 1) / 2.
        height: Rows of the box [N] (float64): h for an untransformed template, the turned and scaled
            rectangle's bounding box otherwise (see :func:`box_sizes`).
        width: Columns of the box [N] (float64).
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
    top: ArrayLike
    left: ArrayLike
    height: ArrayLike
    width: ArrayLike
    maps: ArrayLike | None = None

    def __len__(self) -> int:
        return len(self.batch)

    def to_records(self) -> list[dict[str, float | int]]:
        """One dict per match, keys as the fields (without ``maps``), plain Python numbers (for JSON, CSV,
        tables)."""
        columns = {name: _as_list(getattr(self, name)) for name in RECORD_FIELDS}
        return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]

    def rows(self) -> list[dict[str, float | int]]:
        """The same as :meth:`to_records` (its earlier name)."""
        return self.to_records()

    def to_pandas(self) -> Any:
        """A pandas DataFrame with a row per match and a column per field of :meth:`to_records`.

        Raises:
            SlidesimValueError: pandas is not installed.
        """
        try:
            import pandas
        except ImportError:
            raise SlidesimValueError(
                "`Matches.to_pandas` needs pandas, which is not installed; run `pip install pandas`, or use "
                "`to_records()` (a list of dicts) without it."
            ) from None
        return pandas.DataFrame.from_records(self.to_records(), columns=list(RECORD_FIELDS))

    def __repr__(self) -> str:
        return _summary(self)


RECORD_FIELDS = ("batch", "template", "y", "x", "top", "left", "height", "width", "score", "angle", "scale")
_SHOWN_ROWS = 5  # rows a repr shows


def _as_list(values: ArrayLike) -> list:
    return values.tolist() if isinstance(values, np.ndarray) else values.detach().cpu().tolist()


def _summary(found: Matches) -> str:
    """A few lines: how many matches of how many templates in how many images, the maps' shape, and the best
    match of each (image, template), up to a few rows (never the maps' values)."""
    records = found.to_records()
    images, templates = _searched(found, records)
    head = (
        f"Matches: {_counted(len(records), 'match', 'matches')} of {_counted(templates, 'template', 'templates')} "
        f"in {_counted(images, 'image', 'images')}"
    )
    if found.maps is not None:
        head += f"; maps {list(found.maps.shape)} {found.maps.dtype} (not shown)"
    if not records:
        return head
    shown = records if len(records) <= _SHOWN_ROWS else _best_of_each(records)[:_SHOWN_ROWS]
    lines = [head, "  in image pixels: y, x = centre; top, left = top-left corner of the box; height, width = box"]
    lines.append(
        f"  {'batch':>5} {'template':>8} {'y':>9} {'x':>9} {'top':>9} {'left':>9} {'height':>7} {'width':>7} "
        f"{'score':>10} {'angle':>7} {'scale':>6}"
    )
    for r in shown:
        lines.append(
            f"  {r['batch']:>5} {r['template']:>8} {r['y']:>9.2f} {r['x']:>9.2f} {r['top']:>9.2f} "
            f"{r['left']:>9.2f} {r['height']:>7.2f} {r['width']:>7.2f} {r['score']:>10.4f} {r['angle']:>7.1f} "
            f"{r['scale']:>6.3g}"
        )
    if len(shown) < len(records):
        lines.append(f"  ... {len(records) - len(shown)} more (shown: the best of each image and template first)")
    return "\n".join(lines)


def _searched(found: Matches, records: list[dict]) -> tuple[int, int]:
    """(images, templates) searched: the maps' [B, T] (a 2-D map is one of each), else those with a match."""
    if found.maps is not None:
        return tuple(found.maps.shape[:2]) if found.maps.ndim == 4 else (1, 1)
    return len({r["batch"] for r in records}), len({r["template"] for r in records})


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _best_of_each(records: list[dict]) -> list[dict]:
    """The records, the best match of each (image, template) first (records are best first within each)."""
    seen: set[tuple[int, int]] = set()
    first, rest = [], []
    for record in records:
        key = (record["batch"], record["template"])
        (rest if key in seen else first).append(record)
        seen.add(key)
    return first + rest


def box_sizes(
    angle: torch.Tensor, scale: torch.Tensor, template_size: tuple[int, int], dilation: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(height, width) [N] float64 in image pixels of the axis-aligned bounding box of each match's template.

    An h × w template scaled by s and turned by a spans e_h = s · (|cos a| · h + |sin a| · w) template pixels
    down and e_w = s · (|sin a| · h + |cos a| · w) across; with dilation d its taps sit d pixels apart, so the box
    is d · (e − 1) + 1 pixels: exactly h × w for an untransformed template, d · (h − 1) + 1 rows for a dilated one.

    Args:
        angle: Degrees [N] (float64).
        scale: Factors [N] (float64).
        template_size: (h, w) of the untransformed template.
        dilation: (rows, columns) between taps.
    """
    h, w = template_size
    radians = torch.deg2rad(angle.to(torch.float64))
    # cos 90° is 6e-17, not 0: without this a turned box would be a hair larger than the template's side
    cos, sin = (torch.where(v.abs() < 1e-12, 0.0, v.abs()) for v in (torch.cos(radians), torch.sin(radians)))
    scale = scale.to(torch.float64)
    extent_h, extent_w = scale * (cos * h + sin * w), scale * (sin * h + cos * w)
    return dilation[0] * (extent_h - 1) + 1, dilation[1] * (extent_w - 1) + 1


def with_boxes(
    columns: Sequence[torch.Tensor], template_size: tuple[int, int], dilation: tuple[int, int]
) -> list[torch.Tensor]:
    """The columns of :class:`Matches` on the CPU, (batch, template, y, x, score, angle, scale), followed by the
    boxes they give: top, left, height, width [N] float64 (see :func:`box_sizes`)."""
    y, x, angle, scale = columns[2], columns[3], columns[5], columns[6]
    height, width = box_sizes(angle, scale, template_size, dilation)
    return [*columns, y - (height - 1) / 2, x - (width - 1) / 2, height, width]


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

    def stream(self, canon: Canonical, working_set: bool = True) -> TransformStream:
        """The transformed bank of a validated call, drawn on demand, once its scales and rotations are checked
        against the template, the image and (with ``working_set``) ``memory_limit`` (:func:`check_transforms`)."""
        check_transforms(self, canon, working_set)
        angles = footprint_order(self.angles or [0.0], *canon.templates.shape[-2:])
        return TransformStream(canon.templates, canon.mask, angles, self.scales or [1.0])


def footprint_order(angles: Sequence[float], h: int, w: int) -> list[float]:
    """The angles with those that turn an h × w footprint alike next to each other (θ, θ + 90°, θ + 180°,
    θ + 270° for a square, θ and θ + 180° otherwise), each group in the order given, so that a streamed bank
    computes the window statistics of each footprint once (see WindowStatistics.window_moments)."""
    period = 90.0 if h == w else 180.0
    order = sorted(range(len(angles)), key=lambda i: (round(float(angles[i]) % period, 9) % period, i))
    return [float(angles[i]) for i in order]


def _room(canon: Canonical) -> tuple[int, int] | None:
    """The largest template (rows, columns, in taps) that the images hold in mode "valid"; None in the other
    modes, which pad the images."""
    if canon.mode != "valid":
        return None
    (dy, dx), H, W = canon.dilation, canon.problem.height, canon.problem.width
    return (H - 1) // dy + 1, (W - 1) // dx + 1


def _shown(value: float, up: bool) -> str:
    """``value`` to 4 significant digits, rounded towards the inside of a range (up for its low end)."""
    if math.isinf(value):
        return "any"
    digits = 3 - math.floor(math.log10(abs(value)))
    scaled = value * 10**digits
    return f"{(math.ceil(scaled - 1e-9) if up else math.floor(scaled + 1e-9)) / 10**digits:g}"


def check_transforms(search: MatchSearch, canon: Canonical, working_set: bool = True) -> None:
    """Refuse scales and rotations that the template and image cannot take, or whose bank cannot be searched
    within ``memory_limit``, with the usable range.

    Raises:
        SlidesimValueError: A scale shrinks the template below 2 taps, or grows its canvas beyond the image
            (mode "valid"), or a transform's drawing and score maps would not fit ``memory_limit``.
    """
    h, w = canon.templates.shape[-2:]
    H, W = canon.problem.height, canon.problem.width
    angles, scales = search.angles or [0.0], search.scales or [1.0]
    room = _room(canon)
    low, high = usable_scales((h, w), angles, room)
    where = f"for {h}x{w} templates on {H}x{W} images in mode {canon.mode!r}"
    if room is not None:
        where += f" (dilation {canon.dilation})"
    bad = [s for s in scales if not low <= s <= high]
    if bad and (search.scales is None or high < low):
        raise SlidesimValueError(
            f"`rotations` turn {h}x{w} templates beyond the {H}x{W} images in mode 'valid'"
            + ("" if search.scales is None else " at every scale")
            + "; use mode='same' or 'full', or a smaller template."
        )
    if bad:
        usable = f"{_shown(low, True)} to {_shown(high, False)}" if high < math.inf else f"{_shown(low, True)} up"
        reason = "shrinks the template below 2 pixels" if bad[0] < low else "grows its canvas beyond the images"
        raise SlidesimValueError(
            f"`scales` must lie within the usable scales {usable} {where}; got {bad[0]:g}, which {reason}. "
            "Use scales in that range" + (", or mode='same' or 'full'." if bad[0] > high else ".")
        )
    if working_set:
        check_working_set(canon, angles, scales)


def _working_set(canon: Canonical, canvas: tuple[int, int], smallest: float) -> tuple[int, int]:
    """(bytes to draw one transform and hold it, bytes of its score maps in a chunk) for a bank on ``canvas``."""
    bank_shape = tuple(canon.templates.shape)
    mask = canon.mask
    planes = (1, 1) if mask is None else (mask.shape[0], mask.shape[2])
    item = canon.out_dtype.itemsize
    draw = drawing_bytes(bank_shape, planes, canvas, smallest) + member_bytes(bank_shape, planes, canvas, item)
    out_h, out_w = _out_size(canon, canvas)
    per_pixel = item + (8 * _MOMENT_TEMPORARIES if canon.spec.family == "correlation" else 0)  # as _chunk counts
    return draw, canon.image_shape[0] * out_h * out_w * per_pixel


def _out_size(canon: Canonical, canvas: tuple[int, int]) -> tuple[int, int]:
    """The score map's size for templates the size of ``canvas``."""
    sizes = []
    for axis, side in enumerate(canvas):
        length, dilation, stride = canon.image_shape[2 + axis], canon.dilation[axis], canon.stride[axis]
        span = dilation * (side - 1) + 1
        sizes.append(max(0, (length + sum(pad_amounts(canon.mode, length, side, dilation)) - span) // stride + 1))
    return sizes[0], sizes[1]


def check_working_set(canon: Canonical, angles: Sequence[float], scales: Sequence[float]) -> None:
    """Refuse a bank whose smallest chunk (one transform of one template) cannot be drawn and scored within
    ``memory_limit``, naming the scales that make it so, or the limit itself when no scale would help."""
    h, w = canon.templates.shape[-2:]
    limit, smallest = canon.memory_limit, min(scales)

    def need(scale: float) -> int:
        return sum(_working_set(canon, canvas_size(h, w, angles, [scale]), smallest))

    largest = max(scales)
    needed = need(largest)
    if needed <= limit:
        return
    if need(min(1.0, largest)) <= limit:  # the scales above 1 are what grows the canvas: find the largest that fits
        fits, over = min(1.0, largest), largest
        for _ in range(60):
            middle = math.sqrt(fits * over)
            fits, over = (middle, over) if need(middle) <= limit else (fits, middle)
        Hc, Wc = canvas_size(h, w, angles, [largest])
        raise SlidesimValueError(
            f"`scales` up to {largest:g} draw {h}x{w} templates on a {Hc}x{Wc} canvas: one transform and its score "
            f"maps need {needed:,} bytes, over `memory_limit` of {limit:,} "
            f"bytes. Use scales up to {_shown(fits, False)}, or raise memory_limit to at least {needed:,}."
        )
    raise SlidesimValueError(
        f"`memory_limit` of {limit:,} bytes cannot hold one transformed template and its score maps on these "
        f"images ({needed:,} bytes); raise memory_limit to at least {needed:,}, or search smaller images."
    )


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


@for_calls
def match(
    images: ArrayLike,
    templates: ArrayLike,
    *,
    metric: str | int = "zncc",
    k: int = 1,
    min_distance: int | None = None,
    threshold: float | None = None,
    rotations: Sequence[float] | Interval | None = None,
    scales: Sequence[float] | Interval | None = None,
    subpixel: bool = True,
    exclude_border: int = 0,
    progress: Callable[[int, int], None] | None = None,
    channels_last: bool = False,
    search: str = "auto",
    levels: int | None = None,
    beam: int | None = None,
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
        rotations: Angles in degrees, counter-clockwise as displayed (y down), for example ``range(0, 360, 5)``
            (exactly those), or a continuous range ``slidesim.interval(0, 360)``, sampled on a step that turns the
            template's farthest pixel by about one pixel and refined below it (with ``subpixel``).
        scales: Scale factors, for example ``[0.8, 0.9, 1.0, 1.1, 1.25]``, or ``slidesim.interval(0.8, 1.25)``
            (log-spaced on the same rule, refined below the step).
        subpixel: Refine positions on the image data to a fraction of a pixel (and the angles and scales of
            ranges below their grid step).
        exclude_border: Ignore matches within this many score-map pixels of the map's edges.
        progress: Called as progress(done, total) after each chunk of the bank (templates done of all), then,
            with sub-pixel refinement, from progress(0, matches) again after each refined match: each phase
            counts from 0 (for progress bars; refinement costs milliseconds per match, which adds up for
            large k).
        channels_last: Images [H, W, C] or [B, H, W, C] and templates [h, w, C] or [T, h, w, C] (masks with
            their channels last too), as for :func:`slidesim.similarity`; ``maps`` stay [B, T, H', W'].
        search: "exhaustive" scores every pose of the grid at every position: the exact best of the grid.
            "pyramid" searches coarse to fine (:mod:`slidesim.pose_search`): every pose at every position of a
            copy halved ``levels`` times, then the ``beam`` best positions of each image and template re-searched
            around their pose at each finer level; its scores are exact at the poses it returns, but it can miss
            a pose that only the exhaustive search finds, and it gives no ``maps``. It searches mode "valid",
            stride and dilation 1, finite images, no circular channels, no ``exclude_border`` and no gradients;
            templates under 24 pixels a side take no level (the exhaustive search runs). "auto" (default) takes
            the pyramid for ranges (:func:`slidesim.interval`) where it can run and is estimated several times
            cheaper (many poses, a large template); sequences of poses it searches exhaustively, as before.
        levels: Halvings of the pyramid; default: as many as keep the template's smaller side at 12 pixels or
            more and its turned and scaled canvas within the image.
        beam: Positions per image and template carried down from the coarsest level; default max(8, 2k), four
            times that when more than one scale is searched.
        **options: stride, dilation, mode, padding, pad_value, mask, channels ("joint" or "mean"), circular,
            method, memory_limit: as for :func:`slidesim.similarity`. A mask is rotated and scaled with its
            template.

    Returns:
        :class:`Matches`: centres (y, x) and boxes (top, left, height, width) in image pixels, whatever the
        mode, stride and padding (:func:`slidesim.find_peaks` gives score-map positions); ``maps`` is None after
        a pyramid search.

    Raises:
        SlidesimTypeError: As for similarity; k, min_distance not ints; rotations or scales not sequences of
            real numbers (or an interval); subpixel not a bool; search not a string, levels or beam not ints.
        SlidesimValueError: As for similarity; empty or non-finite rotations, non-positive scales (or a scale
            interval that starts at 0 or below), search not one of "auto", "pyramid", "exhaustive", levels below
            0 or beyond what the template and image allow, beam below 1, search="pyramid" for a call it cannot
            search (named);
            channels="separate"; scales that shrink the template below 2 pixels or (mode "valid") grow its canvas
            beyond the images, with the usable range; one transform and its score maps over ``memory_limit``, or
            (with subpixel) the refinement of one match over it, before anything is scored.

    Memory:
        Rotated and scaled templates are drawn a chunk of the bank at a time (within a quarter of
        ``memory_limit``) and stream through the engine; each chunk's maps are folded into the best score and the
        best transform per position. Peak memory is the image side, one chunk and the two best maps, whatever the
        number of transforms. Matches are refined one after the other, each scoring as many shifted windows at
        once as ``memory_limit`` holds: nothing grows with k but the matches themselves.

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
    subpixel = check_bool("subpixel", subpixel)
    check_callable("progress", progress)
    options = {**options, "channels_last": channels_last}
    planned = plan_search(
        images, templates, metric, k, min_distance, threshold, rotations, scales, exclude_border, search, levels,
        beam, options,
    )  # fmt: skip
    search, canon, space, stream, levels, beam = (
        planned.search, planned.canon, planned.space, planned.stream, planned.levels, planned.beam
    )  # fmt: skip
    angle_range, scale_range = space.angle_range, space.scale_range
    call = search.call
    h, w = canon.templates.shape[-2:]
    numpy_out = canon.numpy_out
    if subpixel:  # refused before the maps are scored when one match's refinement cannot fit memory_limit
        canvas = stream.canvas if stream is not None else (h, w)
        shifts_per_batch(canon.memory_limit, canon.templates.shape[2], canvas, canon.dilation)
    if levels:
        found = pyramid_search(
            canon, space, levels, beam, search.k, search.threshold, search.distance(h, w), best_of_stream, progress
        )
        columns = with_boxes(finish(canon, found, space, subpixel, call, progress), (h, w), canon.dilation)
        best = None
    else:
        searched = canon
        best, which, canon = best_of_stream(canon, stream, progress)
        higher = canon.spec.higher_is_better
        found = locate_peaks(best, search.k, search.distance(h, w), search.threshold, search.border, higher)
        ranges = angle_range is not None or scale_range is not None
        columns = _columns(canon, call, found, best, which, stream, subpixel and not ranges, progress)
        if subpixel and ranges:  # angles and scales of a range are refined below the grid step too
            columns = finish(searched, candidates_of(columns), space, True, call, progress)
        columns = with_boxes(columns, (h, w), canon.dilation)
    if numpy_out:
        return Matches(*(c.numpy() for c in columns), maps=None if best is None else best.cpu().numpy())
    return Matches(*(c.to(canon.image_source.device) for c in columns), maps=best)


@dataclass(frozen=True)
class PlannedSearch:
    """A :func:`match` call checked and planned, before anything is scored.

    Attributes:
        search: The checked options (ranges replaced by the grid their step gives for this template).
        canon: The validated call on the untransformed templates.
        space: The poses searched (:class:`slidesim.pose_search.PoseSpace`).
        stream: The transformed bank, drawn on demand, or None when no pose is searched.
        levels: The pyramid's levels (0: the exhaustive search).
        why: Why that search (:func:`slidesim.pose_search.plan_pyramid`).
        beam: Positions per image and template carried down the pyramid.
    """

    search: MatchSearch
    canon: Canonical
    space: PoseSpace
    stream: TransformStream | None
    levels: int
    why: str
    beam: int


def plan_search(
    images: ArrayLike,
    templates: ArrayLike,
    metric: object,
    k: object,
    min_distance: object,
    threshold: object,
    rotations: object,
    scales: object,
    exclude_border: object,
    search: object,
    levels: object,
    beam: object,
    options: dict[str, Any],
) -> PlannedSearch:
    """Check the arguments of :func:`match` (see there) and choose its search: the exhaustive one or the pyramid,
    with its levels and beam."""
    how, levels, beam = check_search(search, levels, beam)
    angle_range = check_range("rotations", rotations, False) if isinstance(rotations, Interval) else None
    scale_range = check_range("scales", scales, True) if isinstance(scales, Interval) else None
    checked = prepare(
        metric,
        k,
        min_distance,
        threshold,
        None if angle_range else rotations,
        None if scale_range else scales,
        exclude_border,
        options,
    )
    canon = canonicalize(images, templates, **checked.call)
    check_has_values(images=images, templates=templates)
    h, w = canon.templates.shape[-2:]
    space = pose_space((h, w), checked.angles, checked.scales, angle_range, scale_range)
    if angle_range or scale_range:  # the ranges become the grid their step gives for this template
        checked = dataclasses.replace(
            checked,
            angles=space.angles if angle_range or checked.angles else None,
            scales=space.scales if scale_range or checked.scales else None,
        )
    stream = checked.stream(canon) if checked.transformed else None
    beam = default_beam(checked.k, space) if beam is None else beam
    levels, why = plan_pyramid(how, levels, canon, space, checked.border, beam)
    return PlannedSearch(checked, canon, space, stream, levels, why, beam)


def describe(
    images: ArrayLike,
    templates: ArrayLike,
    *,
    metric: str | int = "zncc",
    k: int = 1,
    min_distance: int | None = None,
    threshold: float | None = None,
    rotations: Sequence[float] | Interval | None = None,
    scales: Sequence[float] | Interval | None = None,
    exclude_border: int = 0,
    channels_last: bool = False,
    search: str = "auto",
    levels: int | None = None,
    beam: int | None = None,
    **options: Any,
) -> tuple[list[str], Plan]:
    """(lines saying which search :func:`match` would run, why, and roughly at what cost; the planner's plan for
    the similarity call of its whole transformed bank at full resolution), for :func:`explain` and the command
    line. The arguments are :func:`match`'s."""
    planned = plan_search(
        images, templates, metric, k, min_distance, threshold, rotations, scales, exclude_border, search, levels,
        beam, {**options, "channels_last": channels_last},
    )  # fmt: skip
    canon, stream = planned.canon, planned.stream
    head, members = (canon, canon.templates.shape[1]) if stream is None else (
        with_bank(canon, *stream.draw(0, 1)), stream.members
    )  # fmt: skip
    problem = head.problem
    kind = "per_template" if members > 1 and problem.mask_kind != "none" else problem.mask_kind
    whole = dataclasses.replace(head, problem=dataclasses.replace(problem, n_templates=members, mask_kind=kind))
    bank_plan = make_plan(whole)
    seconds = next(c.seconds for c in bank_plan.candidates if c.engine == bank_plan.engine)
    lines = describe_search(canon, planned.space, planned.levels, planned.beam, planned.why, seconds / members)
    return lines, bank_plan


def explain(images: ArrayLike, templates: ArrayLike, **options: Any) -> str:
    """What a call would do: the planner's engine choice for :func:`slidesim.similarity` (every engine with its
    estimated time and memory, or why it cannot run), and, given any option of :func:`match` (``rotations``,
    ``scales``, ``search``, ``levels``, ``beam``, ``k``, ...), the pose search match would run: pyramid (its
    levels, coarsest template, coarsest pose grid and beam) or exhaustive (its poses), why, and a rough cost.

    Args:
        images: As for :func:`slidesim.similarity`.
        templates: As for :func:`slidesim.similarity`.
        **options: The keyword options of :func:`slidesim.similarity`, or of :func:`match`.

    Returns:
        The text. With match's options, the plan shown is that of the similarity call of the whole transformed
        bank at full resolution (the exhaustive search's; the pyramid scores far fewer windows).

    Raises:
        As :func:`slidesim.similarity`, or :func:`match` when its options are given (before anything is scored).

    Examples:
        >>> import numpy as np, slidesim
        >>> image = np.random.default_rng(0).random((200, 200), dtype=np.float32)
        >>> text = slidesim.explain(image, image[40:104, 60:124], rotations=slidesim.interval(0, 360))
        >>> text.splitlines()[0].split(":")[:2]
        ['search', ' pyramid']
    """
    if not set(options) & _MATCH_ONLY:
        return planner_explain(images, templates, **options)
    lines, bank_plan = describe(images, templates, **options)
    return "\n".join([*lines, repr(bank_plan)])


_MATCH_ONLY = {"k", "min_distance", "threshold", "rotations", "scales", "exclude_border", "search", "levels", "beam"}
"""Options that :func:`match` takes and :func:`slidesim.similarity` does not: given one, ``explain`` describes the
match."""


def best_of_stream(
    canon: Canonical, stream: TransformStream | None, progress: Callable[[int, int], None] | None
) -> tuple[torch.Tensor, torch.Tensor, Canonical]:
    """(best score [B, T, H', W'], index of the best transform [B, T, H', W'] int64, a validated call on members
    of the bank: the geometry of its windows) for a validated call on the untransformed templates and the stream
    of their transforms (None: the templates as they are).

    A bank that fits one chunk is drawn and scored as one call. A larger one streams through one call of one
    engine, chosen for the whole bank, which draws its transforms a chunk at a time (each chunk within a share
    of ``memory_limit``) and computes the image side (centring, window statistics, spectra) once.
    """
    if stream is None:
        return (*best_of_bank(canon, canon.templates.shape[1], 1, progress), canon)
    total = stream.members
    per_chunk = max(1, canon.memory_limit // _BANK_SHARE // max(1, stream.member_bytes()))
    if per_chunk >= total:
        chunk = with_bank(canon, *stream.draw(0, total))
        return (*best_of_bank(chunk, stream.n_templates, stream.transforms, progress), chunk)
    # One validated member gives the bank's geometry and options; the whole bank then streams through one call of
    # one engine, which draws each chunk when it needs it: the image side is computed once.
    head = with_bank(canon, *stream.draw(0, 1))
    engine = _engine_for_bank(head, total)
    best, which = _worst_maps(head, stream.n_templates, stream.transforms)
    step = min(per_chunk, _chunk(head, total, per_template_masks=True))
    higher = head.spec.higher_is_better
    with torch.no_grad():
        for t0, t1, scores in engine.stream(head, step, CanonicalDraws(stream)):
            _fold_scores(scores, t0, t1, stream.transforms, best, which, higher)
            if progress is not None:
                progress(t1, total)
    return best, which, head


class CanonicalDraws:
    """Members of a transformed bank drawn on demand, canonical as a validated call makes them (a weight of zero
    hides a non-finite template pixel): the bank source that :meth:`Engine.stream` draws its chunks from.

    Args:
        stream: The transformed bank.
    """

    def __init__(self, stream: TransformStream) -> None:
        self.stream, self.members = stream, stream.members

    def draw(self, j0: int, j1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Members j0..j1 -> (templates [Bk, j1 − j0, C, Hc, Wc], weights [Bm, j1 − j0, Cm, Hc, Wc])."""
        pictures, weights = self.stream.draw(j0, j1)
        if not all_finite(pictures):
            pictures = torch.where(weights > 0, pictures, 0.0)
        return pictures, weights


def _engine_for_bank(chunk: Canonical, members: int) -> Engine:
    """The engine the planner picks for the whole bank of ``members`` transformed templates, from one chunk of
    it: every chunk runs on it, as one call on the whole bank would."""
    problem = chunk.problem
    kind = "per_template" if members > 1 and problem.mask_kind != "none" else problem.mask_kind
    whole = dataclasses.replace(problem, n_templates=members, mask_kind=kind)
    return select_engine(dataclasses.replace(chunk, problem=whole))


def _worst_maps(canon: Canonical, T: int, R: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(best scores [B, T, H', W'] at the worst value, best transforms [B, T, H', W'] at 0) for R transforms per
    template. With one transform its index stays 0: a read-only view of one zero, not a map of int64."""
    problem = canon.problem
    shape = (canon.image_shape[0], T, problem.out_height, problem.out_width)
    worst = -torch.inf if canon.spec.higher_is_better else torch.inf
    best = torch.full(shape, worst, dtype=canon.out_dtype, device=canon.image_source.device)
    if R == 1:
        return best, torch.zeros((), dtype=torch.int64, device=canon.image_source.device).expand(shape)
    return best, torch.zeros(shape, dtype=torch.int64, device=canon.image_source.device)


def _fold_scores(
    scores: torch.Tensor, j0: int, j1: int, R: int, best: torch.Tensor, which: torch.Tensor, higher: bool
) -> None:
    """Fold the scores [B, j1 − j0, H', W'] of bank members j0..j1 (template t under transform r at t·R + r) into
    ``best`` and ``which`` in place. Ties keep the first transform; NaN never wins."""
    if R == 1:  # each template's only transform: its scores, NaN as the worst (one pass, ``which`` stays 0)
        worst = -torch.inf if higher else torch.inf
        best[:, j0:j1] = scores.nan_to_num(nan=worst, posinf=torch.inf, neginf=-torch.inf)
        return
    if scores.device.type == "cpu" and fused_statistics_available() and best.is_contiguous() and which.is_contiguous():
        from .kernels.numba_fold import fold_best

        fold_best(scores.to(best.dtype), j0, R, best, which, higher)
        return
    for j in range(j0, j1):
        t, r = divmod(j, R)
        s = scores[:, j - j0]
        better = s > best[:, t] if higher else s < best[:, t]
        best[:, t] = torch.where(better, s, best[:, t])
        which[:, t].masked_fill_(better, r)


def _chunk(canon: Canonical, members: int | None = None, per_template_masks: bool = False) -> int:
    """Templates per chunk of a bank of ``members`` (default: the call's own): their score maps, and the float64
    window moments of masks that differ per template (a rotated template's mask does), fit a share of
    memory_limit."""
    problem = canon.problem
    per_pixel = canon.out_dtype.itemsize
    per_template_masks = per_template_masks or (canon.mask is not None and canon.mask.shape[1] > 1)
    if canon.spec.family == "correlation" and per_template_masks:
        per_pixel += 8 * _MOMENT_TEMPORARIES
    per_template = canon.image_shape[0] * problem.out_height * problem.out_width * per_pixel
    members = canon.templates.shape[1] if members is None else members
    return int(max(1, min(members, canon.memory_limit // _MAP_SHARE // max(1, per_template))))


def best_of_bank(
    canon: Canonical, T: int, R: int, progress: Callable[[int, int], None] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score [B, T, H', W'], index of the best transform [B, T, H', W'] int64) over the streamed bank, in
    which template t under transform r sits at index t·R + r. Ties keep the first transform; NaN never wins."""
    higher = canon.spec.higher_is_better
    total = canon.templates.shape[1]
    best = which = None
    with torch.no_grad():
        for t0, t1, scores in select_engine(canon).stream(canon, _chunk(canon)):
            if R == 1 and t1 - t0 == total:  # one chunk of untransformed templates: its maps are the best ones
                worst = -torch.inf if higher else torch.inf
                best = scores.nan_to_num_(nan=worst, posinf=torch.inf, neginf=-torch.inf)  # NaN never wins
                which = torch.zeros((), dtype=torch.int64, device=best.device).expand(best.shape)
            else:
                if best is None:
                    best, which = _worst_maps(canon, T, R)
                _fold_scores(scores, t0, t1, R, best, which, higher)
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


def bank_members(
    canon: Canonical, stream: TransformStream | None
) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]:
    """member(b, j) -> (template [C, h', w'], weights [1 or C, h', w'] or None): member j of image b's bank, as
    scored: drawn again from ``stream`` (None: the call's own templates) and canonical (a weight of zero hides a
    non-finite template pixel)."""
    if stream is None:
        return lambda b, j: bank_member(canon.templates, canon.mask, b, j)

    draws = CanonicalDraws(stream)

    def member(b: int, j: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return bank_member(*draws.draw(j, j + 1), b, 0)

    return member


def _columns(
    canon: Canonical,
    call: dict[str, Any],
    found: torch.Tensor,
    best: torch.Tensor,
    which: torch.Tensor,
    stream: TransformStream | None,
    subpixel: bool,
    progress: Callable[[int, int], None] | None,
) -> list[torch.Tensor]:
    """The fields of :class:`Matches` for integer peaks found [N, 4] (b, t, y, x) of the best map, on the CPU;
    ``canon`` is a validated call with the bank's geometry."""
    angles = torch.zeros(1, dtype=torch.float64) if stream is None else stream.angles
    scales = torch.ones(1, dtype=torch.float64) if stream is None else stream.scales
    R = len(angles)
    member = bank_members(canon, stream)
    higher = canon.spec.higher_is_better
    (sy, sx) = canon.stride
    oy, ox = window_origin(canon)
    b, t, y, x = found.to(best.device).T
    # one gather for every peak: a lookup per peak costs more than the peak search itself for large k
    transforms = which[b, t, y, x].cpu()
    if not subpixel:  # the integer peaks are best first already: columns without a Python object per match
        centre_y = found[:, 2].to(torch.float64) * sy + oy
        centre_x = found[:, 3].to(torch.float64) * sx + ox
        score = best[b, t, y, x].cpu().to(torch.float64)
        return [found[:, 0], found[:, 1], centre_y, centre_x, score, angles[transforms], scales[transforms]]
    transforms = transforms.tolist()
    angle_of, scale_of = angles.tolist(), scales.tolist()
    peaks = []
    for i, (b, t, y, x) in enumerate(found.tolist()):
        template, weights = member(b, t * R + transforms[i])
        peaks.append(Peak(canon.images[b], template, weights, (y * sy + oy, x * sx + ox)))
    refined = refine_peaks(peaks, canon.dilation, higher, call, progress)
    rows = [
        (b, t, cy, cx, score, angle_of[r], scale_of[r])
        for (b, t, _, _), r, (cy, cx, score) in zip(found.tolist(), transforms, refined, strict=True)
    ]
    columns = list(zip(*best_first(rows, higher), strict=True)) if rows else [()] * 7
    ints = [torch.tensor(c, dtype=torch.int64) for c in columns[:2]]
    floats = [torch.tensor(c, dtype=torch.float64) for c in columns[2:]]
    return [*ints, *floats]
