"""Rounding bounds of window statistics (floor L3): plain functions of tensors, shared by the statistics and the
exact rescoring."""

from __future__ import annotations

import torch


def tiny() -> float:
    """The smallest normal float64."""
    return torch.finfo(torch.float64).tiny


def inverse_root(
    values: torch.Tensor, degenerate: torch.Tensor | None, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/√values, 0 where values <= 0 or degenerate; the degenerate mask). Overwrites values.

    The factors are in ``dtype`` when every positive value is a normal number there (so is its inverse root):
    half the memory traffic for each template that uses them; float64 otherwise.
    """
    bad = values <= 0
    if degenerate is not None:
        bad |= degenerate
    if dtype != torch.float64:
        info = torch.finfo(dtype)
        low, high = torch.aminmax(values)
        if float(low) < info.tiny and bool(bad.any()):  # zeros of degenerate windows do not count
            low = torch.where(bad, 1.0, values).min()
        if info.tiny <= float(low) and float(high) <= info.max:
            return values.to(dtype).rsqrt_().masked_fill_(bad, 0.0), bad
    return values.clamp_min_(tiny()).rsqrt_().masked_fill_(bad, 0.0), bad


def finite_extremes(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of the finite values of a float tensor (0, 0 when there are none), or of an integer one."""
    if data.dtype == torch.uint16:  # torch has no min or max for it; numpy reads the same memory (CPU only)
        values = data.numpy()
        return torch.tensor(int(values.min())), torch.tensor(int(values.max()))
    low, high = torch.aminmax(data)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return low, high
    finite = torch.isfinite(data)
    if not bool(finite.any()):
        return data.new_zeros(()), data.new_zeros(())
    return torch.aminmax(data[finite])


def reach(plane: torch.Tensor, shift: torch.Tensor) -> float:
    """max |plane − shift| over the finite pixels of plane [B, 1, Hp, Wp] and shifts [B, 1, 1, 1]."""
    low, high = finite_extremes(plane.detach())
    largest = torch.maximum(high.to(torch.float64) - shift.min(), shift.max() - low.to(torch.float64))
    return float(largest.clamp_min(0))


def variance_rounding_bound(reach: float, size: tuple[int, int], mask: torch.Tensor) -> float:
    """An upper bound on the rounding error of the window variances of an Hp × Wp plane, minus its shift, whose
    finite pixels lie within ``reach`` of the shift, computed from float64 sliding sums (summed-area tables,
    running sums, tap loops or conv2d) with weights mask [Bm, Tm, 1, h, w].

    Each sum of n terms errs by at most n·ε·Σ|terms|. The longest chain is a summed-area lookup or a running sum
    (Hp + Wp steps) or a tap loop (h·w terms); with M = reach and N = Hp·Wp, Σ|terms| is at most N·M² for squares
    and N·M for values, which the mean multiplies by at most M. The factor 8 covers the few sums a variance
    combines. Pixels that are not finite are left out: their windows are tested exactly anyway.
    """
    length = size[0] + size[1] + mask.shape[-2] * mask.shape[-1] + 4
    weight = float(mask.max()) if mask.numel() else 0.0
    scale = max(weight, weight * weight)
    return 8 * torch.finfo(torch.float64).eps * length * scale * size[0] * size[1] * 5 * reach * reach


def running_sums_rounding_bound(
    reach: float, size: tuple[int, int], template: tuple[int, int], deviations: bool
) -> float:
    """An upper bound on the rounding error of the fused window pass (:mod:`slidesim.kernels.numba_windows`):
    Σ (I − s)² over every unmasked h × w window of an Hp × Wp plane minus its shift whose finite pixels lie within
    ``reach`` of the shift, or with ``deviations`` that sum minus (Σ (I − s))² / (h·w).

    The pass keeps per-column sums of the window's rows, moved down one row at a time (a chain of at most
    h + Hp updates of size M² = reach², each rounded to ε times h·M² or less), and reads each window from a prefix
    sum of those columns along its row: of the prefix's rounding only the w additions inside the window stay in
    the difference (each within ε of a partial sum of at most Wp·h·M²), the rest cancel. So the window's error is
    at most ε·M²·w·((h + Hp)(h + 3) + (Wp + 1)·h), independent of the image's total, where a summed-area table
    errs by ε times the whole plane's Σ|terms| (:func:`variance_rounding_bound`): on a 512² plane with a 24×80
    window about 10⁴ times less. The sum of values errs alike with M in place of M², and its square divided by
    h·w adds 2M times that error and ε·h·w·M². A factor 2 covers second-order terms.
    """
    (Hp, Wp), (h, w) = size, template
    eps = torch.finfo(torch.float64).eps
    chain = h + Hp  # a column's first h rows, then at most Hp moves down (a stride of h or more starts afresh)
    squares = eps * reach * reach * w * (chain * (h + 3) + (Wp + 1) * h)
    if not deviations:
        return 2 * squares
    values = eps * reach * w * (chain * (h + 2) + (Wp + 1) * h)
    return 2 * (squares + 2 * reach * values + 2 * eps * h * w * reach * reach)
