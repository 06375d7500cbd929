"""The numba engine: fused, parallel CPU kernels for the distance metrics (sad, mad, l1_similarity, ssd) and the
exact ssd of ssd_normed.

The kernels (:mod:`slidesim.engines._numba_kernels`) never materialize windows. Unweighted, non-circular sums
run in register tiles: the image is copied once into stride-phase planes (padded for the last tile's reads),
every thread takes an image, a group of up to five templates and a band of output rows, and each tile of up to 48
consecutive outputs keeps its accumulators in vector registers over all template taps, so a tap costs a subtract
and a multiply-add per vector for ssd. Masks and circular channels run in a general kernel; backward runs fused
too. Window statistics and correlations of ssd_normed come from the direct engine.

numba is optional: without it this engine reports itself unavailable and ``method="auto"`` moves on.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence

import numpy as np
import torch

from .._scoring import Geometry, geometry, padded_images, score_channels
from .._validate import Canonical, Problem
from .direct import DirectPrimitives, block_elements

NAME = "numba"
_METRICS = ("sad", "mad", "l1_similarity", "ssd", "ssd_normed")
_PARALLEL_WORK = 4_000_000  # differences below which one thread is faster than starting threads
_BAND_ELEMENTS = 4096  # output positions of one task: its accumulators stay in L1 and L2
_GROUP = 5  # templates per register tile (see _numba_kernels._band_sums)


def unavailable_reason() -> str | None:
    """None when numba can be imported, else how to get it."""
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install 'slidesim[numba]')"
    return None


def ineligible_reason(problem: Problem) -> str | None:
    """The numba engine runs distance metrics on CPU tensors."""
    if problem.metric not in _METRICS:
        return f"accelerates the distance metrics {', '.join(_METRICS)} only; got {problem.metric!r}"
    if not problem.device.startswith("cpu"):
        return f"runs on the CPU only; the tensors are on {problem.device}"
    return None


def _kernels():
    from . import _numba_kernels

    return _numba_kernels


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


def _tile_operands(image: np.ndarray, templates: np.ndarray, stride, dilation, group: int) -> tuple:
    """The operands of the tiled kernel: (planes, length, values [Bk, T·taps], offsets [taps], Wq).

    The image is split by row and column residue modulo the stride into P = sy·sx phase planes of Hq × Wq per
    channel, so that template tap (c, i, j) at output (y, x) reads plane element (y + oy, x + ox): offsets[k] is
    the start of tap k's run in image b's planes, which begin at b·length of the flat ``planes``. The copy also
    pads the end for the last tile's reads. Templates are regrouped tap-major in groups of ``group``.
    """
    (sy, sx), (dy, dx) = stride, dilation
    B, C, Hp, Wp = image.shape
    Bk, T, _, h, w = templates.shape
    Hq, Wq = -(-Hp // sy), -(-Wp // sx)
    length = C * sy * sx * Hq * Wq
    # the most that a band's last tile reads past its last output
    padding = _kernels().TILE_ALIGN * _kernels().VECTOR_BYTES // image.itemsize
    planes = np.zeros(B * length + padding, dtype=image.dtype)
    if sy == sx == 1:
        planes[: B * length] = image.reshape(-1)
    else:
        _kernels().split_phases(image, sy, sx, planes[: B * length].reshape(B, C, sy, sx, Hq, Wq))
    taps = C * h * w
    flat = templates.reshape(Bk, T, taps)
    values = np.empty((Bk, T * taps), dtype=image.dtype)
    for t0 in range(0, T, group):
        k = min(group, T - t0)
        values[:, t0 * taps : (t0 + k) * taps] = flat[:, t0 : t0 + k].transpose(0, 2, 1).reshape(Bk, k * taps)
    return planes, length, values, _tap_offsets(C, h, w, sy, sx, dy, dx, Hq, Wq), Wq


@functools.lru_cache(maxsize=64)
def _tap_offsets(C: int, h: int, w: int, sy: int, sx: int, dy: int, dx: int, Hq: int, Wq: int) -> np.ndarray:
    """offsets[k] of :func:`_tile_operands` (shared between calls: the kernels only read it); cached because small
    calls spend more time building them than in the kernel."""
    rows, columns = np.arange(h)[:, None] * dy, np.arange(w)[None, :] * dx
    phase = (rows % sy) * sx + columns % sx
    within = (phase * (Hq * Wq) + (rows // sy) * Wq + columns // sx).reshape(-1)
    channels = np.arange(C)[:, None] * (sy * sx * Hq * Wq)
    return (channels + within[None, :]).reshape(-1).astype(np.int64)


def _forward(image, templates, weights, power, periods, geom):
    kernels = _kernels()
    image_np, templates_np = _as_numpy(image), _as_numpy(templates)
    B, T = image.shape[0], templates.shape[1]
    out = np.empty((B, T, geom.out_height, geom.out_width), dtype=image_np.dtype)
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    if weights is None and not any(p is not None for p in periods or ()):
        planes, length, values, offsets, width = _tile_operands(
            image_np, templates_np, geom.stride, geom.dilation, _GROUP
        )
        band = max(1, _BAND_ELEMENTS // width)
        work = out.size * offsets.size
        tiles = kernels.distance_tiles if work > _PARALLEL_WORK else kernels.distance_tiles_serial
        tiles(planes, length, values, offsets, power, _GROUP, width, band, out)
    else:
        weights_np, periods_np = _weights_and_periods(weights, periods, templates)
        kernels.distance_general(image_np, templates_np, weights_np, periods_np, power, sy, sx, dy, dx, out)
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
    return _forward(image, templates, weights, power, _period_tuple(periods), geom)


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


class NumbaPrimitives(DirectPrimitives):
    """Direct primitives with the distance reduction replaced by the fused numba kernels."""

    def distance(
        self,
        image: torch.Tensor,
        templates: torch.Tensor,
        weights: torch.Tensor | None,
        power: int,
        periods: tuple[float | None, ...] | None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps w · |image − template|^power -> [B, T, H', W'] (weights [Bm, Tm, Cm, h, w] or None)."""
        templates = templates.to(image.dtype)
        weights = weights.detach().to(image.dtype) if weights is not None else None
        if torch.is_grad_enabled() and (image.requires_grad or templates.requires_grad):
            geom = self.geom
            period_list = [p or 0.0 for p in periods] if periods is not None and any(periods) else []
            return torch.ops.slidesim.numba_distance(
                image, templates, weights, period_list, power, list(geom.stride), list(geom.dilation),
                geom.out_height, geom.out_width,
            )  # fmt: skip
        # without autograd the kernels run directly: the dispatcher would add a few µs to small calls
        return _forward(image, templates, weights, power, periods, self.geom)


def primitives(canon: Canonical, image: torch.Tensor) -> NumbaPrimitives:
    """The engine's sliding reductions for a validated call on its padded images."""
    return NumbaPrimitives(geometry(canon), block_elements(canon.memory_limit, image.element_size()))


def run(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
    image = padded_images(canon)
    return score_channels(primitives(canon, image), canon, image)
