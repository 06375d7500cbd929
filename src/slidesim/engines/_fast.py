"""Window statistics in O(H·W) for the fast correlation engines, and their conv2d correlation.

Unmasked windows: one fused numba pass over the centred image gives every window's Σ (I − s)² less its squared
mean (or 1/√ of it) in float64 (:mod:`slidesim.engines._numba_windows`); without numba, summed-area tables in
float64 give the same sums. Masked windows: float64 FFT sums where exact zeros are not needed, conv2d where they
are. Flatness: an exact count of differing neighbour pairs per window, run only on windows that may be flat. All
of these spread a NaN or inf beyond its windows: the scoring code fills NaN pixels before they run and marks the
windows that hold them after (:mod:`slidesim._holes`), and the engines that use them do not run images with ±inf.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .._scoring import Geometry
from .._validate import Problem
from ._precision import full_float32
from ._spectral import fft_correlate
from .direct import DirectPrimitives

CORRELATION_METRICS = ("ccorr", "ncc", "ccoeff", "zncc")


def correlation_ineligible_reason(problem: Problem) -> str | None:
    """Reasons shared by the engines that use these statistics (fft, conv, and numba for correlations), or None."""
    if problem.metric not in CORRELATION_METRICS:
        return f"computes the correlation metrics {', '.join(CORRELATION_METRICS)} only; got {problem.metric!r}"
    if problem.infinite:
        return "the images contain ±inf, which an FFT or a cumulative sum would spread beyond their windows"
    return None


def _box_last_axis(x: torch.Tensor, taps: int, dilation: int, stride: int, count: int) -> torch.Tensor:
    """S[k] = Σ_{i < taps} x[..., k·stride + i·dilation] for k < count, by a cumulative sum per residue class
    modulo the dilation. The scan runs along the contiguous last axis, where torch's cumsum is fast."""
    if taps == 0:
        return x.new_zeros(*x.shape[:-1], count)
    n = x.shape[-1]
    padded = -(-n // dilation) * dilation
    x = F.pad(x, (0, padded - n))
    cumulative = x.reshape(*x.shape[:-1], padded // dilation, dilation).cumsum(dim=-2).reshape(x.shape)
    cumulative = F.pad(cumulative, (dilation, 0))  # cumulative[k + dilation] = Σ_{j ≤ k, j ≡ k} x[j]
    last = (count - 1) * stride + 1
    return cumulative[..., dilation * taps : dilation * taps + last : stride] - cumulative[..., :last:stride]


def _integral(plane: torch.Tensor) -> torch.Tensor:
    """Summed-area table of plane [..., Hp, Wp] in float64 with a zero first row and column -> [..., Hp+1, Wp+1]."""
    if plane.requires_grad:  # the differentiable spelling; the one below writes into a preallocated table
        return F.pad(plane.to(torch.float64).cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
    table = plane.new_empty(*plane.shape[:-2], plane.shape[-2] + 1, plane.shape[-1] + 1, dtype=torch.float64)
    table[..., 0, :] = 0
    table[..., :, 0] = 0
    inner = table[..., 1:, 1:]
    torch.cumsum(plane, dim=-1, dtype=torch.float64, out=inner)
    inner.cumsum_(dim=-2)  # in place along rows: about as fast as the scan along the contiguous axis
    return table


def _box(plane: torch.Tensor, taps: tuple[int, int], geom: Geometry, count: tuple[int, int]) -> torch.Tensor:
    """Box sums of plane [..., Hp, Wp] over taps[0] × taps[1] dilated taps, strided -> [..., count], float64.

    Undilated boxes are four lookups in a summed-area table (two cumulative sums, one pass each); dilated boxes
    sum each residue class modulo the dilation, one axis at a time.
    """
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    if taps[0] == 0 or taps[1] == 0:
        return plane.new_zeros(*plane.shape[:-2], *count, dtype=torch.float64)
    if dy == 1 and dx == 1:
        table = _integral(plane)
        (h, w), (n_rows, n_cols) = taps, count
        top, bottom = slice(0, (n_rows - 1) * sy + 1, sy), slice(h, h + (n_rows - 1) * sy + 1, sy)
        left, right = slice(0, (n_cols - 1) * sx + 1, sx), slice(w, w + (n_cols - 1) * sx + 1, sx)
        if table.requires_grad:
            return table[..., bottom, right] - table[..., top, right] - table[..., bottom, left] + table[..., top, left]
        box = torch.sub(table[..., bottom, right], table[..., top, right])  # in place from here: no more temporaries
        box -= table[..., bottom, left]
        box += table[..., top, left]
        return box
    plane = plane.to(torch.float64)
    columns_first = plane.transpose(-1, -2).contiguous()
    rows = _box_last_axis(columns_first, taps[0], dy, sy, count[0]).transpose(-1, -2).contiguous()
    return _box_last_axis(rows, taps[1], dx, sx, count[1])


_UNFOLD_BUDGET = 64 * 2**20  # bytes of the windows torch's float64 conv2d unfolds (im2col) per band of rows
_BANDED_FROM = 16 * 2**20  # float32 outputs from this size run in bands of rows (see conv_correlate)
_BAND_BYTES = 2 * 2**20  # conv2d output of one band: stays in cache and is recycled by malloc


def conv_correlate(image: torch.Tensor, kernel: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image by torch conv2d. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

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
    if image.dtype == torch.float64 and unfolded_row * rows > _UNFOLD_BUDGET:
        return torch.cat(
            [_conv(part, kernel, geom) for part in _row_bands(image, geom, h, _UNFOLD_BUDGET // unfolded_row)], -2
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


_NO_FACTORS = np.zeros((0, 0, 0))  # tells the fused kernel to write values, not factors
_NO_OUT = np.zeros((1, 1, 1))  # the values' array when the kernel writes factors


def fused_statistics_available() -> bool:
    """Whether numba is installed, for the one-pass window statistics of :mod:`slidesim.engines._numba_windows`."""
    return importlib.util.find_spec("numba") is not None


@dataclass(frozen=True)
class FastStatistics(DirectPrimitives):
    """Direct primitives whose window sums and ranges take O(H·W) (unmasked) or O(H·W·log) (masked, FFT) instead
    of O(H·W·h·w).

    Attributes:
        chunk_bytes: Bytes that the spectra of one chunk of templates (or weights) may use.
        spectra: Whole-image spectra kept between calls while a bank streams through (None: not kept).
    """

    chunk_bytes: int = 64 * 2**20
    spectra: dict | None = None
    cumulative_window_sums = True  # unmasked window sums come from summed-area tables or running sums
    spreads_nan = True  # so do FFTs: the scoring code fills NaN pixels first and marks their windows after

    def _fused(self, plane: torch.Tensor) -> bool:
        return (
            not plane.requires_grad
            and plane.device.type == "cpu"
            and self.geom.dilation == (1, 1)
            and fused_statistics_available()
        )

    def _run_fused(
        self, plane: torch.Tensor, shift: torch.Tensor, centred: bool, tolerance: float, out: np.ndarray, factors
    ) -> int:
        """Run the numba pass into ``out`` ([B, H', W'] float64) or, when ``factors`` is not empty, into it."""
        import numba

        from ._numba_windows import window_squares

        geom = self.geom
        # A few tasks per thread balance the load; fewer, taller bands re-sum fewer first windows.
        rows_per_task = max(8, -(-geom.out_height * plane.shape[0] // (4 * numba.get_num_threads())))
        image = plane.detach()[:, 0].contiguous().numpy()
        shifts = shift.detach().to(torch.float64).reshape(-1).contiguous().numpy()
        size, stride = geom.template_size, geom.stride
        return int(window_squares(image, shifts, *size, *stride, centred, rows_per_task, tolerance, out, factors))

    def window_squares(self, plane: torch.Tensor, shift: torch.Tensor, centred: bool) -> torch.Tensor | None:
        """Σ (I − s)², minus (Σ (I − s))² / n when centred, over every unmasked window of plane [B, 1, Hp, Wp]
        with shift [B, 1, 1, 1] -> [B, 1, H', W'] float64, in one numba pass; None (the scoring code then combines
        summed-area box sums) without numba, off the CPU, with dilation, or when a gradient is needed."""
        if not self._fused(plane):
            return None
        out = torch.empty(plane.shape[0], 1, self.geom.out_height, self.geom.out_width, dtype=torch.float64)
        self._run_fused(plane, shift, centred, 0.0, out[:, 0].numpy(), _NO_FACTORS)
        return out

    def plane_energy(self, plane: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None:
        """Σ (I − s)² of each image of plane [B, 1, Hp, Wp] with shift [B, 1, 1, 1] -> [B] float64, in one numba
        pass; None where the fused pass cannot run (the scoring code then sums float64 pieces)."""
        if plane.device.type != "cpu" or not fused_statistics_available():
            return None
        from ._numba_windows import plane_energies

        image = plane.detach()[:, 0].contiguous().numpy()
        shifts = shift.detach().to(torch.float64).reshape(-1).contiguous().numpy()
        return torch.from_numpy(plane_energies(image, shifts))

    def window_factors(
        self, plane: torch.Tensor, shift: torch.Tensor, tolerance: float, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """1/√(window variance × n) of plane − shift ([B, 1, Hp, Wp], [B, 1, 1, 1]) for every unmasked window,
        [B, 1, H', W'] in ``dtype``, in one numba pass; None where the fused pass cannot run or where some window's
        variance is within ``tolerance`` (it may be flat: the caller then runs the exact test)."""
        if not self._fused(plane):
            return None
        factors = torch.empty(plane.shape[0], 1, self.geom.out_height, self.geom.out_width, dtype=dtype)
        low = self._run_fused(plane, shift, True, tolerance, _NO_OUT, factors[:, 0].numpy())
        return factors if low == 0 else None

    def window_sum(self, plane: torch.Tensor, weights: torch.Tensor | None, exact_zeros: bool = True) -> torch.Tensor:
        """Σ over each window of plane [B, C', Hp, Wp] (channels summed) -> [B, 1, H', W'].

        Weighted sums use conv2d when ``exact_zeros``: a window of zeros must then sum to exactly zero, which
        decides the degenerate cases of ncc and ssd_normed. Otherwise (zncc's moments, whose degenerate windows
        the exact flat test decides) they use a float64 FFT, whose error is within the flat test's rounding bound.
        """
        if weights is not None:
            if not exact_zeros:
                return fft_correlate(plane, weights, self.geom, self.chunk_bytes, spectra=self.spectra)
            return conv_correlate(plane, weights, self.geom)
        total = plane.sum(dim=1, keepdim=True) if plane.shape[1] > 1 else plane
        geom = self.geom
        return _box(total, geom.template_size, geom, (geom.out_height, geom.out_width))

    def window_flat(
        self, plane: torch.Tensor, support: torch.Tensor | None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """True where all values of plane [B, 1, Hp, Wp] in a window are equal -> [B, 1, r1 - r0, W'] bool for
        output rows r0:r1 (default all).

        A window is flat exactly when no two neighbouring taps differ, along rows and along columns; counting the
        differing neighbour pairs is an integer box sum, exact and O(H·W). Masked windows use the direct loop.
        """
        if support is not None:
            return super().window_flat(plane, support, rows)
        geom = self.geom
        (h, w), (dy, dx), sy = geom.template_size, geom.dilation, geom.stride[0]
        r0, r1 = rows if rows is not None else (0, geom.out_height)
        span = dy * (h - 1) + 1
        plane = plane.detach()[..., r0 * sy : (r1 - 1) * sy + span, :]  # only the rows these windows cover
        out = (r1 - r0, geom.out_width)
        changes = torch.zeros(plane.shape[0], 1, *out, dtype=torch.float64, device=plane.device)  # exact counts
        if w > 1:
            changes += _box(plane[..., :, dx:] != plane[..., :, :-dx], (h, w - 1), geom, out)
        if h > 1:
            changes += _box(plane[..., dy:, :] != plane[..., :-dy, :], (h - 1, w), geom, out)
        return changes == 0
