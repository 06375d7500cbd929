"""Per-template constants in float64 (floor L3): the ccoeff kernel, flatness and weight totals of a bank."""

from __future__ import annotations

import torch

from ..reference import all_equal
from .bounds import tiny


def centred_kernel(bank64: torch.Tensor, m64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ccoeff kernel, template minus its per-channel M-weighted mean), both float64 [Bk, T, C, h, w], from a bank
    [Bk, T, C, h, w] and its mask [Bm, Tm, Cm, h, w] in float64."""
    m_sum = m64.sum(dim=(-1, -2), keepdim=True).clamp_min(tiny())
    t_centred = bank64 - (m64 * bank64).sum(dim=(-1, -2), keepdim=True) / m_sum
    kernel = m64 * m64 * t_centred
    # OpenCV's ccoeff is Σ W (T − m_T)(I − m_I) with M-weighted window means m_I; folding the window mean into
    # the kernel gives one correlation whose kernel sums to zero per channel, hence shift-invariant.
    return kernel - m64 * kernel.sum(dim=(-1, -2), keepdim=True) / m_sum, t_centred


def flat_templates(bank64: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True for templates whose supported values are equal within every channel -> [Bk or Bm, T] (the
    reference's definition of flat)."""
    return all_equal(bank64, (mask > 0).expand_as(bank64), (-1, -2)).all(dim=-1)


def mask_sums(mask: torch.Tensor | None, channels: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Σ M over channels and taps per template -> [Bm, Tm] (float64)."""
    if mask is None:
        return like.new_full((1, 1), float(channels * h * w), dtype=torch.float64)
    per_tap = mask.to(torch.float64).sum(dim=(-1, -2))
    return per_tap.sum(dim=-1) * (channels if mask.shape[2] == 1 else 1)
