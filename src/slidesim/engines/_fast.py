"""Window statistics in O(H·W) for the fast correlation engines: box sums and separable ranges.

Unmasked window sums come from cumulative sums in float64 of the centred image (the scoring code centres it), so
they stay accurate; unmasked window ranges from two separable max-pooling passes. Both spread a NaN or inf along
their rows and columns, so the engines that use them only run images whose pixels are all finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._scoring import Geometry
from .._validate import Problem
from .direct import DirectPrimitives

CORRELATION_METRICS = ("ccorr", "ncc", "ccoeff", "zncc")


def correlation_ineligible_reason(problem: Problem) -> str | None:
    """Reasons shared by the FFT and conv engines, or None."""
    if problem.metric not in CORRELATION_METRICS:
        return f"computes the correlation metrics {', '.join(CORRELATION_METRICS)} only; got {problem.metric!r}"
    if not problem.finite:
        return "the images contain NaN or inf, which would spread beyond their windows"
    return None


def _box_last_axis(x: torch.Tensor, taps: int, dilation: int, stride: int, count: int) -> torch.Tensor:
    """S[k] = Σ_{i < taps} x[..., k·stride + i·dilation] for k < count, by a cumulative sum per residue class
    modulo the dilation. The scan runs along the contiguous last axis, where torch's cumsum is fast."""
    if taps == 0:
        return x.new_zeros(*x.shape[:-1], count)
    n = x.shape[-1]
    if dilation == 1:
        cumulative = x.cumsum(dim=-1)
    else:
        padded = -(-n // dilation) * dilation
        x = F.pad(x, (0, padded - n))
        cumulative = x.reshape(*x.shape[:-1], padded // dilation, dilation).cumsum(dim=-2).reshape(x.shape)
    cumulative = F.pad(cumulative, (dilation, 0))  # cumulative[k + dilation] = Σ_{j ≤ k, j ≡ k} x[j]
    last = (count - 1) * stride + 1
    return cumulative[..., dilation * taps : dilation * taps + last : stride] - cumulative[..., :last:stride]


def _box(plane: torch.Tensor, taps: tuple[int, int], geom: Geometry, count: tuple[int, int]) -> torch.Tensor:
    """Box sums of plane [..., Hp, Wp] over taps[0] × taps[1] dilated taps, strided -> [..., count]."""
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    columns_first = plane.transpose(-1, -2).contiguous()
    rows = _box_last_axis(columns_first, taps[0], dy, sy, count[0]).transpose(-1, -2).contiguous()
    return _box_last_axis(rows, taps[1], dx, sx, count[1])


def conv_correlate(image: torch.Tensor, kernel: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image by torch conv2d. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W']."""
    kernel = kernel.to(image.dtype)
    B, C, Hp, Wp = image.shape
    Bk, T = kernel.shape[:2]
    options = {"stride": geom.stride, "dilation": geom.dilation}
    if Bk == 1:
        return F.conv2d(image, kernel[0], **options)
    grouped = F.conv2d(image.reshape(1, B * C, Hp, Wp), kernel.reshape(B * T, *kernel.shape[2:]), groups=B, **options)
    return grouped.reshape(B, T, *grouped.shape[-2:])


class FastStatistics(DirectPrimitives):
    """Direct primitives whose unmasked window sums and ranges take O(H·W) instead of O(H·W·h·w)."""

    def window_sum(self, plane: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Σ over each window of plane [B, C', Hp, Wp] (channels summed) -> [B, 1, H', W'].

        Weighted sums use conv2d, not an FFT: a window of zeros must sum to exactly zero, which decides the
        degenerate cases of ncc and ssd_normed.
        """
        if weights is not None:
            return conv_correlate(plane, weights, self.geom)
        total = plane.sum(dim=1, keepdim=True) if plane.shape[1] > 1 else plane
        geom = self.geom
        return _box(total, geom.template_size, geom, (geom.out_height, geom.out_width))

    def window_flat(self, plane: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """True where all values of plane [B, 1, Hp, Wp] in a window are equal -> [B, 1, H', W'] bool.

        A window is flat exactly when no two neighbouring taps differ, along rows and along columns; counting the
        differing neighbour pairs is an integer box sum, exact and O(H·W). Masked windows use the direct loop.
        """
        if support is not None:
            return super().window_flat(plane, support)
        geom = self.geom
        (h, w), (dy, dx) = geom.template_size, geom.dilation
        plane = plane.detach()
        out = (geom.out_height, geom.out_width)
        across = (plane[..., :, dx:] != plane[..., :, :-dx]).to(torch.float64) if w > 1 else None
        down = (plane[..., dy:, :] != plane[..., :-dy, :]).to(torch.float64) if h > 1 else None
        changes = torch.zeros(plane.shape[0], 1, *out, dtype=torch.float64, device=plane.device)  # exact counts
        if across is not None:
            changes += _box(across, (h, w - 1), geom, out)
        if down is not None:
            changes += _box(down, (h - 1, w), geom, out)
        return changes == 0
