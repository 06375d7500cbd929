"""Sub-pixel positions refined on the image data (floor L6).

A quadratic fitted to the score map is biased wherever the score surface is not quadratic, and on anisotropic
textures the best integer position can even be the wrong pixel. Instead, each peak's window is resampled from the
image at shifted positions and scored against the template with the metric itself: 5 × 5 grids of shifts 0.5,
0.125 and 1/32 px apart, each following the surface while its best shift lies on its edge (along a narrow ridge of
the score surface, an edge or a stripe, the integer samples can miss the crest and the best integer position can
lie several pixels from the optimum), then Newton steps on a full quadratic fitted to the 5 × 5 grid 1/32 px apart
around the best shift give the position.

Resampling uses cubic B-splines on prefiltered coefficients, which interpolate (they pass through the pixels) and
come much closer to a band-limited shift than cubic convolution: on photographs shifted by a fraction of a pixel,
cubic convolution alone left errors near 0.05 px. The crop is prefiltered once per peak. The samples of one shift
share their spline weights, so a shifted window is a 4-tap filter of the coefficients in rows and then in columns
(:func:`resample`). The vertex of the quadratic is returned only where it scores at least as well as the best
shift of the grids, and a window whose samples all lie on pixels is read from the pixels, so that an exact copy of
the template keeps its exact score.

Noise: an interpolated sample of white noise has less variance than a pixel (the least half-way between pixels),
so the variance of a noisy window resampled at a fraction of a pixel is lower than at whole pixels, and the
normalized metrics score those shifts higher: on a photograph with noise of σ = 5 grey levels, refined positions
erred by 0.1 px (median) and up to 0.3 px, all towards half pixels. The search therefore compares each window and
the template smoothed alike by [1, 2, 1] / 4 along both axes within the footprint (:func:`smooth_within`), which
takes the noise's highest frequencies, where that loss of variance lies, out of the comparison: 0.013 px median and
0.07 px at most on the same data. A window equal to the template on the footprint stays equal once both are
smoothed, so exact copies keep their place; the score returned is the metric's own, of the unsmoothed window at
the position found. Beside holes and for circular channels or ``channels="separate"`` the search scores the
windows as they are.

Two searches share these pieces: :mod:`slidesim._refine_many` refines every peak of a call together with the
metrics' formulas (what match and find_peaks use), and :func:`refine_on_data` here refines one peak a shift at a
time through the reference's formulas: beside holes, for circular channels and channels="separate", and where
``memory_limit`` cannot hold a row of a grid of shifts at once.

Precision: the search runs in the compute dtype (float32 for float32, uint8 and other narrow inputs; float64 for
float64 ones). Float64 takes over only where round-off could move the answer: shifts whose float32 scores lie
within the round-off bound of a grid's best are compared again in float64, a Newton grid whose quadratic fit
leaves residuals above a fraction of its spread (or has no maximum) is scored again in float64, and the score
returned is the float64 score at the refined position. Holes (NaN or ±inf pixels) are filled before the
prefilter, and a resampled tap that reads one leaves the window's mask; beside holes, and for circular channels,
every shift is scored in float64 by the reference.

Memory: a peak holds its crop, the crop's coefficients and the two prefilter matrices, and then scores a batch of
shifts at a time: as many as ``memory_limit`` holds beside those, or the call is refused with the bytes one shift
needs (:func:`shifts_per_batch`); peaks refined together share the budget. The byte counts are those of float64,
which bounds the float32 path too.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from . import reference
from ._geometry import pad_image
from ._validate import DEFAULT_MEMORY_LIMIT
from .errors import SlidesimValueError
from .kernels.area_sums import fused_statistics_available
from .metrics import resolve_metric
from .scoring.holes import finite_channel_mean

DRIFT = 8.0  # px from the integer peak that the search may follow a ridge to
NEWTON_STEP = 1 / 32  # spacing of the grid the quadratic is fitted to, px
# spacings of the grids that climb the surface, px: 5 × 5 shifts, ±2 steps. The last one is the Newton grid's: the
# sums of absolute differences have narrow V-shaped valleys that a coarser grid's best point can miss and a
# quadratic cannot fit, and its last table is the Newton step's first
CLIMB_STEPS = (0.5, 0.125, NEWTON_STEP)
HALF = 2  # every grid spans ±HALF steps around its centre
MAX_MOVES = 8  # times a grid may follow the surface beyond its edge
_GUARD = 12  # extra pixels around the crop: the prefilter's boundary effect decays as 0.27^k
_KEPT_PREFILTER = 512  # the largest side whose prefilter (2 MiB) is kept between peaks: 16 of them hold 32 MiB
# Float32 scores closer to a grid's best than this many units of round-off (relative to the largest score of the
# grid) are compared again in float64. Measured on 30 peaks of a photograph and on the buttons of a screenshot,
# at the refined positions, the float32 errors of the zncc, ncc and ccorr tables stay within 5 units, those of
# ccoeff within 45; those of ssd and sad reach a few thousand in grids near a perfect match, which are 1/32 px
# grids, where the quadratic fit (not the comparison) decides. Every float64 comparison costs a resampled
# window, and at 1/32 px the normalized scores of a dozen shifts lie within 1024 units of the best.
TIE_ROUNDOFF = 1024
TIE_ROUNDOFF_NORMALIZED = 64  # for zncc, ncc and ccorr: over ten times the largest error measured
_NORMALIZED_TIES = frozenset({"zncc", "ncc", "ccorr"})


def tie_roundoff(metric: str) -> int:
    """Units of float32 round-off within which ``metric``'s scores of one grid are compared again in float64."""
    return TIE_ROUNDOFF_NORMALIZED if metric in _NORMALIZED_TIES else TIE_ROUNDOFF


# A Newton grid whose quadratic fit leaves an RMS residual above this share of the grid's spread of scores is
# scored again in float64: at 1/32 px the surface is quadratic to about 1 %, so more is round-off.
FIT_NOISE = 0.02
# The sums of absolute differences have kinks wherever a tap's difference changes sign: their fits leave residuals
# of a few % whatever the precision, while float32 round-off stays near 1e-3 of the grid's spread (measured on
# photographs), so only a fit without a maximum sends them to float64.
KINKED = frozenset({"sad", "mad", "l1_similarity"})

# Float64 copies alive at once, measured with VmHWM on zncc, sad and ncc with channels "joint" and "mean"; the
# counts carry a margin over what was measured (in brackets).
_CROP_COPIES = 5  # of the crop [C, Hc, Wc]: the read, its float64 copy, the filled one, P @ crop, the coefficients
_PREFILTER_COPIES = 3  # of a prefilter [n, n]: both are kept while the second is inverted (its LU and result)
_WINDOW_COPIES = 6  # of the resampled windows [C, h, w] while one shift is scored (4)
_HOLE_WINDOW_COPIES = 12  # beside a hole: the taps that read it, the mask left and a bank per window (9)


def smoothing_norm(weights: torch.Tensor) -> torch.Tensor:
    """1 / (the [1, 2, 1] / 4 smoothing of weights [..., h, w] along both axes), 0 where that is 0: the
    normalization of :func:`smooth_within` for these weights."""
    norm = _smooth(weights)
    return torch.where(norm > 0, 1 / torch.where(norm > 0, norm, 1.0), 0.0)


def smooth_within(values: torch.Tensor, weights: torch.Tensor, inverse_norm: torch.Tensor) -> torch.Tensor:
    """The taps of values [..., C, h, w] smoothed by [1, 2, 1] / 4 along both axes within the footprint of their
    weights [..., 1 or C, h, w]: the smoothing of weights · values divided by that of the weights
    (``inverse_norm``, :func:`smoothing_norm` of the weights). Taps outside the footprint take no part, so a window
    that equals the template on the footprint stays equal to it once both are smoothed."""
    return _smooth(weights * values) * inverse_norm


def _smooth(values: torch.Tensor) -> torch.Tensor:
    """[1, 2, 1] / 4 along the last two axes of values [..., h, w], zero beyond the edges."""
    out = values * 0.5
    out[..., 1:, :] += values[..., :-1, :] * 0.25
    out[..., :-1, :] += values[..., 1:, :] * 0.25
    rows = out
    out = rows * 0.5
    out[..., :, 1:] += rows[..., :, :-1] * 0.25
    out[..., :, :-1] += rows[..., :, 1:] * 0.25
    return out


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


@functools.lru_cache(maxsize=16)
def _kept_inverse_sampling(n: int, dtype: torch.dtype) -> torch.Tensor:
    return _inverse_sampling(n).to(dtype)


def prefilter(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The prefilter of n samples in ``dtype`` (see :func:`_inverse_sampling`, inverted in float64); kept between
    peaks for sides of up to _KEPT_PREFILTER only, so that the cache stays small whatever the templates."""
    return _kept_inverse_sampling(n, dtype) if n <= _KEPT_PREFILTER else _inverse_sampling(n).to(dtype)


def spline_coefficients(crops: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The cubic B-spline coefficients [..., Hc, Wc] in ``dtype`` of crops [..., Hc, Wc]: the prefilter of their
    columns and of their rows (on the CPU with numba, by tridiagonal elimination in float64; else by the dense
    inverse, on any device and under autograd)."""
    if crops.device.type == "cpu" and fused_statistics_available() and not crops.requires_grad:
        from .kernels.numba_refine import spline_prefilter

        return spline_prefilter(crops).to(dtype)
    Hc, Wc = crops.shape[-2:]
    return prefilter(Hc, dtype) @ crops.to(dtype) @ prefilter(Wc, dtype).T


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


def fill_holes(crop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
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


def spline_weights(positions: torch.Tensor, size: int) -> torch.Tensor:
    """Cubic B-spline weights of sample positions [..., k] over coefficients 0..size − 1 -> [..., k, size], in
    the positions' dtype. The positions must lie at least 1 from either end (the crop's guard band sees to it)."""
    distance = (positions[..., None] - torch.arange(size, dtype=positions.dtype)).abs()
    near = 2 / 3 - distance * distance * (1 - distance / 2)  # |d| < 1
    far = (2 - distance).clamp_min(0) ** 3 / 6  # 1 <= |d| < 2, and 0 beyond
    return torch.where(distance < 1, near, far)


def crop_of(image: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], padding: str, value: float):
    """image[:, r0:r1, c0:c1], padded where the range leaves the image."""
    H, W = image.shape[-2:]
    (r0, r1), (c0, c1) = rows, cols
    inner = image[:, max(r0, 0) : min(r1, H), max(c0, 0) : min(c1, W)]
    pads = (max(0, -r0), max(0, r1 - H), max(0, -c0), max(0, c1 - W))
    return pad_image(inner, pads, padding, value)


def spline_taps(first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the first of the four coefficients that a cubic B-spline sample at each position [...] reads (long), their
    weights [..., 4] float64). Samples one or more pixels apart share the fraction, hence the weights."""
    base = torch.floor(first)
    f = first - base
    f2, f3 = f * f, f * f * f
    weights = torch.stack([(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3], dim=-1) / 6
    return base.long() - 1, weights


def resample(
    coefficients: torch.Tensor,
    first_y: torch.Tensor,
    first_x: torch.Tensor,
    size: tuple[int, int],
    dilation: tuple[int, int],
    reach: tuple[int, int],
    which: torch.Tensor | None = None,
) -> torch.Tensor:
    """Windows [p, ny, nx, C, h, w] resampled from each item's coefficients (in their dtype): for every row shift i
    and column shift j, the h × w samples ``dilation`` apart whose first lies at (first_y[p, i], first_x[p, j])
    (float64 [p, ny] and [p, nx]). The coefficients are [p, C, Hc, Wc], or [P, C, Hc, Wc] with the crop of each
    item in ``which`` [p] (only the band each item reads is gathered).

    The samples of one shift share their spline weights, so a shift is a 4-tap filter of the coefficients, in
    rows and then in columns: each is one small product (the band's rows or columns unfolded against the shifts'
    taps), about 4 multiply-adds per sample and axis where products with dense weight matrices took one per band
    pixel (85 for an 80-pixel-wide template). ``reach`` (y, x) bounds how many pixels the shifts' first taps may
    lie beyond the first one's (0 for single shifts); it sets the products' shapes, so that a shift's arithmetic
    does not depend on which shifts and items are resampled with it.
    """
    p, C = len(first_y), coefficients.shape[1]
    (h, w), (dy, dx) = size, dilation
    ny, nx = first_y.shape[1], first_x.shape[1]
    dtype = coefficients.dtype
    kernel_y, y0 = _shift_kernels(first_y, reach[0], dtype)  # [p, ny, Ly], [p]
    kernel_x, x0 = _shift_kernels(first_x, reach[1], dtype)  # [p, nx, Lx], [p]
    Ly, Lx = kernel_y.shape[-1], kernel_x.shape[-1]
    by, bx = (h - 1) * dy + Ly, (w - 1) * dx + Lx
    rows = (y0[:, None] + torch.arange(by))[:, :, None]  # [p, by, 1]
    cols = (x0[:, None] + torch.arange(bx))[:, None, :]  # [p, 1, bx]
    crop = torch.arange(p) if which is None else which
    band = coefficients[crop[:, None, None], :, rows, cols]  # [p, by, bx, C]
    # the shifts' taps as the short side of each product: [p, ny, L] @ [p, L, everything else]; tap t of window
    # row j is band row j·dy + t, so the taps are the band's windows of L rows, dy apart (one view, one copy)
    taps = band.unfold(1, Ly, dy).permute(0, 4, 1, 2, 3)  # [p, h, bx, C, Ly] -> [p, Ly, h, bx, C]
    filtered = torch.matmul(kernel_y, taps.reshape(p, Ly, h * bx * C)).reshape(p, ny, h, bx, C)
    taps = filtered.unfold(3, Lx, dx).permute(0, 5, 1, 2, 3, 4)  # [p, ny, h, w, C, Lx] -> [p, Lx, ny, h, w, C]
    windows = torch.matmul(kernel_x, taps.reshape(p, Lx, ny * h * w * C))  # [p, nx, ny·h·w·C]
    return windows.reshape(p, nx, ny, h, w, C).permute(0, 2, 1, 5, 3, 4)


def _shift_kernels(first: torch.Tensor, reach: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(per item and shift, the spline weights of its first sample placed at its first coefficient's offset from
    the item's earliest one [p, n, reach + 4] in ``dtype``; that earliest coefficient [p] long)."""
    base, weights = spline_taps(first)  # [p, n], [p, n, 4]
    start = base.amin(dim=1)
    offset = base - start[:, None]
    if int(offset.max()) > reach:
        raise AssertionError(f"shifts reach {int(offset.max())} pixels, beyond the {reach} provided for")
    kernels = torch.zeros(*base.shape, reach + 4, dtype=dtype)
    kernels.scatter_(2, offset[..., None] + torch.arange(4), weights.to(dtype))
    return kernels, start


def grid_reach(step: float) -> int:
    """Pixels by which the first taps of a grid's shifts, ``step`` apart over 2·HALF steps, may differ."""
    return math.floor(2 * HALF * step) + 1


def with_pixels_at_whole_positions(
    windows: torch.Tensor, crops: torch.Tensor, positions_y: torch.Tensor, positions_x: torch.Tensor
) -> torch.Tensor:
    """Resampled windows [N, C, h, w] with those whose every sample lies on a pixel replaced by the pixels of crops
    [N or 1, C, Hc, Wc] (positions [N, h] and [N, w]): the spline reproduces a pixel only to round-off (1e-13
    here), and an exact copy of the template must score exactly as it does unrefined (sad 0, not 1e-10)."""
    whole = (positions_y == positions_y.round()).all(dim=1) & (positions_x == positions_x.round()).all(dim=1)
    if not bool(whole.any()):
        return windows
    rows = positions_y[whole].long()[:, :, None]  # [k, h, 1]
    cols = positions_x[whole].long()[:, None, :]  # [k, 1, w]
    which = (whole.nonzero() if len(crops) > 1 else torch.zeros(int(whole.sum()), 1, dtype=torch.long))[:, :, None]
    pixels = crops[which, :, rows, cols].permute(0, 3, 1, 2)  # [k, h, w, C] -> [k, C, h, w]
    windows = windows.clone()
    windows[whole] = pixels.to(windows.dtype)
    return windows


def crop_window(
    centre: tuple[float, float], template_shape: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The rows (r0, r1) and columns (c0, c1) of the image, possibly beyond its edges, that refinement of a peak
    at ``centre`` reads: the template's span, the search's reach and the prefilter's guard band."""
    h, w = template_shape
    span_y, span_x = dilation[0] * (h - 1), dilation[1] * (w - 1)
    reach = math.ceil(DRIFT) + 2 + _GUARD
    r0 = math.floor(centre[0] - span_y / 2) - reach
    c0 = math.floor(centre[1] - span_x / 2) - reach
    return (r0, r0 + span_y + 2 * reach + 1), (c0, c0 + span_x + 2 * reach + 1)


def read_crop(
    image: torch.Tensor,
    centre: tuple[float, float],
    template_shape: tuple[int, int],
    dilation: tuple[int, int],
    options: dict[str, Any],
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """(the crop [C, Hc, Wc] that refining a peak at ``centre`` reads, on the CPU in float64 for float64 images
    and float32 otherwise; the crop rows [h] and columns [w] (float64) that the unshifted window samples)."""
    h, w = template_shape
    padding = options.get("padding", "constant")
    if options.get("mode", "valid") == "valid" or padding == "circular":
        padding = "replicate"  # only shifts near the border sample it
    rows, cols = crop_window(centre, (h, w), dilation)
    # a few small matrix products per grid: the CPU, wherever the images live
    crop = crop_of(image.detach(), rows, cols, padding, options.get("pad_value", 0.0)).cpu()
    crop = crop.to(torch.float64 if crop.dtype == torch.float64 else torch.float32)
    taps_y = torch.arange(h, dtype=torch.float64) * dilation[0] - dilation[0] * (h - 1) / 2 + centre[0] - rows[0]
    taps_x = torch.arange(w, dtype=torch.float64) * dilation[1] - dilation[1] * (w - 1) / 2 + centre[1] - cols[0]
    return crop, (taps_y, taps_x)


def bank_member(
    templates: torch.Tensor, mask: torch.Tensor | None, b: int, j: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Template j of image b [C, h, w] and its weights [1 or C, h, w] (or None) from a canonical bank
    [Bk, T, C, h, w] and mask [Bm, Tm, Cm, h, w]."""
    template = templates[b if templates.shape[0] > 1 else 0, j]
    if mask is None:
        return template, None
    return template, mask[b if mask.shape[0] > 1 else 0, j if mask.shape[1] > 1 else 0]


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
        image: One image [C, H, W]; float64 images are refined in float64, any other dtype in float32 (with the
            float64 checks of the module's docstring).
        template: Its template [C, h, w] (transformed, for banks of rotations and scales).
        mask: The template's weights [1 or C, h, w], or None.
        centre: Integer peak (y, x) of the template centre in image pixels.
        dilation: Tap spacing (y, x).
        higher: Whether higher scores are better.
        options: Metric options passed to :func:`slidesim.similarity` (metric, channels, circular, padding...).

    Returns:
        The refined centre (y, x) in image pixels and the float64 score of the window resampled there.
    """
    h, w = template.shape[-2:]
    limit = options.get("memory_limit")
    batch = shifts_per_batch(limit, template.shape[0], (h, w), dilation)  # before the crop is read
    crop, taps = read_crop(image, centre, (h, w), dilation, options)
    crop, holes = fill_holes(crop)
    if holes is not None:
        batch = shifts_per_batch(limit, template.shape[0], (h, w), dilation, holes=True)
    surface = _Surface(crop, holes, template.detach().cpu(), mask, taps, dilation, options, higher, batch)
    y, x = 0.0, 0.0
    for step in CLIMB_STEPS:
        y, x = _climb(surface, y, x, step)
    fy, fx = _newton(surface, y, x)
    score = surface.exact(fy, fx)
    if (fy, fx) != (y, x):
        scored = surface.exact(y, x)
        # The vertex only where it scores at least as well as the best shift of the grids (in float64): at an exact
        # copy of a template with sharp edges (a screenshot's button) the surface is not quadratic even at 1/32 px,
        # and the vertex fell 0.005 px beside the copy, where sad is 43 instead of 0 and zncc 0.9999994 instead
        # of 1. Likewise a vertex whose taps all read holes (no score).
        if not score >= scored:
            fy, fx, score = y, x, scored
    if surface.smooth:  # the search compared smoothed windows: the score reported is the metric's own
        score = surface.exact(fy, fx, raw=True)
    sign = 1.0 if higher else -1.0
    return centre[0] + fy, centre[1] + fx, sign * score


class _Surface:
    """The score surface of one peak: its template against the crop resampled at shifts (dy, dx) of the integer
    peak, scored with the metric, negated for minimized metrics (higher is better); a shift without a score, or
    more than DRIFT from the peak, is −inf.

    Args:
        crop: The crop [C, Hc, Wc] (float32 or float64) with its holes filled.
        holes: Map of the holes [C, Hc, Wc] float64 0/1, or None.
        template: The template [C, h, w].
        mask: Its weights [1 or C, h, w], or None.
        taps: Crop rows [h] and columns [w] (float64) that the unshifted window samples.
        dilation: Their spacing (y, x).
        options: The call's options (metric, channels, circular).
        higher: Whether higher scores are better.
        batch: Shifts scored at once at most.
    """

    def __init__(
        self,
        crop: torch.Tensor,
        holes: torch.Tensor | None,
        template: torch.Tensor,
        mask: torch.Tensor | None,
        taps: tuple[torch.Tensor, torch.Tensor],
        dilation: tuple[int, int],
        options: dict[str, Any],
        higher: bool,
        batch: int,
    ) -> None:
        self.crop, self.holes, self.template, self.mask = crop, holes, template, mask
        self.taps_y, self.taps_x = taps
        self.dilation = dilation
        self.sign, self.batch = (1.0 if higher else -1.0), batch
        self.options = {key: options[key] for key in ("metric", "channels", "circular") if key in options}
        self.metric = resolve_metric(self.options.get("metric", "zncc")).name
        channels = self.options.get("channels", "joint")
        # the textbook formulas directly; circular channels and "separate" go through the reference's own call
        self.direct = holes is None and channels in ("joint", "mean") and not self.options.get("circular")
        # the search compares windows and template smoothed alike within the footprint (see the module's docstring)
        self.smooth = self.direct
        self.joint = channels == "joint"
        # beside holes and through the reference every score is float64: so is the search
        self.dtype = crop.dtype if self.direct else torch.float64
        self._coefficients: dict[torch.dtype, torch.Tensor] = {}
        self._operands: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._smoothed: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sides: dict[torch.dtype, dict[str, torch.Tensor]] = {}
        self._last: tuple[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def coefficients(self, dtype: torch.dtype) -> torch.Tensor:
        """The crop's B-spline coefficients [C, Hc, Wc] in ``dtype``, prefiltered once per dtype."""
        if dtype not in self._coefficients:
            self._coefficients[dtype] = spline_coefficients(self.crop, dtype)
        return self._coefficients[dtype]

    def table(
        self, y: float, x: float, step: float, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(scores [5, 5] of the grid of shifts ±HALF steps around (y, x), its rows' dy [5], its columns' dx [5]).
        The last table is kept: the Newton step starts on the grid the last climb ended on."""
        key = (y, x, step, dtype)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        offsets = torch.arange(-HALF, HALF + 1, dtype=torch.float64) * step
        ys, xs = y + offsets, x + offsets
        values = torch.full((len(ys), len(xs)), -torch.inf, dtype=torch.float64)
        # the drift is a box: the shifts within it are a grid too
        rows, cols = ys.abs() <= DRIFT, xs.abs() <= DRIFT
        if bool(rows.any()) and bool(cols.any()):
            inner = self._grid(ys[rows], xs[cols], step, dtype).to(torch.float64)
            values[rows.nonzero()[:, 0, None], cols.nonzero()[:, 0]] = inner
        self._last = (key, (torch.where(torch.isfinite(values), values, -torch.inf), ys, xs))
        return self._last[1]

    def exact(self, dy: float, dx: float, raw: bool = False) -> float:
        """The float64 score of the shift (dy, dx), higher better; ``raw``: the metric's own score, without the
        search's smoothing."""
        shift = torch.tensor([[dy], [dx]], dtype=torch.float64)
        return float(self.pairs(shift[0], shift[1], torch.float64, raw)[0])

    def pairs(self, dy: torch.Tensor, dx: torch.Tensor, dtype: torch.dtype, raw: bool = False) -> torch.Tensor:
        """Scores [N] (float64, higher better, NaN kept) of the shifts (dy[n], dx[n]) [N], a batch at a time."""
        chunks = [
            self._pairs(dy[i : i + self.batch], dx[i : i + self.batch], dtype, raw)
            for i in range(0, len(dy), self.batch)
        ]
        return torch.cat(chunks).to(torch.float64)

    def _pairs(self, dy: torch.Tensor, dx: torch.Tensor, dtype: torch.dtype, raw: bool) -> torch.Tensor:
        coefficients = self.coefficients(max(dtype, self.dtype, key=_width))
        positions_y = dy.to(torch.float64)[:, None] + self.taps_y[None]  # [N, h]
        positions_x = dx.to(torch.float64)[:, None] + self.taps_x[None]  # [N, w]
        if self.holes is None:
            size = (len(self.taps_y), len(self.taps_x))
            same_crop = torch.zeros(len(dy), dtype=torch.long)
            windows = resample(
                coefficients[None], positions_y[:, :1], positions_x[:, :1], size, self.dilation, (0, 0), same_crop
            )[:, 0, 0]
            windows = with_pixels_at_whole_positions(windows, self.crop[None], positions_y, positions_x)
            return self.sign * self._score(windows, raw)
        weights_y = spline_weights(positions_y, coefficients.shape[-2]).to(coefficients.dtype)
        weights_x = spline_weights(positions_x, coefficients.shape[-1]).to(coefficients.dtype)
        windows = torch.einsum("nih,chw,njw->ncij", weights_y, coefficients, weights_x)
        near_y = _neighbours(positions_y, self.holes.shape[-2])
        near_x = _neighbours(positions_x, self.holes.shape[-1])
        touched = torch.einsum("nih,chw,njw->ncij", near_y, self.holes, near_x) > 0  # [N, C, h, w]
        template, mask = self._operands_in(torch.float64)
        return self.sign * _without_touched(windows, template[None], mask, touched, self.options)

    def _grid(self, ys: torch.Tensor, xs: torch.Tensor, step: float, dtype: torch.dtype) -> torch.Tensor:
        """Scores [len(ys), len(xs)] of every shift (ys[i], xs[j]) of a grid ``step`` apart."""
        dy = ys[:, None].expand(len(ys), len(xs)).reshape(-1)
        dx = xs[None, :].expand(len(ys), len(xs)).reshape(-1)
        return self.pairs(dy, dx, dtype).reshape(len(ys), len(xs))

    def _operands_in(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        if dtype not in self._operands:
            mask = None if self.mask is None else self.mask.detach().cpu().to(dtype)
            self._operands[dtype] = (self.template.to(dtype), mask)
        return self._operands[dtype]

    def _smoothed_in(self, dtype: torch.dtype, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the template smoothed within its weights' footprint, the smoothing's inverse norm) in ``dtype``, made
        once per dtype: every batch of shifts reads them."""
        if dtype not in self._smoothed:
            inverse_norm = smoothing_norm(weights)
            self._smoothed[dtype] = (smooth_within(self._operands_in(dtype)[0], weights, inverse_norm), inverse_norm)
        return self._smoothed[dtype]

    def _score(self, windows: torch.Tensor, raw: bool) -> torch.Tensor:
        """Scores [N] of resampled windows [N, C, h, w], in their dtype (float64 through the reference), smoothed
        alike with the template unless ``raw``."""
        template, mask = self._operands_in(windows.dtype)
        if not self.direct:
            return reference.similarity(windows, template[None], mask=mask, **self.options).reshape(-1)
        N, _, h, w = windows.shape
        weights = torch.ones(1, h, w, dtype=windows.dtype) if mask is None else mask
        if self.smooth and not raw:
            template, inverse_norm = self._smoothed_in(windows.dtype, weights)
            windows = smooth_within(windows, weights, inverse_norm)
        scores = reference.score_windows(
            self.metric,
            windows[:, :, None, None],
            template[None, :, None, None],
            weights[None, :, None, None],
            None,
            self.joint,
        )
        return scores.reshape(N, -1).mean(dim=1)  # channels="mean": the mean of the channels' scores


def _width(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits


def _best_shift(surface: _Surface, values: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the best score of a grid's table [5, 5]; the centre wins its ties (a grid moves only to
    a better shift). Float32 scores within the round-off bound of the best are compared again in float64, so that
    round-off does not pick the shift."""
    flat = values.reshape(-1)
    centre = HALF * values.shape[1] + HALF
    top = float(flat.max())
    if top == -math.inf:
        return HALF, HALF
    candidates = (flat == top).nonzero()[:, 0]
    if surface.dtype != torch.float64:
        largest = float(flat[torch.isfinite(flat)].abs().max())
        bound = tie_roundoff(surface.metric) * torch.finfo(surface.dtype).eps * largest
        candidates = (flat >= top - bound).nonzero()[:, 0]
        if len(candidates) > 1:
            rows, cols = candidates // values.shape[1], candidates % values.shape[1]
            exact = surface.pairs(ys[rows], xs[cols], torch.float64)
            exact = torch.where(torch.isfinite(exact), exact, -torch.inf)
            candidates = candidates[exact == exact.max()]
    index = centre if bool((candidates == centre).any()) else int(candidates[0])
    return divmod(index, values.shape[1])


def _climb(surface: _Surface, y: float, x: float, step: float) -> tuple[float, float]:
    """The best shift of 5 × 5 grids ``step`` apart, starting around (y, x): a grid follows the surface while its
    best shift lies on its edge (along a narrow ridge the integer peak can lie pixels from the optimum, and a
    coarse optimum several fine steps from it)."""
    for _ in range(MAX_MOVES):
        values, ys, xs = surface.table(y, x, step, surface.dtype)
        row, col = _best_shift(surface, values, ys, xs)
        if (row, col) == (HALF, HALF):
            return y, x
        y, x = float(ys[row]), float(xs[col])
        if 0 < row < 2 * HALF and 0 < col < 2 * HALF:
            return y, x
    return y, x


def _newton(surface: _Surface, y: float, x: float) -> tuple[float, float]:
    """Newton steps from (y, x): the vertex of a full quadratic (with the cross term a diagonal ridge needs)
    fitted to a 5 × 5 grid 1/32 px apart; a vertex beyond the grid moves the grid along the ridge. A fit whose
    residuals are round-off rather than the surface is made again on float64 scores. Returns (y, x) unchanged
    when no fit has a maximum within the grid."""
    step = NEWTON_STEP
    here_y, here_x = y, x
    for _ in range(MAX_MOVES):
        values, _, _ = surface.table(here_y, here_x, step, surface.dtype)
        fit = quadratic_vertex(values)
        noisy = fit is None or (fit[2] and surface.metric not in KINKED)
        if surface.dtype != torch.float64 and noisy:
            values, _, _ = surface.table(here_y, here_x, step, torch.float64)
            fit = quadratic_vertex(values)
        if fit is None:
            break
        vy, vx, _ = fit
        if abs(vy) <= HALF and abs(vx) <= HALF:
            return here_y + step * vy, here_x + step * vx
        here_y += step * max(-HALF, min(HALF, vy))
        here_x += step * max(-HALF, min(HALF, vx))
    return y, x


@functools.lru_cache(maxsize=1)
def quadratic_design() -> tuple[torch.Tensor, torch.Tensor]:
    """(design [25, 6] of the quadratic 1, y, x, y², x², yx on the 5 × 5 grid, its pseudo-inverse [6, 25])."""
    offsets = torch.arange(-HALF, HALF + 1, dtype=torch.float64)
    y = offsets[:, None].expand(len(offsets), len(offsets)).reshape(-1)
    x = offsets[None, :].expand(len(offsets), len(offsets)).reshape(-1)
    design = torch.stack([torch.ones_like(y), y, x, y * y, x * x, y * x], dim=1)
    return design, torch.linalg.pinv(design)


def quadratic_vertex(table: torch.Tensor) -> tuple[float, float, bool] | None:
    """(offset y, offset x, noisy) of the maximum of a full 2-D quadratic fitted by least squares to the finite
    entries of a 5 × 5 table of scores (offsets in grid steps from its centre; noisy: the RMS residual exceeds
    FIT_NOISE of the entries' spread); None when the fit has no maximum."""
    design, inverse = quadratic_design()
    v = table.reshape(-1)
    finite = torch.isfinite(v)
    if int(finite.sum()) < 9:
        return None
    v = v - v[finite].max()
    if bool(finite.all()):
        coefficients = inverse @ v
    else:
        design, v = design[finite], v[finite]
        coefficients = torch.linalg.lstsq(design, v[:, None]).solution[:, 0]
    residual = float((design @ coefficients - v).pow(2).mean().sqrt())
    noisy = not residual <= FIT_NOISE * float(-v.min())
    _, gy, gx, hyy, hxx, hxy = coefficients.tolist()
    # the Hessian [[2 hyy, hxy], [hxy, 2 hxx]] must be negative definite
    det = 4 * hyy * hxx - hxy * hxy
    if not (hyy < 0 and det > 0):
        return None
    dy = (-2 * hxx * gy + hxy * gx) / det
    dx = (hxy * gy - 2 * hyy * gx) / det
    return dy, dx, noisy


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
