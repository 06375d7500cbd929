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
    """S[k] = Σ_{i < taps} x[..., k·stride + i·dilation] for k < count, by a per-residue cumulative sum."""
    n = x.shape[-1]
    padded = -(-n // dilation) * dilation
    x = F.pad(x, (0, padded - n))
    cumulative = x.reshape(*x.shape[:-1], padded // dilation, dilation).cumsum(dim=-2).reshape(x.shape)
    cumulative = F.pad(cumulative, (dilation, 0))  # cumulative[k + dilation] = Σ_{j ≤ k, j ≡ k} x[j]
    starts = torch.arange(count, device=x.device) * stride
    upper = cumulative.index_select(-1, starts + dilation * taps)
    lower = cumulative.index_select(-1, starts)
    return upper - lower


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
        geom = self.geom
        (h, w), (sy, sx), (dy, dx) = geom.template_size, geom.stride, geom.dilation
        total = plane.sum(dim=1, keepdim=True) if plane.shape[1] > 1 else plane
        rows = _box_last_axis(total.transpose(-1, -2), h, dy, sy, geom.out_height).transpose(-1, -2)
        return _box_last_axis(rows, w, dx, sx, geom.out_width)

    def window_range(self, plane: torch.Tensor, support: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Max and min of plane [B, 1, Hp, Wp] over each window -> [B, 1, H', W'] (masked: the direct loop)."""
        if support is not None:
            return super().window_range(plane, support)
        geom = self.geom
        (h, w), (sy, sx), (dy, dx) = geom.template_size, geom.stride, geom.dilation
        plane = plane.detach()

        def sliding_max(x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(x, (h, 1), stride=(sy, 1), dilation=(dy, 1))
            return F.max_pool2d(x, (1, w), stride=(1, sx), dilation=(1, dx))

        return sliding_max(plane), -sliding_max(-plane)
