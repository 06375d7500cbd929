"""Sub-pixel positions refined on the image data (floor L6).

A quadratic fitted to the score map is biased wherever the score surface is not quadratic, and on anisotropic
textures the best integer position can even be the wrong pixel. Instead, each peak's window is resampled from the
image at shifted positions and scored against the template with the metric itself; a coarse-to-fine search over
shifts within 3 px, which follows the surface further while the best shift lies on the grid's edge, then Newton
steps on a full quadratic fitted to the finest grid give the position. Along a narrow ridge of the score surface
(an edge, a stripe) the integer samples can miss the crest, and the best integer position can lie several pixels
from the optimum.

Resampling uses cubic B-splines on prefiltered coefficients, which interpolate (they pass through the pixels) and
come much closer to a band-limited shift than cubic convolution: on photographs shifted by a fraction of a pixel,
cubic convolution alone left errors near 0.05 px. Holes (NaN or ±inf pixels) are filled before the prefilter, and
a resampled tap that reads one leaves the window's mask.

Memory: peaks are refined one after the other, so nothing grows with their number. One peak holds its crop, the
crop's coefficients and the two prefilter matrices, and then scores a batch of shifts at a time: as many as
``memory_limit`` holds beside those (the whole grid of a typical template, so that the numbers are those of one
batch), or the call is refused with the bytes one shift needs (:func:`shifts_per_batch`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from . import reference
from ._geometry import pad_image
from ._validate import DEFAULT_MEMORY_LIMIT, Canonical
from .errors import SlidesimValueError
from .metrics import resolve_metric
from .scoring.holes import finite_channel_mean

_REACH = 3.0  # px from the integer peak that the first grid spans
_DRIFT = 8.0  # px from the integer peak that the search may follow a ridge to
_STEPS = (0.5, 0.125, 1 / 32)  # grid spacings of the search, px: the first spans ±_REACH, the others ±2 steps
_MAX_MOVES = 8  # times a fine grid may follow the surface beyond its edge
_GUARD = 12  # extra pixels around the crop: the prefilter's boundary effect decays as 0.27^k
_KEPT_PREFILTER = 512  # the largest side whose prefilter (2 MiB) is kept between peaks: 16 of them hold 32 MiB

# Float64 copies alive at once, measured with VmHWM on zncc, sad and ncc with channels "joint" and "mean"; the
# counts carry a margin over what was measured (in brackets).
_CROP_COPIES = 5  # of the crop [C, Hc, Wc]: the read, its float64 copy, the filled one, P @ crop, the coefficients
_PREFILTER_COPIES = 3  # of a prefilter [n, n]: both are kept while the second is inverted (its LU and result)
_WINDOW_COPIES = 6  # of the resampled windows [C, h, w] while one shift is scored (4)
_HOLE_WINDOW_COPIES = 12  # beside a hole: the taps that read it, the mask left and a bank per window (9)


def _inverse_sampling(n: int) -> torch.Tensor:
    """The inverse of the cubic B-spline sampling matrix of n samples (mirror boundaries), float64 [n, n]."""
    matrix = torch.zeros(n, n, dtype=torch.float64)
    index = torch.arange(n)
    matrix[index, index] = 4 / 6
    matrix[index[1:], index[:-1]] = 1 / 6
    matrix[index[:-1], index[1:]] = 1 / 6
    if n > 1:
        matrix[0, 1] = matrix[-1, -2] = 2 / 6
    else:
        matrix[0, 0] = 1.0
    return torch.linalg.inv(matrix)


_kept_inverse_sampling = functools.lru_cache(maxsize=16)(_inverse_sampling)


def _prefilter(n: int) -> torch.Tensor:
    """The prefilter of n samples (see :func:`_inverse_sampling`); kept between peaks for sides of up to
    _KEPT_PREFILTER only, so that the cache stays small whatever the templates."""
    return _kept_inverse_sampling(n) if n <= _KEPT_PREFILTER else _inverse_sampling(n)


def refinement_bytes(
    channels: int, template_shape: tuple[int, int], dilation: tuple[int, int], holes: bool = False
) -> tuple[int, int]:
    """(bytes that refining one peak holds whatever the shifts scored, bytes each shift scored at once adds) for a
    template [channels, h, w] with taps ``dilation`` apart; ``holes``: the crop holds NaN or ±inf pixels."""
    h, w = template_shape
    (r0, r1), (c0, c1) = crop_window((0.0, 0.0), template_shape, dilation)
    Hc, Wc = r1 - r0, c1 - c0
    crop = channels * Hc * Wc * (_CROP_COPIES + (1 if holes else 0))  # + the map of the holes
    fixed = crop + _PREFILTER_COPIES * (Hc * Hc + Wc * Wc)
    # a shift's spline weights [h, Hc] and [w, Wc], the first product of the resampling [C, h, Wc] (and its
    # contiguous copy), the windows while the metric scores them; beside a hole, the taps that read one as well
    weights = h * Hc + w * Wc
    windows = channels * h * w
    if holes:
        per_shift = 2 * weights + 3 * channels * h * Wc + _HOLE_WINDOW_COPIES * windows
    else:
        per_shift = weights + 2 * channels * h * Wc + _WINDOW_COPIES * windows
    return 8 * fixed, 8 * per_shift


def shifts_per_batch(
    memory_limit: int | None,
    channels: int,
    template_shape: tuple[int, int],
    dilation: tuple[int, int],
    holes: bool = False,
) -> int:
    """How many shifts refinement may score at once within ``memory_limit`` (None: the default) for a template
    [channels, h, w] with taps ``dilation`` apart.

    Raises:
        SlidesimValueError: Not even one shift fits beside the crop: names ``memory_limit`` and the bytes needed.
    """
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit
    fixed, per_shift = refinement_bytes(channels, template_shape, dilation, holes)
    if fixed + per_shift > limit:
        h, w = template_shape
        spaced = "" if tuple(dilation) == (1, 1) else f" with taps {tuple(dilation)} apart (`dilation`)"
        raise SlidesimValueError(
            f"`memory_limit` of {limit:,} bytes cannot hold the sub-pixel refinement of one match of a {h}×{w} "
            f"template with {channels} channel(s){spaced}: its resampled crop and one shifted window need "
            f"{fixed + per_shift:,} bytes. Raise memory_limit to at least {fixed + per_shift:,}, or pass "
            "subpixel=False for integer positions."
        )
    return (limit - fixed) // per_shift


def _fill_holes(crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(crop [C, Hc, Wc] with NaN and ±inf pixels replaced by their channel's mean of finite pixels, the map of
    those pixels as float64 0/1, or None when there are none). The prefilter is a global inverse: one NaN would
    spread to every coefficient, while a filled pixel's influence decays as 0.27^k with the distance k."""
    finite = torch.isfinite(crop)
    if bool(finite.all()):
        return crop, None
    return torch.where(finite, crop, finite_channel_mean(crop[None])[0]), (~finite).to(torch.float64)


def _neighbours(positions: torch.Tensor, size: int) -> torch.Tensor:
    """The pixels that linear interpolation at positions [N, k] reads (one at a whole position, two between)
    -> [N, k, size] float64 0/1."""
    base = torch.floor(positions)
    near = torch.zeros(*positions.shape, size, dtype=torch.float64)
    near.scatter_(-1, base.long().clamp(0, size - 1)[..., None], 1.0)
    between = (positions > base).to(torch.float64)[..., None]
    near.scatter_add_(-1, (base.long() + 1).clamp(0, size - 1)[..., None], between)
    return near


def _weights(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Cubic B-spline weights of sample positions [N, k] over ``size`` coefficients -> [N, k, size]."""
    base = torch.floor(positions)
    t = positions - base
    taps = (
        (1 - t) ** 3 / 6,
        (3 * t**3 - 6 * t**2 + 4) / 6,
        (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6,
        t**3 / 6,
    )
    weights = torch.zeros(*positions.shape, size, dtype=torch.float64)
    for offset, tap in enumerate(taps):
        index = (base.long() + offset - 1).clamp(0, size - 1)
        weights.scatter_add_(-1, index[..., None], tap[..., None])
    return weights


def _crop(image: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], padding: str, value: float):
    """image[:, r0:r1, c0:c1], padded where the range leaves the image."""
    H, W = image.shape[-2:]
    (r0, r1), (c0, c1) = rows, cols
    inner = image[:, max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)]
    pads = (max(0, -r0), max(0, r1 - H), max(0, -c0), max(0, c1 - W))
    return pad_image(inner, pads, padding, value)


def crop_window(
    centre: tuple[float, float], template_shape: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows (r0, r1) and columns (c0, c1) of the image, possibly beyond its edges, that refinement of a peak
    at ``centre`` reads: the template's span, the search's reach and the prefilter's guard band."""
    h, w = template_shape
    span_y, span_x = dilation[0] * (h - 1), dilation[1] * (w - 1)
    reach = math.ceil(_DRIFT) + 2 + _GUARD
    r0 = math.floor(centre[0] - span_y / 2) - reach
    c0 = math.floor(centre[1] - span_x / 2) - reach
    return (r0, r0 + span_y + 2 * reach + 1), (c0, c0 + span_x + 2 * reach + 1)


def bank_member(
    templates: torch.Tensor, mask: torch.Tensor | None, b: int, j: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Template j of image b [C, h, w] and its weights [1 or C, h, w] (or None) from a canonical bank
    [Bk, T, C, h, w] and mask [Bm, Tm, Cm, h, w]."""
    template = templates[b if templates.shape[0] > 1 else 0, j]
    if mask is None:
        return template, None
    return template, mask[b if mask.shape[0] > 1 else 0, j if mask.shape[1] > 1 else 0]


def refine_peak(
    canon: Canonical, call: dict[str, Any], b: int, j: int, centre: tuple[float, float]
) -> tuple[float, float, float]:
    """(y, x, score) of template j of image b of a validated call, refined on the data from an integer centre
    (image pixels); ``call`` holds the call's keyword options."""
    bank, mask = bank_member(canon.templates, canon.mask, b, j)
    higher = canon.spec.higher_is_better
    return refine_on_data(canon.images[b], bank, mask, centre, canon.dilation, higher, call)


def refine_on_data(
    image: torch.Tensor,
    template: torch.Tensor,
    mask: torch.Tensor | None,
    centre: tuple[float, float],
    dilation: tuple[int, int],
    higher: bool,
    options: dict[str, Any],
) -> tuple[float, float, float]:
    """(y, x, score) of the best sub-pixel template centre, searched from the integer peak ``centre``.

    Args:
        image: One image [C, H, W].
        template: Its template [C, h, w] (transformed, for banks of rotations and scales).
        mask: The template's weights [1 or C, h, w], or None.
        centre: Integer peak (y, x) of the template centre in image pixels.
        dilation: Tap spacing (y, x).
        higher: Whether higher scores are better.
        options: Metric options passed to :func:`slidesim.similarity` (metric, channels, circular, padding...).
    """
    h, w = template.shape[-2:]
    span_y, span_x = dilation[0] * (h - 1), dilation[1] * (w - 1)
    padding = options.get("padding", "constant")
    if options.get("mode", "valid") == "valid" or padding == "circular":
        padding = "replicate"  # only shifts near the border sample it
    limit = options.get("memory_limit")
    batch = shifts_per_batch(limit, template.shape[0], (h, w), dilation)  # before the crop is read
    rows, cols = crop_window(centre, (h, w), dilation)
    r0, c0 = rows[0], cols[0]
    # a few small matrix products per shift: the CPU in float64, wherever the images live
    crop = _crop(image.detach(), rows, cols, padding, options.get("pad_value", 0.0)).cpu().to(torch.float64)
    Hc, Wc = crop.shape[-2:]
    crop, holes = _fill_holes(crop)
    if holes is not None:
        batch = shifts_per_batch(limit, template.shape[0], (h, w), dilation, holes=True)
    coefficients = _prefilter(Hc) @ crop @ _prefilter(Wc).T  # [C, Hc, Wc]
    taps_y = torch.arange(h, dtype=torch.float64) * dilation[0] - span_y / 2 + centre[0] - r0
    taps_x = torch.arange(w, dtype=torch.float64) * dilation[1] - span_x / 2 + centre[1] - c0
    template64 = template.detach().cpu().to(torch.float64)[None]
    mask64 = None if mask is None else mask.detach().cpu().to(torch.float64)
    metric_options = {key: options[key] for key in ("metric", "channels", "circular") if key in options}
    sign = 1.0 if higher else -1.0

    def scores(dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        if len(dy) <= batch:  # the whole grid at once: what a typical template does
            return batch_scores(dy, dx)
        return torch.cat([batch_scores(dy[i : i + batch], dx[i : i + batch]) for i in range(0, len(dy), batch)])

    def batch_scores(dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        weights_y = _weights(dy[:, None] + taps_y[None], Hc)  # [N, h, Hc]
        weights_x = _weights(dx[:, None] + taps_x[None], Wc)  # [N, w, Wc]
        windows = torch.einsum("nih,chw,njw->ncij", weights_y, coefficients, weights_x)
        if holes is None:
            result = reference.similarity(windows, template64, mask=mask64, **metric_options)
            return sign * result.reshape(-1)
        near_y = _neighbours(dy[:, None] + taps_y[None], Hc)
        near_x = _neighbours(dx[:, None] + taps_x[None], Wc)
        touched = torch.einsum("nih,chw,njw->ncij", near_y, holes, near_x) > 0  # [N, C, h, w]
        return sign * _without_touched(windows, template64, mask64, touched, metric_options)

    best_y, best_x = 0.0, 0.0
    best = float(scores(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))[0])
    for step in _STEPS:
        half = round(_REACH / step) if step == _STEPS[0] else 2
        # a grid follows the surface while its best point lies on the grid's edge: along a narrow ridge the
        # integer peak can lie pixels from the optimum, and a coarse optimum several fine steps from it
        for _ in range(_MAX_MOVES):
            table, dy, dx = _grid_scores(scores, best_y, best_x, half, step)
            index = int(table.argmax())
            row, col = divmod(index, table.shape[1])
            if float(table[row, col]) > best:
                best, best_y, best_x = float(table[row, col]), float(dy[index]), float(dx[index])
            inside = 0 < row < table.shape[0] - 1 and 0 < col < table.shape[1] - 1
            if inside or float(table[row, col]) < best:
                break
    # Newton steps on the finest grid: the vertex of a full quadratic (with the cross term a diagonal ridge needs)
    # fitted to the 5 × 5 scores around the current point; a vertex beyond the grid moves the grid along the ridge
    step = _STEPS[-1]
    y, x = best_y, best_x
    for _ in range(_MAX_MOVES):
        table, _, _ = _grid_scores(scores, y, x, 2, step)
        vertex = _quadratic_vertex(table)
        if vertex is None:
            break
        if abs(vertex[0]) <= 2 and abs(vertex[1]) <= 2:
            best_y, best_x = y + step * vertex[0], x + step * vertex[1]
            break
        y += step * max(-2.0, min(2.0, vertex[0]))
        x += step * max(-2.0, min(2.0, vertex[1]))
    return centre[0] + best_y, centre[1] + best_x, sign * best


_SUMS = {"sad": 1, "ssd": 2, "ccorr": 2, "ccoeff": 2}  # metrics that add up their taps: the power of M in them


def _without_touched(
    windows: torch.Tensor,
    template: torch.Tensor,
    mask: torch.Tensor | None,
    touched: torch.Tensor,
    options: dict[str, Any],
) -> torch.Tensor:
    """Scores [N] of resampled windows [N, C, h, w] against ``template`` [1, C, h, w] where samples ``touched``
    [N, C, h, w] read a hole: those taps leave each window's mask, as the hole's own pixel does at whole shifts (a
    NaN sample would make every shift beside a hole NaN, even where the hole itself lies under a zero weight). The
    metrics that add up their taps are scaled back to the full mask's total weight, so that shifts losing a tap
    stay comparable."""
    N, C, h, w = windows.shape
    full = torch.ones(1, C, h, w, dtype=torch.float64) if mask is None else mask.expand(1, C, h, w)
    kept = full * (~touched)
    windows = windows.masked_fill(touched, 0.0)  # outside the mask: any finite value
    # A shift whose every weighted tap reads a hole has no score; with channels="mean" every channel needs a weight
    # of its own (the mean of per-channel scores), so losing one channel's last tap is enough.
    per_channel = kept.sum(dim=(-2, -1)) > 0  # [N, C]
    alive = per_channel.all(dim=-1) if options.get("channels") == "mean" else per_channel.any(dim=-1)
    if not bool(alive.all()):
        scores = torch.full((N,), torch.nan, dtype=torch.float64)
        if bool(alive.any()):
            scores[alive] = _without_touched(windows[alive], template, mask, touched[alive], options)
        return scores
    bank = template.expand(N, C, h, w)[:, None]  # a bank per window, so that each has its own mask
    result = reference.similarity(windows, bank, mask=kept[:, None], **options)
    power = _SUMS.get(resolve_metric(options.get("metric", "zncc")).name)
    if power is None:
        return result.reshape(-1)
    dims = (-3, -2, -1)
    if result.dim() == 5:  # channels="separate" [N, 1, C, 1, 1]: each channel has its own sum
        dims = (-2, -1)
    total, left = full.pow(power).sum(dim=dims), kept.pow(power).sum(dim=dims)
    scale = torch.where(left > 0, total / left.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)
    return (result.reshape(N, -1) * scale.reshape(N, -1)).reshape(-1)


def _grid_scores(scores, y: float, x: float, half: int, step: float):
    """(scores [2·half + 1, 2·half + 1] of the shifts around (y, x) within ±_DRIFT, −inf elsewhere; their dy, dx)."""
    grid = torch.arange(-half, half + 1, dtype=torch.float64) * step
    side = len(grid)
    dy = (y + grid)[:, None].expand(side, side).reshape(-1)
    dx = (x + grid)[None, :].expand(side, side).reshape(-1)
    keep = (dy.abs() <= _DRIFT) & (dx.abs() <= _DRIFT)
    values = torch.full((side * side,), -torch.inf, dtype=torch.float64)
    if bool(keep.any()):
        values[keep] = scores(dy[keep], dx[keep])
    values = torch.where(torch.isfinite(values), values, -torch.inf)
    return values.reshape(side, side), dy, dx


def _quadratic_vertex(table: torch.Tensor) -> tuple[float, float] | None:
    """Offset (in grid steps, from the centre of a square table of scores) of the maximum of a full 2-D quadratic
    fitted by least squares to its finite entries; None when the fit has no maximum."""
    half = table.shape[0] // 2
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    y = offsets[:, None].expand_as(table).reshape(-1)
    x = offsets[None, :].expand_as(table).reshape(-1)
    v = table.reshape(-1)
    finite = torch.isfinite(v)
    if int(finite.sum()) < 9:
        return None
    y, x, v = y[finite], x[finite], v[finite]
    design = torch.stack([torch.ones_like(y), y, x, y * y, x * x, y * x], dim=1)
    _, gy, gx, hyy, hxx, hxy = torch.linalg.lstsq(design, (v - v.max())[:, None]).solution[:, 0].tolist()
    hessian = torch.tensor([[2 * hyy, hxy], [hxy, 2 * hxx]], dtype=torch.float64)
    if not bool((torch.linalg.eigvalsh(hessian) < 0).all()):
        return None
    dy, dx = torch.linalg.solve(hessian, -torch.tensor([gy, gx], dtype=torch.float64)).tolist()
    return dy, dx
