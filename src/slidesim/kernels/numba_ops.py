"""The numba CPU kernels as torch-facing operations (floor L2): the fused distance reduction, forward and
backward (also as the operator ``torch.ops.slidesim.numba_distance``), and the correlation's product tiles.

The kernels (:mod:`slidesim.kernels.numba_kernels`) never materialize windows. Sums run in register tiles: the
image is copied once into stride-phase planes (padded for the last tile's reads), every thread takes an image, a
group of up to five templates and a band of output rows, and each tile of up to 48 consecutive outputs keeps its
accumulators in vector registers over all template taps, so a tap costs a subtract and a multiply-add per vector
for ssd. Masks run in the tiles too: taps that every template weighs 0 are dropped, and other weights multiply in
(one more broadcast per tap and template). Circular channels, and per-template or per-image masks where a
difference is not finite (a zero weight must skip it, not multiply it), run in a general kernel; backward runs
fused too. The product tiles compute Σ K·I with one multiply-add per tap and output, up to four templates per
tile.

numba is imported on first use of a kernel, never by importing this module.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from .._geometry import Geometry
from .._threads import numba_threads

_PARALLEL_WORK = 4_000_000  # differences below which one thread is faster than starting threads
_BAND_ELEMENTS = 4096  # output positions of one task: its accumulators stay in L1 and L2


@functools.cache  # an import statement per use costs microseconds that small calls notice
def _kernel_module():
    from . import numba_kernels

    return numba_kernels


def _kernels():
    """The kernel module, with numba's thread count on this thread set to the running call's."""
    numba_threads()
    return _kernel_module()


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def _weights_and_periods(
    weights: torch.Tensor | None, periods: tuple[float | None, ...] | None, templates: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    dtype = templates.dtype
    h, w = templates.shape[-2:]
    C = templates.shape[2]
    if weights is None:
        weights = torch.ones(1, 1, 1, h, w, dtype=dtype)
    period_array = np.zeros(C, dtype=_as_numpy(templates).dtype)
    for c, period in enumerate(periods or ()):
        period_array[c] = period or 0.0
    return _as_numpy(weights.to(dtype)), period_array


def _phase_planes(
    image: np.ndarray, stride: tuple[int, int], dtype: np.dtype | None = None
) -> tuple[np.ndarray, int, int, int]:
    """(planes, length, Hq, Wq): the images split by row and column residue modulo the stride into sy·sx phase
    planes of Hq × Wq per channel in ``dtype`` (default: the image's; 8- and 16-bit integer images are widened in
    this copy),
    flattened (image b at b·length), and padded at the end for the last tile's reads. Template tap (c, i, j) at
    output (y, x) then reads plane element (y + oy, x + ox)."""
    sy, sx = stride
    B, C, Hp, Wp = image.shape
    Hq, Wq = -(-Hp // sy), -(-Wp // sx)
    length = C * sy * sx * Hq * Wq
    dtype = image.dtype if dtype is None else dtype
    # a bound on how far a band's last tile reads past its last output (its width, at most 6 vectors)
    padding = _kernels().TILE_ALIGN * _kernels().VECTOR_BYTES // np.dtype(dtype).itemsize
    planes = np.zeros(B * length + padding, dtype=dtype)
    if sy == sx == 1:
        planes[: B * length] = image.reshape(-1)
    else:  # a strided copy per phase; rows and columns past a phase's end stay zero
        phases = planes[: B * length].reshape(B, C, sy, sx, Hq, Wq)
        for ry in range(sy):
            for rx in range(sx):
                part = image[:, :, ry::sy, rx::sx]
                phases[:, :, ry, rx, : part.shape[2], : part.shape[3]] = part
    return planes, length, Hq, Wq


def _grouped(per_tap: np.ndarray, group: int) -> np.ndarray:
    """[X, T, taps] -> [X, T·taps] in groups of ``group`` templates, each tap-major (the tiles' layout)."""
    X, T, taps = per_tap.shape
    out = np.empty((X, T * taps), dtype=per_tap.dtype)
    for t0 in range(0, T, group):
        k = min(group, T - t0)
        out[:, t0 * taps : (t0 + k) * taps] = per_tap[:, t0 : t0 + k].transpose(0, 2, 1).reshape(X, k * taps)
    return out


def _tile_weights(
    weights: np.ndarray | None, image: np.ndarray, templates: np.ndarray
) -> tuple[bool, np.ndarray | None, np.ndarray | None]:
    """(tiles, keep, scale): whether the tiles can run this mask, the taps to run (None: all) and their weights
    [Bw, T, kept taps] (None: all ones).

    Taps that every template and image weighs 0 are dropped, so a shared binary mask runs the plain tiles on its
    active taps only. Other weights run in the weighted tiles, where a zero weight contributes 0 · |d|^p: exact
    for a finite difference d, NaN for an infinite or NaN one. The general kernel skips zero-weight taps instead,
    so per-template or per-image masks stay there unless every difference is finite (no NaN or inf pixel, and
    max |I| + max |T| does not overflow).
    """
    if weights is None:
        return True, None, None
    Bw, Tw, _, h, w = weights.shape
    shared = Bw == 1 and Tw == 1  # every weight of a kept tap is then non-zero
    if not shared and not _differences_finite(image, templates):
        return False, None, None
    T, C = templates.shape[1], templates.shape[2]
    full = np.broadcast_to(weights, (Bw, T, C, h, w)).reshape(Bw, T, C * h * w)
    keep = (full != 0).any(axis=(0, 1))
    kept = full[:, :, keep]
    return True, keep, None if bool((kept == 1).all()) else np.ascontiguousarray(kept)


def _differences_finite(image: np.ndarray, templates: np.ndarray) -> bool:
    """Whether every difference I − T is finite: no NaN or inf on either side and no overflow between them."""
    with np.errstate(over="ignore", invalid="ignore"):  # max and min propagate NaN; no temporary the image's size
        largest = max(templates.max(initial=0), -templates.min(initial=0))
        if image.dtype.kind == "f":  # 8- and 16-bit integer images are finite and far from overflowing
            largest = largest + max(image.max(initial=0), -image.min(initial=0))
    return bool(np.isfinite(largest))


@functools.lru_cache(maxsize=64)
def _tap_offsets(C: int, h: int, w: int, sy: int, sx: int, dy: int, dx: int, Hq: int, Wq: int) -> np.ndarray:
    """offsets[k]: where tap k = (c, i, j) of output (0, 0) reads in an image's phase planes (shared between calls:
    the kernels only read it); cached because small calls spend more time building them than in the kernel."""
    rows, columns = np.arange(h)[:, None] * dy, np.arange(w)[None, :] * dx
    phase = (rows % sy) * sx + columns % sx
    within = (phase * (Hq * Wq) + (rows // sy) * Wq + columns // sx).reshape(-1)
    channels = np.arange(C)[:, None] * (sy * sx * Hq * Wq)
    return (channels + within[None, :]).reshape(-1).astype(np.int64)


def distance(image, templates, weights, power, periods, geom: Geometry) -> torch.Tensor:
    """Σ_c Σ_taps w · |wrap(image − template)|^power -> [B, T, H', W'], without autograd: image [B, C, Hp, Wp],
    templates [Bk, T, C, h, w] and weights [Bm, Tm, Cm, h, w] (or None) in one float dtype, periods per channel
    (None for linear channels) or None. The image is in that dtype too, or 8- and 16-bit integers (as a call
    stores them), widened in the tiles' copy of the image."""
    kernels = _kernels()
    image_np, templates_np = _as_numpy(image), _as_numpy(templates)
    B, T = image.shape[0], templates.shape[1]
    out = np.empty((B, T, geom.out_height, geom.out_width), dtype=templates_np.dtype)
    tiles, keep, scale = False, None, None
    if not any(p is not None for p in periods or ()):  # circular channels: the general kernel wraps differences
        weights_np = _as_numpy(weights.to(templates.dtype)) if weights is not None else None
        tiles, keep, scale = _tile_weights(weights_np, image_np, templates_np)
    if tiles:
        _run_tiles(image_np, templates_np, keep, scale, power, geom, out)
    else:
        (sy, sx), (dy, dx) = geom.stride, geom.dilation
        weights_np, periods_np = _weights_and_periods(weights, periods, templates)
        image_np = image_np.astype(templates_np.dtype, copy=False)  # the general kernel reads one float dtype
        kernels.distance_general(image_np, templates_np, weights_np, periods_np, power, sy, sx, dy, dx, out)
    return torch.from_numpy(out)


def _run_tiles(image, templates, keep, scale, power, geom, out) -> None:
    """out [B, T, H', W'] ← Σ w·|I − T|^p by the register tiles, over the kept taps (all when keep is None)."""
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    Bk, T, C, h, w = templates.shape
    planes, length, Hq, Wq = _phase_planes(image, geom.stride, templates.dtype)
    offsets = _tap_offsets(C, h, w, sy, sx, dy, dx, Hq, Wq)
    per_tap = templates.reshape(Bk, T, C * h * w)
    if keep is not None:
        offsets, per_tap = offsets[keep], per_tap[:, :, keep]
    group = _kernels().MAX_GROUP if scale is None else _kernels().MAX_WEIGHTED_GROUP
    values = _grouped(per_tap, group)
    weights = _grouped(scale, group) if scale is not None else values[:1]  # not read without scale
    band = max(1, _BAND_ELEMENTS // Wq)
    tiled = _kernels().distance_tiles if out.size * offsets.size > _PARALLEL_WORK else _kernels().distance_tiles_serial
    tiled(planes, length, values, weights, offsets, power, int(scale is not None), group, Wq, band, out)


def correlate(image: torch.Tensor, kernel: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image by the product tiles: image [B, C, Hp, Wp] (finite), kernel [Bk, T, C, h, w]
    -> [B, T, H', W'] in the image dtype (the kernel's for 8- and 16-bit integer images, which are widened in the
    tiles' copy of the image). Taps where every kernel is 0 add nothing to a finite image and are dropped (a
    mask's zeros)."""
    image_np = _as_numpy(image)
    kernel_np = _as_numpy(kernel.to(image.dtype if image.is_floating_point() else kernel.dtype))
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    Bk, T, C, h, w = kernel_np.shape
    out = np.empty((image_np.shape[0], T, geom.out_height, geom.out_width), dtype=kernel_np.dtype)
    planes, length, Hq, Wq = _phase_planes(image_np, geom.stride, kernel_np.dtype)
    offsets = _tap_offsets(C, h, w, sy, sx, dy, dx, Hq, Wq)
    per_tap = kernel_np.reshape(Bk, T, C * h * w)
    keep = (per_tap != 0).any(axis=(0, 1))
    if not bool(keep.all()):
        offsets, per_tap = offsets[keep], per_tap[:, :, keep]
    group = _kernels().MAX_PRODUCT_GROUP
    values = _grouped(per_tap, group)
    band = max(1, _BAND_ELEMENTS // Wq)
    parallel = out.size * offsets.size > _PARALLEL_WORK
    tiled = _kernels().correlate_tiles if parallel else _kernels().correlate_tiles_serial
    tiled(planes, length, values, offsets, group, Wq, band, out)
    return torch.from_numpy(out)


def _geometry(stride: Sequence[int], dilation: Sequence[int], out_size: tuple[int, int], templates) -> Geometry:
    return Geometry(
        (stride[0], stride[1]), (dilation[0], dilation[1]), out_size[0], out_size[1], tuple(templates.shape[-2:])
    )


def _period_tuple(periods: Sequence[float]) -> tuple[float | None, ...] | None:
    """Op argument (a period per channel, 0 for linear channels; empty when none is circular) -> engine form."""
    return tuple(p if p > 0 else None for p in periods) if periods else None


@torch.library.custom_op("slidesim::numba_distance", mutates_args=(), device_types="cpu")
def numba_distance(
    image: torch.Tensor,
    templates: torch.Tensor,
    weights: torch.Tensor | None,
    periods: Sequence[float],
    power: int,
    stride: Sequence[int],
    dilation: Sequence[int],
    out_height: int,
    out_width: int,
) -> torch.Tensor:
    """Σ_c Σ_taps w · |wrap(image − template)|^power by the fused numba kernels, as a torch operator.

    Args:
        image: [B, C, Hp, Wp] padded images, float32 or float64.
        templates: [Bk, T, C, h, w] in the image dtype, Bk ∈ {1, B}.
        weights: [Bw, Tw, Cw, h, w] mask weights in the image dtype, or None.
        periods: A period per channel (0 for a linear channel), or empty when no channel is circular.
        power: 1 for |d|, 2 for d².
        stride, dilation: (y, x) pairs.
        out_height, out_width: Size of the score map.

    Returns:
        [B, T, out_height, out_width] in the image dtype.
    """
    geom = _geometry(stride, dilation, (out_height, out_width), templates)
    return distance(image, templates, weights, power, _period_tuple(periods), geom)


@numba_distance.register_fake
def _numba_distance_fake(image, templates, weights, periods, power, stride, dilation, out_height, out_width):
    return image.new_empty(image.shape[0], templates.shape[1], out_height, out_width)


@torch.library.custom_op("slidesim::numba_distance_backward", mutates_args=(), device_types="cpu")
def numba_distance_backward(
    grad: torch.Tensor,
    image: torch.Tensor,
    templates: torch.Tensor,
    weights: torch.Tensor | None,
    periods: Sequence[float],
    power: int,
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`numba_distance` for images [B, C, Hp, Wp] and templates [Bk, T, C, h, w], computed
    together by one fused kernel."""
    image_np, templates_np = _as_numpy(image), _as_numpy(templates)
    weights_np, periods_np = _weights_and_periods(weights, _period_tuple(periods), templates)
    grad_image = np.zeros_like(image_np)
    grad_templates = np.zeros((image.shape[0], *templates.shape[1:]), dtype=templates_np.dtype)
    _kernels().distance_backward(
        image_np,
        templates_np,
        weights_np,
        periods_np,
        power,
        stride[0],
        stride[1],
        dilation[0],
        dilation[1],
        _as_numpy(grad.to(image.dtype)),
        grad_image,
        grad_templates,
    )
    grad_t = torch.from_numpy(grad_templates)
    if templates.shape[0] == 1:
        grad_t = grad_t.sum(dim=0, keepdim=True)
    return torch.from_numpy(grad_image), grad_t


@numba_distance_backward.register_fake
def _numba_distance_backward_fake(grad, image, templates, weights, periods, power, stride, dilation):
    return torch.empty_like(image), torch.empty_like(templates)


def _setup_context(ctx, inputs, output) -> None:
    image, templates, weights, periods, power, stride, dilation, _, _ = inputs
    ctx.save_for_backward(image, templates, weights)
    ctx.periods, ctx.power, ctx.stride, ctx.dilation = periods, power, stride, dilation


def _backward(ctx, grad):
    image, templates, weights = ctx.saved_tensors
    grad_image, grad_templates = torch.ops.slidesim.numba_distance_backward(
        grad, image, templates, weights, ctx.periods, ctx.power, ctx.stride, ctx.dilation
    )
    need_image, need_templates = ctx.needs_input_grad[:2]
    return (grad_image if need_image else None, grad_templates if need_templates else None, *([None] * 7))


numba_distance.register_autograd(_backward, setup_context=_setup_context)
