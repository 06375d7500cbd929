"""Window statistics of the correlation metrics (floor L3): energies Σ W I², variances Σ W (I − m)², exact
flatness and the 1/√ factors of ncc and zncc, in float64, shared by every template of a call.

Numerics: window sums are accumulated in float64 on an image centred by its per-channel mean of finite values
(of the image, not of its padding), so a float32 image 1e4 + U(0, 1) keeps its variance. Constant padding that
lies farther from that mean than any pixel (bright data beside zero padding) is taken out of the sliding sums and
added back from each window's weight on it: its squares would otherwise swamp the round-off of every window that
a cumulative sum or a transform carries them to. Flat windows are found exactly: a window whose computed variance
exceeds a proven bound on its rounding error is not flat; the rest go through the engine's exact test.

Integer images (8- and 16-bit input) are centred by an integer, so every unmasked window sum is a sum of integers,
exact in float64 while the plane's total stays below 2^52 (:meth:`WindowStatistics.exact_sums`). A window that is
not flat then has Σ (I − m)² ≥ (n − 1)/n ≥ 1/2, so flatness is read off the sums, with no exact test and no window
left uncertain: screenshots, mostly flat, pay nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F

from .._geometry import Border
from ..kernels.area_sums import can_score_in_place
from .bounds import finite_extremes, inverse_root, reach, running_sums_rounding_bound, tiny, variance_rounding_bound
from .holes import finite_channel_mean
from .primitives import Primitives

# A window's variance or energy from the fused pass is trusted when its rounding bound (a tight one: see
# running_sums_rounding_bound) is at most this fraction of it; its score then moves by at most half that, within
# the rescoring's score tolerance. Closer ones go through the exact tests, like those within a summed-area table's
# bound, which is loose enough by itself.
TRUSTED_FRACTION = 5e-4

Value = TypeVar("Value")
_NOT_YET = object()  # no mask given yet (None means "no mask")
_EXACT_TOTAL = 2.0**52  # largest Σ over a plane of squared integers that float64 sums keep exact
_EXACT_WINDOW = 2.0**47  # largest C · n · reach² for which a window's Σ (I − m)² errs by less than 1/16
_FINGERPRINT_TAPS = 251  # taps of a per-template mask that key it (see _fingerprints)
_KEPT_FOOTPRINTS = 4  # per-template masks whose window statistics are kept for equal masks that follow
# Rescored taps per output that the masked exact flat test (float64 transforms with exact zeros of neighbour changes
# along rows and columns) is worth: on 2 cores it took 55 ns an output (2 turned 64² templates on a 1024² float
# photograph: 95 ms), the listed windows' kernel 0.3 ns a tap (15 000 windows of 8 281 taps in 40 ms).
_LISTED_FLAT_TAPS = 64
INTEGER_FLATNESS = 0.25  # exact integer sums: a window is flat where Σ (I − m)² is below this (else ≥ 1/2)


def _same_footprint(mask: torch.Tensor, weights: torch.Tensor, i: int, j: int) -> bool:
    """Whether templates i and j of per-template masks and weights [Bm, Tm, Cm, h, w] have equal ones."""
    return torch.equal(mask[:, i], mask[:, j]) and torch.equal(weights[:, i], weights[:, j])


def _joined(found: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-template triples (values [B, 1, H', W'], a bool map, a bool map or None) joined along the template
    axis; the last is None when it is None for every template."""
    values = torch.cat([f[0] for f in found], dim=1)
    flags = torch.cat([f[1] for f in found], dim=1)
    if all(f[2] is None for f in found):
        return values, flags, None
    return values, flags, torch.cat([f[2] if f[2] is not None else torch.zeros_like(f[1]) for f in found], dim=1)


def _fingerprints(mask: torch.Tensor, weights: torch.Tensor) -> list[tuple[float, ...]]:
    """A key per template of per-template masks and weights [Bm, Tm, Cm, h, w]: their values at a few hundred
    spread taps. Equal footprints have equal keys, so only templates with equal keys need comparing in full (a
    gather of a few taps, where sums over the planes would allocate and page in a copy of the bank's masks)."""
    per_template = [planes.transpose(0, 1).reshape(planes.shape[1], -1) for planes in (mask, weights)]  # views
    size = per_template[0].shape[-1]
    taps = torch.linspace(0, size - 1, min(size, _FINGERPRINT_TAPS), device=mask.device).round().long()
    keys = torch.cat([planes.index_select(-1, taps) for planes in per_template], dim=-1)  # [Tm, 2 · taps]
    return [tuple(row) for row in keys.tolist()]


class WindowStatistics:
    """The image side of one correlation call: the centred image, and the window statistics of each mask.

    Everything is computed on first use and kept for the call: a statistic that depends on the mask only is
    shared by every template when the mask is (keys of :meth:`per_mask`, dropped when a streamed bank's next
    chunk brings other weights: :meth:`use_mask`); derived image planes (centred,
    float64, squared) are kept across the chunks of a streamed bank only (``keep_planes``), so that an engine
    that caches work per image tensor (FFT spectra) recognizes them.

    Args:
        prims: The engine's sliding reductions.
        image: Padded images [B, C, Hp, Wp] in the compute dtype, or 8- and 16-bit integer images as the call
            stores them (narrow, for engines whose reductions widen as they read: every plane derived here is in
            the compute dtype or float64, exactly as from the converted images).
        mask: Weights [Bm, Tm, Cm, h, w], or None (every tap, weight 1).
        centre: Whether the cross term correlates the centred image (ccoeff, zncc).
        finite: Whether every image pixel is finite.
        edge: Where the images lie in their padded planes (default: no padding).
        keep_planes: Keep derived image planes for later chunks of a streamed bank.
        integral: Whether every pixel of the padded images is an integer of at most 16 bits.
        dtype: The compute dtype (default: the image's, which must then be a float dtype).
    """

    def __init__(
        self,
        prims: Primitives,
        image: torch.Tensor,
        mask: torch.Tensor | None,
        centre: bool,
        finite: bool,
        edge: Border | None = None,
        keep_planes: bool = False,
        integral: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.prims, self.image, self.finite, self.integral = prims, image, finite, integral
        self.dtype = image.dtype if dtype is None else dtype
        self.edge = edge if edge is not None else Border()
        h, w = prims.geom.template_size
        self.masked = mask is not None
        self._ones = torch.ones(1, 1, 1, h, w, dtype=self.dtype, device=image.device)
        # Centring keeps the float32 cross term and the float64 window sums free of cancellation; integer images
        # are centred by an integer, so that the centred pixels and every sum of them stay integers.
        self.shift = finite_channel_mean(self.edge.inner(image), self.dtype) if centre else None
        if self.shift is not None and integral:
            self.shift = self.shift.round()
        self.energies_fused = False  # whether window_energy ran the fused pass (its rounding bound is its own)
        self._values: dict[tuple, object] = {}
        self._planes: dict[tuple, torch.Tensor] | None = {} if keep_planes else None
        self._given: object = _NOT_YET
        # (key, mask, weights, (moments, values derived from them)) of the last few per-template masks
        self._footprints: list[tuple] = []
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

    def centred(self, c0: int, c1: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Channels c0:c1 of the image minus their shift, in ``dtype`` (default: the compute dtype)."""
        if self.image.dtype == self.dtype and (dtype is None or dtype == self.dtype):
            return self.image[:, c0:c1] - self.shift[:, c0:c1]
        dtype = self.dtype if dtype is None else dtype  # narrow images: widened, then centred in place
        return self.image[:, c0:c1].to(dtype).sub_(self.shift[:, c0:c1].to(dtype))

    def exact_sums(self) -> bool:
        """Whether every unmasked window sum of the (centred) image and of its squares is exact in float64, and
        each window's Σ (I − m)² within 1/16 of the truth: integer pixels, no mask, and totals small enough."""
        return self.integral and not self.masked and self._small_sums()

    def _small_sums(self) -> bool:
        """Whether the image's values are small enough for its window sums and Σ (I − m)² to be exact (see
        :meth:`exact_sums`), whatever the mask."""

        def small_enough() -> bool:
            Hp, Wp = self.image.shape[-2:]
            h, w = self.prims.geom.template_size
            C = self.image.shape[1]
            for c in range(C):
                if self.shift is not None:
                    largest = self.channel_reach(c)
                else:
                    low, high = finite_extremes(self.image[:, c : c + 1].detach())
                    largest = max(abs(float(low)), abs(float(high)))
                if Hp * Wp * largest * largest > _EXACT_TOTAL or C * h * w * largest * largest > _EXACT_WINDOW:
                    return False
            return True

        return self.once(("exact sums",), small_enough)

    def centred64(self, c: int) -> torch.Tensor:
        """Channel c of the centred image in float64 [B, 1, Hp, Wp] (centred in float64, so exactly I − s)."""
        return self.centred_plane(c, c + 1, torch.float64)

    def centred_plane(self, c0: int, c1: int, dtype: torch.dtype) -> torch.Tensor:
        """Channels c0:c1 of the centred image in ``dtype`` [B, c1 − c0, Hp, Wp], kept while a bank streams
        through (one plane per channels and dtype, whoever asks for it)."""
        return self.plane(("centred", c0, c1, dtype), lambda: self.centred(c0, c1, dtype))

    def channel_reach(self, c: int) -> float:
        """max |I − shift| over the finite pixels of channel c, padding included."""
        return self.once(("reach", c), lambda: reach(self.image[:, c : c + 1], self.shift[:, c : c + 1]))

    def inner_reach(self, c: int) -> float:
        """max |I − shift| over the finite pixels of channel c inside the image."""
        return self.once(
            ("inner reach", c), lambda: reach(self.edge.inner(self.image[:, c : c + 1]), self.shift[:, c : c + 1])
        )

    def padding_offset(self, c: int) -> torch.Tensor | None:
        """The constant padding of channel c minus its shift, [B, 1, 1, 1] float64, where it lies farther from the
        shift than every pixel of the image; otherwise None (the padding is then no larger than the pixels)."""
        if self.edge.value is None or not self.edge.padded or self.shift is None:
            return None

        def offset() -> torch.Tensor | None:
            # the value as the padded plane holds it (rounded to the compute dtype)
            value = torch.tensor(self.edge.value, dtype=self.dtype, device=self.image.device)
            offset = value.to(torch.float64) - self.shift[:, c : c + 1].to(torch.float64)
            return offset if bool((offset.abs() > self.inner_reach(c)).any()) else None

        return self.once(("padding offset", c), offset)

    def padding_weight(self, weights: torch.Tensor | None) -> torch.Tensor:
        """Σ weights over the taps of each window that read the padding -> [Bm, Tm, H', W'] float64 (exactly 0
        for windows inside the image), for weights [Bm, Tm, 1, h, w] (None: 1 per tap)."""
        h, w = self.prims.geom.template_size
        if weights is None:
            weights = torch.ones(1, 1, 1, h, w, dtype=torch.float64, device=self.image.device)
        table = F.pad(weights[:, :, 0].to(torch.float64).cumsum(-2).cumsum(-1), (1, 0, 1, 0))  # [Bm, Tm, h+1, w+1]
        r0, r1, c0, c1 = (
            index.to(self.image.device)
            for index in self.edge.taps_inside(self.prims.geom, self.edge.inner(self.image).shape[-2:])
        )

        def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            return table[..., rows[:, None], cols[None, :]]

        inside = at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)
        whole = ((r0 == 0) & (r1 == h))[:, None] & ((c0 == 0) & (c1 == w))[None, :]
        return (table[..., -1:, -1:] - inside).masked_fill_(whole, 0.0)

    def image_part64(self, c: int) -> torch.Tensor:
        """Channel c of the centred image in float64 with 0 in the padding [B, 1, Hp, Wp]."""
        return self.plane(("image part64", c), lambda: self.edge.zero_padding(self.centred64(c)))

    def zncc_factors(
        self, mask: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(1/√window variance, 0 for degenerate windows; their mask or None to derive it from the zeros; the
        windows whose variance is too close to zero to trust, or None)."""
        fused = not self.masked and self.image.shape[1] == 1 and not self.image.requires_grad
        if self.image.shape[1] == 1 and self._exact_rectangles(mask):  # scaled templates on their canvas
            factors = self.prims.rectangle_squares(self.image, self.shift, mask, INTEGER_FLATNESS, dtype)
            if factors is not None:
                return factors, None, None
        if fused and self.exact_sums():  # flat windows are those below INTEGER_FLATNESS: their factor is 0
            factors = self.prims.window_factors(self.image, self.shift, INTEGER_FLATNESS, dtype, exact=True)
            if factors is not None:
                return factors, None, None
        if fused and self.padding_offset(0) is None:
            reach_ = self.channel_reach(0)
            tolerance = self._running_sums_bound(reach_, deviations=True) / TRUSTED_FRACTION  # only the fused pass
            info = torch.finfo(dtype)
            # the factors must be normal numbers of dtype: 1/√tolerance and 1/√(largest variance) bound them
            largest = mask.shape[-2] * mask.shape[-1] * reach_ * reach_
            if tolerance > 0 and math.sqrt(tolerance) > 1 / info.max and math.sqrt(largest) < 1 / info.tiny:
                factors = self.prims.window_factors(self.image, self.shift, tolerance, dtype)
                if factors is not None:  # no window is within the rounding bound of zero variance
                    return factors, None, None
        return self.inverse_root_variance(mask, weights, dtype)

    def ncc_factors(
        self, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(1/√window energy, 0 for zero windows; the zero windows; the windows whose energy is too close to zero
        to trust, or None).

        Integer planes whose sums are exact take the factors from one fused pass (an energy below 1/2 is 0):
        no float64 energy plane, and no pass over it for the factors."""
        if not self.masked and self.image.shape[1] == 1 and not self.image.requires_grad and self.exact_sums():
            zero = torch.zeros(self.image.shape[0], 1, 1, 1, dtype=torch.float64, device=self.image.device)
            factors = self.prims.window_factors(self.image, zero, 0.5, dtype, exact=True, deviations=False)
            if factors is not None:
                return factors, factors == 0, None
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
        if self.masked or not self.prims.cumulative_window_sums or self.exact_sums():
            return None
        low, high = finite_extremes(self.image.detach())
        largest_pixel = max(abs(float(low)), abs(float(high)))
        if self.energies_fused:  # running sums: an error bound of the window's size, not the plane's total
            one = self._running_sums_bound(largest_pixel, deviations=False) / TRUSTED_FRACTION
        else:
            one = variance_rounding_bound(largest_pixel, self.image.shape[-2:], weights.to(torch.float64))
        bound = self.image.shape[1] * one
        candidates = ~(energy.detach() > bound) & torch.isfinite(energy.detach())
        if not bool(candidates.any()):
            return None
        # a window of zeros has no nonzero pixel: count them (0/1 sums are exact integers); a max-pool over the
        # window ran h·w comparisons per output (0.45 s for a 24×80 template on 512², float64)
        nonzero = (self.image.detach() != 0).any(dim=1, keepdim=True).to(torch.float64)
        largest = self.prims.window_sum(nonzero, None, exact_zeros=False)  # counts of 0/1: box sums are exact
        uncertain = candidates & (largest > 0.5)  # all-zero windows are exactly degenerate
        return uncertain if bool(uncertain.any()) else None

    def centred_energy(self, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(Σ_c Σ W (I_c − s_c)² per window in float64 -> [B, Tm, H', W'], a bound on its rounding error: 0 where
        the sums are exact) for weights [Bm, Tm, Cm, h, w] float64.

        Masked sums come from the engine's exact-zero window sums (conv2d or a float64 FFT) with their own rounding
        bound; unmasked ones from the fused pass or from summed-area tables.
        """
        energy, error = None, 0.0
        binary = bool(((weights == 0) | (weights == 1)).all())
        exact = self.integral and binary if self.masked else self.exact_sums()
        for c in range(self.image.shape[1]):
            cm = min(c, weights.shape[2] - 1)
            w_c = weights[:, :, cm : cm + 1]
            part = None
            if not self.masked:
                part = self.prims.window_squares(self.image[:, c : c + 1], self.shift[:, c : c + 1], False)
            fused = part is not None
            bound = None
            if part is None:
                squares = self.plane(("squares64", True, c), lambda c=c: self.centred64(c) ** 2)
                if self.masked:  # the sums' own bound: the transform's or the taps', not a summed-area table's
                    part, bound = self.prims.window_sum_bounded(squares, w_c)
                else:
                    part = self.prims.window_sum(squares, None, exact_zeros=True)
            energy = part if energy is None else energy + part
            if exact:
                continue
            reach_ = self.channel_reach(c)
            if fused:  # running sums: an error bound of the window's size, not the plane's total
                error += self._running_sums_bound(reach_, deviations=False)
            elif bound is not None:  # and the addition of the channel's energy to the others'
                spread = float(w_c.abs().sum(dim=(-3, -2, -1)).amax())
                error += bound + torch.finfo(torch.float64).eps * reach_ * reach_ * spread
            else:
                error += variance_rounding_bound(reach_, self.image.shape[-2:], w_c)
        return energy, error

    def _running_sums_bound(self, reach_: float, deviations: bool) -> float:
        """Rounding bound of the fused window pass over pixels within ``reach_`` of the shift (see
        :func:`running_sums_rounding_bound`)."""
        return running_sums_rounding_bound(reach_, self.image.shape[-2:], self.prims.geom.template_size, deviations)

    def window_energy(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ W I² per window in float64 -> [B, Tm, H', W'], one channel at a time to bound memory."""
        w64 = weights.to(torch.float64)
        if not self.masked:
            zero = torch.zeros(self.image.shape[0], 1, 1, 1, dtype=torch.float64, device=self.image.device)
            fused = [
                self.prims.window_squares(self.image[:, c : c + 1], zero, False) for c in range(self.image.shape[1])
            ]
            if fused[0] is not None:
                self.energies_fused = True
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
        the windows that are not flat but whose variance is within its rounding bound (or None).

        Per-template masks equal to one already seen (in this chunk, or among the last few of a streamed bank)
        share its statistics: a square template turned by θ, θ + 90°, θ + 180° and θ + 270° has one footprint,
        a rectangle by θ and θ + 180°, and a bank streamed in that order pays for each footprint once."""
        if not self._shares_footprints(mask):
            return self._window_moments(mask, weights)
        return _joined([moments for moments, _ in self._footprint_moments(mask, weights)])

    def inverse_root_variance(
        self, mask: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(1/√window variance in ``dtype``, 0 for degenerate windows; the degenerate windows; the windows whose
        variance is too close to zero to trust, or None) -> [B, Tm, H', W'] each: :func:`inverse_root` of
        :meth:`window_moments`, computed once per footprint as the moments are (a rotation search's turned
        templates share a footprint four at a time)."""
        if not self._shares_footprints(mask):
            variance, flat, uncertain = self._window_moments(mask, weights)
            return (*inverse_root(variance, flat, dtype), uncertain)
        found = []
        for (variance, flat, uncertain), derived in self._footprint_moments(mask, weights):
            if dtype not in derived:  # inverse_root overwrites its input: the kept variance stays as it is
                derived[dtype] = (*inverse_root(variance.clone(), flat, dtype), uncertain)
            found.append(derived[dtype])
        return _joined(found)

    def _shares_footprints(self, mask: torch.Tensor) -> bool:
        """Whether equal per-template masks share their statistics: masked, and no gradient to carry through."""
        return self.masked and not (torch.is_grad_enabled() and (mask.requires_grad or self.image.requires_grad))

    def _footprint_moments(self, mask: torch.Tensor, weights: torch.Tensor) -> list[tuple[tuple, dict]]:
        """Per template of masks [Bm, Tm, Cm, h, w]: its footprint's :meth:`_window_moments` (each [B, 1, H', W']
        or None) and a dict of values derived from them, both shared by every template with that footprint."""
        keys = _fingerprints(mask, weights)
        found: list[tuple | None] = [self._seen_footprint(mask[:, j], weights[:, j], keys[j]) for j in range(len(keys))]
        distinct: list[int] = []  # the first of each footprint not seen before
        same_as: dict[int, int] = {}  # a later template of this chunk -> the first with its footprint
        for j in (j for j, known in enumerate(found) if known is None):
            first = next(
                (d for d in distinct if keys[d] == keys[j] and _same_footprint(mask, weights, d, j)),
                None,
            )
            if first is None:
                distinct.append(j)
            else:
                same_as[j] = first
        if distinct:
            index = torch.tensor(distinct, device=mask.device)
            fresh = self._window_moments(mask.index_select(1, index), weights.index_select(1, index))
            for n, j in enumerate(distinct):
                found[j] = (tuple(None if v is None else v[:, n : n + 1] for v in fresh), {})
                kept = (keys[j], mask[:, j], weights[:, j], found[j])
                self._footprints = [kept, *self._footprints][:_KEPT_FOOTPRINTS]
        for j, first in same_as.items():
            found[j] = found[first]
        return found  # type: ignore[return-value]

    def _seen_footprint(self, mask: torch.Tensor, weights: torch.Tensor, key: tuple[float, ...]) -> tuple | None:
        """(The statistics, the values derived from them) of a kept mask equal to ``mask`` [Bm, Cm, h, w] with
        equal ``weights`` (whose :func:`_fingerprints` key is ``key``), or None."""
        for kept_key, kept_mask, kept_weights, kept in self._footprints:
            if kept_key == key and torch.equal(kept_mask, mask) and torch.equal(kept_weights, weights):
                return kept
        return None

    def _window_moments(
        self, mask: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`window_moments` of every mask, each computed."""
        m64, w64 = mask.to(torch.float64), weights.to(torch.float64)
        variance, tolerance = None, 0.0
        # Integer pixels under 0/1 weights: every masked sum is an exact integer (exact-zero window sums of integers
        # are exact), so n·Σ I² − (Σ I)², a sum of squared pairwise differences, is 0 exactly for flat windows.
        whole = self.masked and self.integral and self.binary
        rectangles = self._rectangle_moments(mask)
        if rectangles is not None:
            # exact integer running sums over each rectangle: flat windows have Σ (I − m)² = 0, others ≥ 1/2
            return rectangles, rectangles <= INTEGER_FLATNESS, None
        spread = None  # Σ_c n·Σ I_c² − (Σ I_c)² per window, exact, where ``whole``
        for c in range(self.image.shape[1]):
            cm = min(c, m64.shape[2] - 1)
            m_c, w_c = m64[:, :, cm : cm + 1], w64[:, :, cm : cm + 1]
            tolerance += variance_rounding_bound(self.inner_reach(c), self.image.shape[-2:], m_c)
            offset = self.padding_offset(c)
            whole = whole and offset is None
            if not self.masked and offset is None:  # one fused pass when the engine has it
                var_c = self.prims.window_squares(self.image[:, c : c + 1], self.shift[:, c : c + 1], True)
                if var_c is not None:
                    variance = var_c if variance is None else variance.add_(var_c)
                    continue
            plane = self.centred64(c) if offset is None else self.image_part64(c)
            box = None if not self.masked else m_c  # unmasked windows: plain box sums
            # the exact flat test decides degenerate windows, so masked sums need not be exactly zero, unless they
            # decide flatness themselves
            first = self.prims.window_sum(plane, box, exact_zeros=whole)
            squares = self.plane(("squares64", offset is None, c), lambda plane=plane: plane * plane)
            second = self.prims.window_sum(squares, None if not self.masked else w_c, exact_zeros=whole)
            if whole:  # exact while n·Σ I² < 2^53: (Σ I)² is at most that
                n = m_c.sum(dim=(-1, -2, -3))[..., None, None]
                whole = float(second.amax()) * float(n.amax()) < 2.0**53
            if whole:
                # n·Σ I² − (Σ I)², in place where no gradient is carried (second is not read again on this path):
                # full-size passes are most of the statistics' cost when the sums come from summed-area tables
                grad = second.requires_grad or first.requires_grad
                part = n * second - first * first if grad else second.mul_(n).addcmul_(first, first, value=-1.0)
                spread = part if spread is None else spread + part
            weighted = None if self.binary else self.prims.window_sum(plane, w_c, exact_zeros=False)
            if offset is not None:  # the padding's share of each window, from its weight there
                on_box = self.padding_weight(box)
                on_weights = on_box if self.binary else self.padding_weight(w_c)
                first = first + offset * on_box
                second = second + offset * offset * on_weights
                if weighted is not None:
                    weighted = weighted + offset * on_weights
                far = variance_rounding_bound(float(offset.abs().max()), self.image.shape[-2:], m_c)
                tolerance = tolerance + torch.where(on_box > 0, far, 0.0)
            if whole:
                var_c = part / n.clamp_min(1)  # rounded once, from the exact spread
            else:
                mean = first / m_c.sum(dim=(-1, -2, -3))[..., None, None].clamp_min(tiny())
                if self.binary:
                    var_c = second - mean * first
                else:
                    var_c = second - 2 * mean * weighted + mean * mean * w_c.sum(dim=(-1, -2, -3))[..., None, None]
            variance = var_c if variance is None else variance + var_c
        if whole and spread is not None:
            flat, uncertain = spread.detach() == 0, None
        else:
            flat, uncertain = self._flat_windows(variance.detach(), tolerance, m64)
        return (variance.clamp_min(0) if variance.requires_grad else variance.clamp_min_(0)), flat, uncertain

    def _exact_rectangles(self, mask: torch.Tensor) -> bool:
        """Whether windows under 0/1 masks [Bm, Tm, Cm, h, w] may take the engine's fused pass over rectangles
        with exact sums: an integer image, centred, unpadded and small enough, no gradient (the rectangles
        themselves are the engine's to find)."""
        grad = mask.requires_grad or self.image.requires_grad
        if not (self.masked and self.binary and self.integral) or self.shift is None or grad:
            return False
        unpadded = all(self.padding_offset(c) is None for c in range(self.image.shape[1]))
        return unpadded and self._small_sums()

    def _rescoring_decides(self, candidates: torch.Tensor, mask: torch.Tensor) -> bool:
        """Whether the windows whose masked variance lies within its rounding bound (``candidates``, bool [B, Tm,
        H', W'] under masks [Bm, Tm, Cm, h, w]) are better all left to the exact rescoring, which scores flat ones
        too, than tested for exact flatness first: masked windows of a finite image that the numba kernels score in
        place, no gradient, and few enough taps to score against the flat test's two float64 transforms.

        An enlarged float photograph (interpolation leaves its dark areas near-flat, not flat) has thousands of
        such windows under a turned template, none of them flat."""
        grad = torch.is_grad_enabled() and (mask.requires_grad or self.image.requires_grad)
        if not self.masked or grad or not can_score_in_place(self.finite, self.image):
            return False
        taps = self.image.shape[1] * int((mask > 0).sum(dim=(-2, -1)).amax())  # the kernel skips weightless columns
        return int(candidates.sum()) * taps <= _LISTED_FLAT_TAPS * candidates.numel()

    def _rectangle_moments(self, mask: torch.Tensor) -> torch.Tensor | None:
        """Σ_c Σ (I − m_c)² over every window of masks [1, Tm, Cm, h, w] that are 1 on a rectangle (scaled
        templates on their canvas) of an unpadded integer image small enough for exact sums, from the engine's
        fused pass over each rectangle -> [B, Tm, H', W'] float64; None where any of that does not hold."""
        if not self._exact_rectangles(mask):
            return None
        variance = None
        for c in range(self.image.shape[1]):
            cm = min(c, mask.shape[2] - 1)
            part = self.prims.rectangle_squares(
                self.image[:, c : c + 1], self.shift[:, c : c + 1], mask[:, :, cm : cm + 1]
            )
            if part is None:
                return None
            variance = part if variance is None else variance.add_(part)
        return variance

    def _flat_windows(
        self, variance: torch.Tensor, tolerance: float | torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Exact flatness of every window -> [B, Tm, H', W'] bool, the windows within the rounding bound that are
        not flat, or None).

        A flat window has zero variance, so its computed variance is within the rounding bound; only such windows
        (usually none, or the rows of a uniform background) go through the engine's exact test.
        """
        if self.exact_sums():
            return ~(variance > INTEGER_FLATNESS), None
        # NaN windows are tested too. +inf never needs it: Σ I² overflows only if (Σ I)² / n does, giving NaN.
        candidates = ~(variance > tolerance)
        if not bool(candidates.any()):
            return candidates, None
        if self._rescoring_decides(candidates, mask):
            # the exact rescoring scores flat windows too (0, by the flatness rule): no separate test
            return torch.zeros_like(candidates), candidates
        rows = candidates.any(dim=-1).any(dim=0).any(dim=0).nonzero()
        r0, r1 = int(rows[0]), int(rows[-1]) + 1
        flat = candidates.clone()
        for c in range(self.image.shape[1]):
            cm = min(c, mask.shape[2] - 1)
            support = mask[:, :, cm : cm + 1] > 0 if self.masked else None
            flat[:, :, r0:r1] &= self.prims.window_flat(self.image[:, c : c + 1], support, (r0, r1))
        uncertain = candidates & ~flat & torch.isfinite(variance)  # NaN windows stay NaN without rescoring
        return flat, (uncertain if bool(uncertain.any()) else None)
