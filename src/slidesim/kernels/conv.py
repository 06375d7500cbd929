"""Correlation by torch conv2d (floor L2): Σ_c Σ_taps kernel · image for a whole bank, the image never repeated.

The bank is conv2d's output channels (grouped per image for per-image banks). Large float32 outputs on the CPU
are computed in bands of rows, and float64 (which torch unfolds, im2col) a band at a time (see
:func:`conv_correlate`). On CUDA, TF32 is switched off (:mod:`slidesim.kernels.precision`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._geometry import Geometry
from .precision import full_float32

UNFOLD_BUDGET = 64 * 2**20  # bytes of the windows torch's float64 conv2d unfolds (im2col) per band of rows
_BANDED_FROM = 16 * 2**20  # float32 outputs from this size run in bands of rows (see conv_correlate)
_BAND_BYTES = 2 * 2**20  # conv2d output of one band: stays in cache and is recycled by malloc


def unfold_budget(memory_limit: int) -> int:
    """Bytes of float64 windows unfolded per band of rows under ``memory_limit``: a quarter of it, at most
    :data:`UNFOLD_BUDGET`."""
    return max(1, min(UNFOLD_BUDGET, memory_limit // 4))


def conv_correlate(
    image: torch.Tensor, kernel: torch.Tensor, geom: Geometry, unfold_bytes: int = UNFOLD_BUDGET
) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image by torch conv2d. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'];
    float64 unfolds at most ``unfold_bytes`` of windows at a time (a band of rows; at least one row).

    float32 runs through oneDNN, whose temporaries are about one copy of the image. torch's float64 conv2d on the
    CPU unfolds every window first (C·h·w values per output pixel), so it runs a band of output rows at a time.

    A large float32 output on the CPU also runs in bands of rows, written into one array allocated by numpy:
    oneDNN computes in a blocked layout and reorders into a fresh output, and a fresh allocation of tens of MiB
    costs a page fault per 4 KiB page on first touch (torch's allocator does not ask for huge pages, numpy's
    does), as much time as the arithmetic for a bank of small templates. Bands keep both in cache.
    """
    kernel = kernel.to(image.dtype)
    B, C = image.shape[:2]
    h, w = kernel.shape[-2:]
    rows = geom.out_height
    per_image = B if kernel.shape[0] > 1 else 1
    unfolded_row = C * h * w * geom.out_width * image.element_size() * per_image
    if image.dtype == torch.float64 and unfolded_row * rows > unfold_bytes:
        return torch.cat(
            [_conv(part, kernel, geom) for part in _row_bands(image, geom, h, unfold_bytes // unfolded_row)], -2
        )
    output_row = B * kernel.shape[1] * geom.out_width * image.element_size()
    if not _banded(image, kernel) or output_row * rows < _BANDED_FROM:
        return _conv(image, kernel, geom)
    out = torch.from_numpy(np.empty((B, kernel.shape[1], rows, geom.out_width), np.float32))
    band = max(1, _BAND_BYTES // output_row)
    for r0, part in zip(range(0, rows, band), _row_bands(image, geom, h, band), strict=True):
        out[..., r0 : r0 + band, :] = _conv(part, kernel, geom)
    return out


def _banded(image: torch.Tensor, kernel: torch.Tensor) -> bool:
    """Whether bands may write into a numpy array: float32 on the CPU, without autograd."""
    return (
        image.device.type == "cpu"
        and image.dtype == torch.float32
        and not (torch.is_grad_enabled() and (image.requires_grad or kernel.requires_grad))
    )


def _row_bands(image: torch.Tensor, geom: Geometry, h: int, band: int):
    """The image rows each band of ``band`` output rows reads (the last band may be shorter)."""
    band = max(1, band)
    (sy, _), (dy, _) = geom.stride, geom.dilation
    span = dy * (h - 1) + 1
    for r0 in range(0, geom.out_height, band):
        yield image[..., r0 * sy : (min(geom.out_height, r0 + band) - 1) * sy + span, :]


def _conv(image: torch.Tensor, kernel: torch.Tensor, geom: Geometry) -> torch.Tensor:
    B, C, Hp, Wp = image.shape
    Bk, T = kernel.shape[:2]
    if Bk == 1:
        return conv2d(image, kernel[0], geom.stride, geom.dilation, 1)
    grouped = conv2d(
        image.reshape(1, B * C, Hp, Wp), kernel.reshape(B * T, *kernel.shape[2:]), geom.stride, geom.dilation, B
    )
    return grouped.reshape(B, T, *grouped.shape[-2:])


class FullPrecisionConv2d(torch.autograd.Function):
    """F.conv2d (no padding) with TF32 off in the forward and the backward pass (the backward runs later, outside
    any block the forward ran in, so it sets the flags again)."""

    @staticmethod
    def forward(ctx, image, weight, stride, dilation, groups):
        ctx.save_for_backward(image, weight)
        ctx.options = (stride, dilation, groups)
        with full_float32():
            return F.conv2d(image, weight, stride=stride, dilation=dilation, groups=groups)

    @staticmethod
    def backward(ctx, grad):
        image, weight = ctx.saved_tensors
        stride, dilation, groups = ctx.options
        need_image, need_weight = ctx.needs_input_grad[:2]
        grad_image = grad_weight = None
        with full_float32():
            if need_image:
                grad_image = torch.nn.grad.conv2d_input(
                    image.shape, weight, grad, stride=stride, dilation=dilation, groups=groups
                )
            if need_weight:
                grad_weight = torch.nn.grad.conv2d_weight(
                    image, weight.shape, grad, stride=stride, dilation=dilation, groups=groups
                )
        return grad_image, grad_weight, None, None, None


def conv2d(
    image: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], dilation: tuple[int, int], groups: int
) -> torch.Tensor:
    """F.conv2d without padding, in full float32 on CUDA (see :func:`full_float32`); plain F.conv2d on the CPU,
    where no TF32 exists."""
    if image.is_cuda and image.dtype == torch.float32:
        return FullPrecisionConv2d.apply(image, weight, stride, dilation, groups)
    return F.conv2d(image, weight, stride=stride, dilation=dilation, groups=groups)
