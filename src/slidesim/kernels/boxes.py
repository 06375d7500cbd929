"""Box sums (floor L2): sums over every window of a plane in O(H·W), whatever the template size.

Undilated boxes are four lookups in a float64 summed-area table; dilated boxes sum each residue class modulo the
dilation with a cumulative sum, one axis at a time. Cumulative sums carry a NaN or inf into every later sum: the
callers fill NaN pixels first (:mod:`slidesim.scoring.holes`) and never pass ±inf.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._geometry import Geometry


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


def integral_table(plane: torch.Tensor) -> torch.Tensor:
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


def box_sums(plane: torch.Tensor, taps: tuple[int, int], geom: Geometry, count: tuple[int, int]) -> torch.Tensor:
    """Box sums of plane [..., Hp, Wp] over taps[0] × taps[1] dilated taps, strided -> [..., count], float64.

    Undilated boxes are four lookups in a summed-area table (two cumulative sums, one pass each); dilated boxes
    sum each residue class modulo the dilation, one axis at a time.
    """
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    if taps[0] == 0 or taps[1] == 0:
        return plane.new_zeros(*plane.shape[:-2], *count, dtype=torch.float64)
    if dy == 1 and dx == 1:
        table = integral_table(plane)
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


def channel_box_sums(plane: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Σ over each window of ``geom``'s template size of plane [B, C', Hp, Wp], channels summed -> [B, 1, H', W']
    in float64 (:func:`box_sums` of the channels' total)."""
    total = plane.sum(dim=1, keepdim=True) if plane.shape[1] > 1 else plane
    return box_sums(total, geom.template_size, geom, (geom.out_height, geom.out_width))
