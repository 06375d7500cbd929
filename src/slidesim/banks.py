"""Banks of rotated and scaled templates, and the best score over a bank, reduced as the bank streams (floor L6).

Rotations are in degrees, counter-clockwise as displayed with y pointing down (the convention of
``skimage.transform.rotate``); scales are factors. Every transform of a bank is drawn on one canvas whose centre is
the template's centre, so a position on the score map means the same object centre for every transform, and a
mask keeps only the canvas pixels that came from the template.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TransformedBank", "canvas_size", "transform_bank"]

_INSIDE = 1e-6  # source coordinates this far outside the template still count as inside (round-off)


@dataclass(frozen=True)
class TransformedBank:
    """Templates under every (scale, angle), on one canvas.

    Attributes:
        templates: [Bk, T·R, C, Hc, Wc]: template t under transform r at index t·R + r.
        mask: [Bk', T·R, C', Hc, Wc] weights: the template's own mask (or 1) where the canvas pixel came from the
            template, 0 elsewhere.
        angles: Degrees of transform r [R] (float64).
        scales: Factor of transform r [R] (float64).
    """

    templates: torch.Tensor
    mask: torch.Tensor
    angles: torch.Tensor
    scales: torch.Tensor

    @property
    def transforms(self) -> int:
        return len(self.angles)


def canvas_size(h: int, w: int, angles: Sequence[float], scales: Sequence[float]) -> tuple[int, int]:
    """The smallest canvas, of the template's parity, that holds the template under every angle and scale.

    Same parity keeps the identity transform on the pixel grid: its samples are the template's pixels exactly.
    """
    need_h, need_w = h, w
    for scale in scales:
        for angle in angles:
            c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
            half_h = scale * (c * (h - 1) + s * (w - 1)) / 2
            half_w = scale * (s * (h - 1) + c * (w - 1)) / 2
            need_h = max(need_h, 2 * math.ceil(half_h - 1e-9) + 1)
            need_w = max(need_w, 2 * math.ceil(half_w - 1e-9) + 1)
    grow_h, grow_w = need_h - h, need_w - w
    return h + grow_h + (grow_h % 2), w + grow_w + (grow_w % 2)


def _blur(templates: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of [N, C, h, w] before shrinking, against aliasing (replicated borders)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=templates.dtype, device=templates.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    N, C, h, w = templates.shape
    planes = F.pad(templates.reshape(N * C, 1, h, w), (radius,) * 4, mode="replicate")
    planes = F.conv2d(F.conv2d(planes, kernel.reshape(1, 1, -1, 1)), kernel.reshape(1, 1, 1, -1))
    return planes.reshape(N, C, h, w)


def _sample(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of plane [N, C, h, w] at source coordinates rows, cols [Hc, Wc] (pixels)."""
    h, w = plane.shape[-2:]
    gy = rows * (2 / (h - 1)) - 1 if h > 1 else torch.zeros_like(rows)
    gx = cols * (2 / (w - 1)) - 1 if w > 1 else torch.zeros_like(cols)
    grid = torch.stack([gx, gy], dim=-1)[None].expand(plane.shape[0], -1, -1, -1)
    return F.grid_sample(plane, grid.to(plane.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def transform_bank(
    templates: torch.Tensor, mask: torch.Tensor | None, angles: Sequence[float], scales: Sequence[float]
) -> TransformedBank:
    """Every template under every (scale, angle), with the masks of the pixels that came from it.

    Args:
        templates: [Bk, T, C, h, w] (canonical bank, float).
        mask: [Bm, Tm, Cm, h, w] weights or None.
        angles: Degrees, counter-clockwise as displayed.
        scales: Positive factors.

    Returns:
        A :class:`TransformedBank` with R = len(scales) · len(angles) transforms, scale-major.
    """
    Bk, T, C, h, w = templates.shape
    Hc, Wc = canvas_size(h, w, angles, scales)
    dtype, device = torch.float64, templates.device
    flat = templates.reshape(Bk * T, C, h, w).to(dtype)
    user_mask = None
    if mask is not None:
        Bm, Tm, Cm = mask.shape[:3]
        user_mask = mask.to(dtype).reshape(Bm * Tm, Cm, h, w)
    v = torch.arange(Hc, dtype=dtype, device=device)[:, None] - (Hc - 1) / 2  # canvas offsets from the centre
    u = torch.arange(Wc, dtype=dtype, device=device)[None, :] - (Wc - 1) / 2
    pictures, masks, all_angles, all_scales = [], [], [], []
    for scale in scales:
        source = flat if scale >= 1 else _blur(flat, (1 / scale - 1) / 2)
        for angle in angles:
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            # displayed counter-clockwise with y down: template offset (dy, dx) lands at canvas offset
            # (c·dy − s·dx, s·dy + c·dx) · scale; invert that map for each canvas pixel
            rows = (c * v + s * u) / scale + (h - 1) / 2
            cols = (-s * v + c * u) / scale + (w - 1) / 2
            inside = (rows >= -_INSIDE) & (rows <= h - 1 + _INSIDE) & (cols >= -_INSIDE) & (cols <= w - 1 + _INSIDE)
            inside = inside.to(dtype)
            pictures.append(_sample(source, rows, cols) * inside)
            weight = inside[None, None] if user_mask is None else _sample(user_mask, rows, cols) * inside
            masks.append(weight)
            all_angles.append(float(angle))
            all_scales.append(float(scale))
    R = len(pictures)
    bank = torch.stack(pictures, dim=1).reshape(Bk, T, R, C, Hc, Wc).reshape(Bk, T * R, C, Hc, Wc)
    if user_mask is None:
        weights = torch.stack(masks, dim=1).expand(1, R, 1, Hc, Wc)
        weights = weights[:, None].expand(1, T, R, 1, Hc, Wc).reshape(1, T * R, 1, Hc, Wc)
    else:
        Bm, Tm, Cm = mask.shape[:3]
        weights = torch.stack(masks, dim=1).reshape(Bm, Tm, R, Cm, Hc, Wc)
        weights = weights.expand(Bm, T, R, Cm, Hc, Wc).reshape(Bm, T * R, Cm, Hc, Wc)
    return TransformedBank(
        bank.to(templates.dtype).contiguous(),
        weights.to(templates.dtype).contiguous(),
        torch.tensor(all_angles, dtype=torch.float64),
        torch.tensor(all_scales, dtype=torch.float64),
    )
