"""Window statistics of the correlation metrics (floor L3): energies Σ W I², variances Σ W (I − m)², exact
flatness and the 1/√ factors of ncc and zncc, in float64, shared by every template of a call.

Numerics: window sums are accumulated in float64 on an image centred by its per-channel mean of finite values,
so a float32 image 1e4 + U(0, 1) keeps its variance. Flat windows are found exactly: a window whose computed
variance exceeds a proven bound on its rounding error is not flat; the rest go through the engine's exact test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch

from .bounds import finite_extremes, inverse_root, reach, tiny, variance_rounding_bound
from .holes import finite_channel_mean
from .primitives import Primitives

Value = TypeVar("Value")
_NOT_YET = object()  # no mask given yet (None means "no mask")


class WindowStatistics:
    """The image side of one correlation call: the centred image, and the window statistics of each mask.

    Everything is computed on first use and kept for the call: a statistic that depends on the mask only is
    shared by every template when the mask is (keys of :meth:`per_mask`, dropped when a streamed bank's next
    chunk brings other weights: :meth:`use_mask`); derived image planes (centred,
    float64, squared) are kept across the chunks of a streamed bank only (``keep_planes``), so that an engine
    that caches work per image tensor (FFT spectra) recognizes them.

    Args:
        prims: The engine's sliding reductions.
        image: Padded images [B, C, Hp, Wp] in the compute dtype.
        mask: Weights [Bm, Tm, Cm, h, w], or None (every tap, weight 1).
        centre: Whether the cross term correlates the centred image (ccoeff, zncc).
        finite: Whether every image pixel is finite.
        keep_planes: Keep derived image planes for later chunks of a streamed bank.
    """

    def __init__(
        self,
        prims: Primitives,
        image: torch.Tensor,
        mask: torch.Tensor | None,
        centre: bool,
        finite: bool,
        keep_planes: bool = False,
    ) -> None:
        self.prims, self.image, self.finite = prims, image, finite
        h, w = prims.geom.template_size
        self.masked = mask is not None
        self._ones = torch.ones(1, 1, 1, h, w, dtype=image.dtype, device=image.device)
        # Centring keeps the float32 cross term and the float64 window sums free of cancellation.
        self.shift = finite_channel_mean(image) if centre else None
        self._values: dict[tuple, object] = {}
        self._planes: dict[tuple, torch.Tensor] | None = {} if keep_planes else None
        self._given: object = _NOT_YET
        self.use_mask(mask)

    def use_mask(self, mask: torch.Tensor | None) -> None:
        """Score the templates of another chunk of a streamed bank, with weights [Bm, Tm, Cm, h, w] (None: the
        call has no mask, as at construction). The image side stays; statistics of the mask's windows are dropped
        unless it is the very mask already in use (a mask shared by the whole bank)."""
        if mask is self._given:
            return
        self._given = mask
        self.mask = mask if mask is not None else self._ones
        self.binary = mask is None or bool(((mask == 0) | (mask == 1)).all())
        self.shared = self.mask.shape[1] == 1
        self._mask_values: dict[tuple, object] = {}

    def once(self, key: tuple, compute: Callable[[], Value]) -> Value:
        """``compute()`` the first time ``key`` is asked for in this call; the kept value afterwards."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]  # type: ignore[return-value]

    def per_mask(self, key: tuple, compute: Callable[[], Value]) -> Value:
        """A statistic of the mask's windows: computed once when every template shares the mask."""
        if not self.shared:
            return compute()
        if key not in self._mask_values:
            self._mask_values[key] = compute()
        return self._mask_values[key]  # type: ignore[return-value]

    def plane(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A derived image plane, kept only while a bank streams through."""
        if self._planes is None:
            return compute()
        if key not in self._planes:
            self._planes[key] = compute()
        return self._planes[key]

    def centred(self, c0: int, c1: int) -> torch.Tensor:
        """Channels c0:c1 of the image minus their mean of finite pixels."""
        return self.image[:, c0:c1] - self.shift[:, c0:c1]

    def centred64(self, c: int) -> torch.Tensor:
        """Channel c of the centred image in float64 [B, 1, Hp, Wp]."""
        return self.plane(("centred64", c), lambda: self.centred(c, c + 1).to(torch.float64))

    def channel_reach(self, c: int) -> float:
        """max |I − shift| over the finite pixels of channel c."""
        return self.once(("reach", c), lambda: reach(self.image[:, c : c + 1], self.shift[:, c : c + 1]))

    def zncc_factors(
        self, mask: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(1/√window variance, 0 for degenerate windows; their mask or None to derive it from the zeros; the
        windows whose variance is too close to zero to trust, or None)."""
        if not self.masked and self.image.shape[1] == 1 and not self.image.requires_grad:
            reach_ = self.channel_reach(0)
            tolerance = variance_rounding_bound(reach_, self.image.shape[-2:], mask.to(torch.float64))
            info = torch.finfo(dtype)
            # the factors must be normal numbers of dtype: 1/√tolerance and 1/√(largest variance) bound them
            largest = mask.shape[-2] * mask.shape[-1] * reach_ * reach_
            if tolerance > 0 and math.sqrt(tolerance) > 1 / info.max and math.sqrt(largest) < 1 / info.tiny:
                factors = self.prims.window_factors(self.image, self.shift, tolerance, dtype)
                if factors is not None:  # no window is within the rounding bound of zero variance
                    return factors, None, None
        variance, flat, uncertain = self.window_moments(mask, weights)
        return (*inverse_root(variance, flat, dtype), uncertain)

    def ncc_factors(
        self, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(1/√window energy, 0 for zero windows; the zero windows; the windows whose energy is too close to zero
        to trust, or None)."""
        energy = self.window_energy(weights)
        uncertain = self.uncertain_energies(energy, weights)
        return (*inverse_root(energy, None, dtype), uncertain)

    def uncertain_energies(self, energy: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """Windows whose energy Σ W I², taken from cumulative sums (summed-area tables, running sums), lies within
        those sums' rounding bound without the window being all zeros -> bool [B, Tm, H', W'], or None.

        Tap sums of non-negative terms are accurate relative to themselves and exactly zero only for zero windows;
        cumulative sums err by the image's scale instead, which only matters for faint windows in a bright image
        (with integer-valued images the sums are exact and such windows do not exist).
        """
        if self.masked or not self.prims.cumulative_window_sums:
            return None
        low, high = finite_extremes(self.image.detach())
        largest_pixel = max(abs(float(low)), abs(float(high)))
        w64 = weights.to(torch.float64)
        bound = self.image.shape[1] * variance_rounding_bound(largest_pixel, self.image.shape[-2:], w64)
        candidates = ~(energy.detach() > bound) & torch.isfinite(energy.detach())
        if not bool(candidates.any()):
            return None
        geom = self.prims.geom
        magnitude = self.image.detach().abs().amax(dim=1, keepdim=True)
        span = tuple(d * (k - 1) + 1 for d, k in zip(geom.dilation, geom.template_size, strict=True))
        largest = (
            torch.nn.functional.max_pool2d(magnitude.to(torch.float64), span, stride=geom.stride, dilation=1)
            if geom.dilation == (1, 1)
            else self.prims.window_sum(magnitude.to(torch.float64), None)
        )
        uncertain = candidates & (largest > 0)  # all-zero windows are exactly degenerate
        return uncertain if bool(uncertain.any()) else None

    def window_energy(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ W I² per window in float64 -> [B, Tm, H', W'], one channel at a time to bound memory."""
        w64 = weights.to(torch.float64)
        if not self.masked:
            zero = torch.zeros(self.image.shape[0], 1, 1, 1, dtype=torch.float64, device=self.image.device)
            fused = [
                self.prims.window_squares(self.image[:, c : c + 1], zero, False) for c in range(self.image.shape[1])
            ]
            if fused[0] is not None:
                return sum(fused[1:], start=fused[0])
        if w64.shape[2] == 1:  # one weight for all channels: add the channels' squares first
            squares = self.plane(("squares",), self._channel_squares)
            return self.prims.window_sum(squares, w64 if self.masked else None)
        energy = None
        for c in range(self.image.shape[1]):
            squares = self.plane(("squares", c), lambda c=c: self.image[:, c : c + 1].to(torch.float64) ** 2)
            part = self.prims.window_sum(squares, w64[:, :, c : c + 1])
            energy = part if energy is None else energy + part
        return energy

    def _channel_squares(self) -> torch.Tensor:
        """Σ_c I_c² in float64 -> [B, 1, Hp, Wp]."""
        squares = None
        for c in range(self.image.shape[1]):
            plane = self.image[:, c : c + 1].to(torch.float64)
            squares = plane * plane if squares is None else squares + plane * plane
        return squares

    def window_moments(
        self, mask: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Joint weighted variance Σ_c Σ W (I − m_c)² (float64), flatness of every window -> [B, Tm, H', W'], and
        the windows that are not flat but whose variance is within its rounding bound (or None)."""
        m64, w64 = mask.to(torch.float64), weights.to(torch.float64)
        variance, tolerance = None, 0.0
        for c in range(self.image.shape[1]):
            cm = min(c, m64.shape[2] - 1)
            m_c, w_c = m64[:, :, cm : cm + 1], w64[:, :, cm : cm + 1]
            tolerance += variance_rounding_bound(self.channel_reach(c), self.image.shape[-2:], m_c)
            if not self.masked:  # one fused pass when the engine has it
                var_c = self.prims.window_squares(self.image[:, c : c + 1], self.shift[:, c : c + 1], True)
                if var_c is not None:
                    variance = var_c if variance is None else variance.add_(var_c)
                    continue
            plane = self.centred64(c)
            box = None if not self.masked else m_c  # unmasked windows: plain box sums
            # the exact flat test decides degenerate windows, so masked sums need not be exactly zero
            first = self.prims.window_sum(plane, box, exact_zeros=False)
            mean = first / m_c.sum(dim=(-1, -2, -3))[..., None, None].clamp_min(tiny())
            squares = self.plane(("centred64²", c), lambda plane=plane: plane * plane)
            second = self.prims.window_sum(squares, None if not self.masked else w_c, exact_zeros=False)
            if self.binary:
                var_c = second - mean * first
            else:
                weighted = self.prims.window_sum(plane, w_c, exact_zeros=False)
                var_c = second - 2 * mean * weighted + mean * mean * w_c.sum(dim=(-1, -2, -3))[..., None, None]
            variance = var_c if variance is None else variance + var_c
        flat, uncertain = self._flat_windows(variance.detach(), tolerance, m64)
        return (variance.clamp_min(0) if variance.requires_grad else variance.clamp_min_(0)), flat, uncertain

    def _flat_windows(
        self, variance: torch.Tensor, tolerance: float, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Exact flatness of every window -> [B, Tm, H', W'] bool, the windows within the rounding bound that are
        not flat, or None).

        A flat window has zero variance, so its computed variance is within the rounding bound; only such windows
        (usually none, or the rows of a uniform background) go through the engine's exact test.
        """
        # NaN windows are tested too. +inf never needs it: Σ I² overflows only if (Σ I)² / n does, giving NaN.
        candidates = ~(variance > tolerance)
        if not bool(candidates.any()):
            return candidates, None
        rows = candidates.any(dim=-1).any(dim=0).any(dim=0).nonzero()
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        flat = candidates.clone()
        for c in range(self.image.shape[1]):
            cm = min(c, mask.shape[2] - 1)
            support = mask[:, :, cm : cm + 1] > 0 if self.masked else None
            flat[:, :, r0:r1] &= self.prims.window_flat(self.image[:, c : c + 1], support, (r0, r1))
        uncertain = candidates & ~flat & torch.isfinite(variance)  # NaN windows stay NaN without rescoring
        return flat, (uncertain if bool(uncertain.any()) else None)
