"""Round-off of normalized scores, and the exact rescoring of the windows it could spoil (floor L3).

The error of an ncc or zncc score is the cross term's error times the template's and the window's factors, so
only windows whose variation is tiny against the image's (near-flat windows at another level than the image mean,
such as a black area with faint ringing) can be affected. Those windows are scored again exactly, one by one by
the reference's float64 formulas when few (read in place by a numba kernel for finite CPU images; gathered and
scored by :func:`slidesim.reference.score_windows` otherwise), or by a float64 FFT of the whole chunk's cross term
when so many that scoring them one by one would cost more (see :class:`RescoringCosts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels.area_sums import can_score_in_place
from ..kernels.spectral import fft_correlate
from ..kernels.taps import gather_windows
from ..metrics import MetricSpec
from ..reference import score_windows
from .bounds import finite_extremes, inverse_root
from .statistics import WindowStatistics
from .templates import centred_kernel

_NORM_CHUNK_BYTES = 2**20  # float64 rows per step of image_norm: a fresh large temporary costs page faults
SCORE_TOLERANCE = 5e-4  # ncc / zncc scores that round-off could move further are recomputed exactly
_RESCORE_BYTES = 64 * 2**20  # temporaries of the exact rescoring of gathered windows, at a time


@dataclass(frozen=True)
class RescoringCosts:
    """What the exact rescoring costs against a float64 transform of a chunk's cross term.

    Attributes:
        transform: Rescored taps per output that a second, float64 correlation (after the compute dtype's) is
            worth.
        upfront: Rescored taps per output that a float64 cross term in place of the compute dtype's is worth.
        tap_seconds: Seconds per rescored tap.
    """

    transform: float
    upfront: float
    tap_seconds: float


# Windows gathered into float64 tensors and scored by the reference's formula (autograd, NaN images, other devices):
# 20-50 ns a tap, about what a float64 transform costs per output (1080p screenshot, 16² template, 2 cores: a 16²
# zncc from 500 to 47 ms with 1 against 40, and every other call of the real-image suite within noise).
GATHERED = RescoringCosts(transform=1.0, upfront=1.0, tap_seconds=3e-8)
# Windows scored in place by the numba kernel: 1.7-3.3 ns a tap (a 1080p screenshot's 127770 windows of 16² in
# 56 ms, 610 of 38×98 in 7.5 ms). Measured on the real-image suite's ncc and zncc calls, 2 cores: a float64 cross
# term in place of the float32 one paid off from 1.0-1.5 rescored taps per output (screenshot zncc 64²: 1.12, float32
# and rescoring 25 against 36 ms; astronaut ncc 64²: 1.42, even; camera zncc 16²: 1.52, float64 3.5 against 4.0 ms),
# a second float64 transform after the numba engine's from 7-15 (astronaut ncc 24²: 14.7, rescoring 7.2 against
# 8.0 ms; zncc 24²: 12.1, the transform 7.2 against 9.6 ms; screenshot zncc 16²: 6.4, rescoring 42 against 57 ms).
IN_PLACE = RescoringCosts(transform=8.0, upfront=1.3, tap_seconds=2.5e-9)
IN_PLACE_METRICS = ("ssd", "ssd_normed", "ccorr", "ncc", "ccoeff", "zncc")  # those the numba kernel scores


def _largest_finite(values: torch.Tensor) -> float:
    """The largest value of a float tensor, NaN left out (0 when there is none), without a temporary."""
    if values.numel() == 0:
        return 0.0
    if values.device.type == "cpu":
        found = np.fmax.reduce(values.detach().reshape(-1).numpy())  # fmax skips NaN
    else:
        found = float(torch.nan_to_num(values, nan=0.0).max())
    return 0.0 if math.isnan(found) else max(0.0, float(found))


def _above(window_scale: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """window_scale [B, Tm, H', W'] > thresholds [Bk, t] (float64) -> bool [max(B, Bk), t, H', W'], in one pass in the
    scale's own dtype: each threshold is lowered by 1e-6 of itself before it is narrowed, so a window the float64
    product w · (tolerance / threshold) would flag is flagged (a few more at the boundary are scored exactly too)."""
    lowered = (thresholds * (1.0 - 1e-6)).to(window_scale.dtype)
    return window_scale > lowered[..., None, None]


def rescoring_costs(finite: bool, image: torch.Tensor) -> RescoringCosts:
    """The costs of rescoring windows of ``image`` (see :func:`can_score_in_place`)."""
    return IN_PLACE if can_score_in_place(finite, image) else GATHERED


class Rescorer:
    """Round-off estimates and exact rescoring for the templates of one correlation call.

    Args:
        stats: The call's window statistics (image, mask, centring).
        spec: The metric (ncc or zncc).
        bank: Templates [Bk, T, C, h, w].
    """

    def __init__(self, stats: WindowStatistics, spec: MetricSpec, bank: torch.Tensor) -> None:
        self.stats, self.spec = stats, spec
        self.bank = bank
        self.cross_dtype = stats.dtype  # the dtype the current chunk's cross term was computed in

    @property
    def bank(self) -> torch.Tensor:
        """Templates [Bk, T, C, h, w]; setting another bank (the next chunk of a stream) forgets its kernels."""
        return self._bank

    @bank.setter
    def bank(self, bank: torch.Tensor) -> None:
        self._bank = bank
        self._kernels: tuple[tuple[int, int], torch.Tensor] | None = None

    def kernels64(self, t0: int, t1: int) -> torch.Tensor:
        """The cross term's kernels of templates t0:t1 in float64 [Bk, t, C, h, w], detached. The last chunk's are
        kept: the cross term, its round-off estimate and the rescoring all ask for them (on small images these
        template-sized passes cost as much as the transforms)."""
        if self._kernels is not None and self._kernels[0] == (t0, t1):
            return self._kernels[1]
        bank64 = self.bank[:, t0:t1].detach().to(torch.float64)
        mask = self.stats.mask if self.stats.shared else self.stats.mask[:, t0:t1]
        m64 = mask.detach().to(torch.float64)
        kernels = centred_kernel(bank64, m64)[0] if self.spec.name == "zncc" else bank64 * m64 * m64
        self._kernels = ((t0, t1), kernels)
        return kernels

    def cross_error(self, t0: int, t1: int) -> torch.Tensor:
        """Round-off of the cross term of templates t0:t1, estimated -> [Bk, t1 − t0] float64.

        Engines that correlate tap by tap (direct, conv) err by about ε·√n·Σ|I||K| per window, bounded here by
        the image's reach; FFTs spread ε·‖I‖₂·‖K‖₂ over every output. The errors measured on photographs stay
        under 0.55 of these estimates.
        """
        eps = torch.finfo(self.cross_dtype).eps
        if self.stats.prims.global_cross_error:
            return self.fft_error(t0, t1, eps)
        kernel = self.kernels64(t0, t1)
        reach = self.stats.once(("image_reach",), lambda: self.image_reach(self.spec.name == "zncc"))
        taps = kernel.shape[-3] * kernel.shape[-2] * kernel.shape[-1]
        return eps * math.sqrt(taps) * reach * kernel.abs().sum(dim=(-3, -2, -1))

    def fft_error(self, t0: int, t1: int, eps: float) -> torch.Tensor:
        """ε·‖I‖₂·‖K‖₂ per template of t0:t1: the round-off an FFT correlation spreads over every output."""
        norm = self.stats.once(("image_norm",), lambda: self.image_norm(self.spec.name == "zncc"))
        return eps * norm * self.kernels64(t0, t1).pow(2).sum(dim=(-3, -2, -1)).sqrt()

    def image_norm(self, centred: bool) -> float:
        """Largest ‖I − shift‖₂ (or ‖I‖₂) over the images, in float64."""
        stats = self.stats
        image = stats.image.detach()
        B, C, H, W = image.shape
        total = torch.zeros(B, dtype=torch.float64, device=image.device)
        rows = max(1, _NORM_CHUNK_BYTES // max(1, B * W * 8))  # float64 pieces small enough to reuse freed memory
        zero = torch.zeros(B, 1, 1, 1, dtype=torch.float64, device=image.device)
        for c in range(C):
            energy = None
            if stats.finite:  # the fused pass sums every pixel; NaN and ±inf are left out below
                energy = stats.prims.plane_energy(image[:, c : c + 1], stats.shift[:, c : c + 1] if centred else zero)
            if energy is not None:  # one fused pass
                total += energy.to(total.device)
                continue
            shift = stats.shift[:, c : c + 1].detach().to(torch.float64) if centred else 0.0
            for r0 in range(0, H, rows):
                piece = image[:, c : c + 1, r0 : r0 + rows].to(torch.float64) - shift
                if not stats.finite:
                    piece = piece.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                total += piece.pow(2).sum(dim=(-3, -2, -1))
        return float(total.max().sqrt())

    def image_reach(self, centred: bool) -> float:
        """max |I − shift| (or |I|) over the images' finite pixels."""
        if centred:
            return max(self.stats.channel_reach(c) for c in range(self.stats.image.shape[1]))
        low, high = finite_extremes(self.stats.image.detach())
        return float(max(abs(float(low)), abs(float(high))))

    def unreliable(
        self,
        t0: int,
        t1: int,
        template_scale: torch.Tensor,
        window_scale: torch.Tensor,
        uncertain: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Windows whose normalized score round-off could move by more than :data:`SCORE_TOLERANCE` -> [B,
        t1 − t0 or 1, H', W'] bool, or None when there are none. ``uncertain`` adds the windows whose variance
        itself is within its rounding bound without being exactly flat."""
        per_template = self.cross_error(t0, t1).detach() * template_scale  # [Bk, t]
        # windows that hold NaN have a NaN factor and score NaN whatever happens: they must not hide the others
        widest = _largest_finite(window_scale)
        largest = float(per_template.max()) * widest if per_template.numel() else 0.0
        flagged = None
        if largest > SCORE_TOLERANCE:
            flagged = _above(window_scale, SCORE_TOLERANCE / per_template)
        if uncertain is not None:
            flagged = uncertain if flagged is None else flagged | uncertain
        return flagged if flagged is not None and bool(flagged.any()) else None

    def rescored(
        self,
        scores: torch.Tensor,
        t0: int,
        t1: int,
        template_moment: torch.Tensor,
        window_moment: torch.Tensor,
        uncertain: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Differentiable scores of templates t0:t1 with the windows that round-off could spoil scored exactly."""
        template_scale, _ = inverse_root(template_moment.detach()[..., 0, 0].clone(), None)
        window_scale, _ = inverse_root(window_moment.detach().clone(), None)
        flagged = self.unreliable(t0, t1, template_scale, window_scale, uncertain)
        if flagged is None:
            return scores
        index, exact = self.exact_scores(t0, flagged.expand(scores.shape), grad=True)
        return scores.index_put(tuple(index.unbind(dim=1)), exact.to(scores.dtype))

    def rescore(self, scores: torch.Tensor, t0: int, flagged: torch.Tensor, factors: tuple) -> None:
        """Score the flagged windows of templates t0.. exactly, in place.

        Few windows are gathered and scored one by one in float64. When so many are flagged that this would cost
        more than a transform (large templates with a tap-by-tap engine, whose round-off estimate grows with the
        template), the cross term of the whole chunk is recomputed by a float64 FFT instead and finished with the
        same factors; the windows that even its round-off (or their own variance's) could spoil are then gathered.
        """
        template_scale, window_scale, uncertain = factors
        B, t, H, W = scores.shape
        flagged = flagged.expand(B, t, H, W)
        if self.cross_dtype != torch.float64 and self.prefers_transform(int(flagged.sum()), B * t * H * W):
            cross = self._float64_cross(t0, t0 + t)
            better = (cross * template_scale[..., None, None] * window_scale.to(torch.float64)).clamp_(-1.0, 1.0)
            scores.copy_(torch.where(flagged, better.to(scores.dtype), scores))
            error = self.fft_error(t0, t0 + t, torch.finfo(torch.float64).eps)
            flagged = _above(window_scale, SCORE_TOLERANCE / (error * template_scale))
            if uncertain is not None:
                flagged = flagged | uncertain
            flagged = flagged.expand(B, t, H, W)
            if not bool(flagged.any()):
                return
        index, exact = self.exact_scores(t0, flagged, grad=False)
        scores[tuple(index.unbind(dim=1))] = exact.to(scores.dtype)

    def prefers_transform(self, flagged: int, outputs: int, upfront: bool = False) -> bool:
        """Whether scoring ``flagged`` windows one by one would cost more than a float64 transform of the cross
        term of a chunk with ``outputs`` scores: a second one after the compute dtype's, or (``upfront``) one in
        its place."""
        taps = self.bank.shape[-3] * self.bank.shape[-2] * self.bank.shape[-1]
        costs = rescoring_costs(self.stats.finite, self.stats.image)
        return flagged * taps > outputs * self.stats.image.shape[1] * (costs.upfront if upfront else costs.transform)

    def unreliable_count(self, t0: int, t1: int, template_scale: torch.Tensor, window_scale: torch.Tensor) -> int:
        """About how many windows of templates t0:t1 :meth:`unreliable` would flag for their cross term's
        round-off (the uncertain variances aside), at most one pass over the window factors per mask. A shared
        mask counts with the largest template error for every template: an upper bound."""
        per_template = (self.cross_error(t0, t1).detach() * template_scale).amax(dim=0)  # [t]
        if window_scale.numel() == 0:
            return 0
        masks = window_scale.shape[1]
        count = 0
        for j in range(masks):
            error = float(per_template.max() if masks == 1 else per_template[j])
            if error > 0:  # a NaN factor (a window holding NaN) never counts
                count += int((window_scale[:, j] > SCORE_TOLERANCE / error).sum())
        return count * (len(per_template) if masks == 1 else 1)

    def _float64_cross(self, t0: int, t1: int) -> torch.Tensor:
        """The cross term of templates t0:t1 by a float64 FFT -> [B, t1 − t0, H', W'] float64."""
        stats = self.stats
        if self.spec.name == "zncc" and stats.finite:  # centred and widened tile by tile as the transform reads it
            image, shift = stats.image.detach(), stats.shift.detach()
            return fft_correlate(image, self.kernels64(t0, t1), stats.prims.geom, _RESCORE_BYTES, shift=shift)
        if self.spec.name == "zncc":
            image = torch.cat([stats.centred64(c).detach() for c in range(stats.image.shape[1])], dim=1)
        else:
            image = stats.image.detach().to(torch.float64)
        if not stats.finite:
            # A transform spreads NaN and ±inf over every output. Windows that hold one are never recomputed (their
            # window factor is NaN or 0), so the pixels can take any finite value here: 0, the centred mean.
            image = image.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        return fft_correlate(image, self.kernels64(t0, t1), stats.prims.geom, _RESCORE_BYTES)

    def exact_scores(
        self, t0: int, flagged: torch.Tensor, grad: bool, metric: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [n, 4] of the flagged (b, t, y, x), their scores [n] by the reference's float64 formula of
        ``metric`` (default: the call's)).

        Without a gradient, finite CPU images are scored by the numba kernel straight from the image (about 1 ns
        a tap); otherwise the windows are gathered and scored by :func:`slidesim.reference.score_windows`."""
        stats = self.stats
        index = flagged.nonzero()
        metric = metric or self.spec.name
        if not grad and metric in IN_PLACE_METRICS and can_score_in_place(stats.finite, stats.image):
            from ..kernels.numba_dense import listed_scores

            return index, listed_scores(stats.image, self.bank, stats.mask, index, t0, stats.prims.geom, metric)
        C, h, w = self.bank.shape[-3:]
        per_window = C * h * w * 8 * 8  # the gathered window and the formula's temporaries, float64
        step = max(1, _RESCORE_BYTES // per_window)
        image = stats.image if grad else stats.image.detach()
        parts = []
        for start in range(0, len(index), step):
            b, tt, y, x = index[start : start + step].unbind(dim=1)
            windows = gather_windows(image, b, y, x, stats.prims.geom).to(torch.float64)
            bk = b if self.bank.shape[0] > 1 else torch.zeros_like(b)
            templates = self.bank[bk, t0 + tt].to(torch.float64)
            bm = b if stats.mask.shape[0] > 1 else torch.zeros_like(b)
            tm = t0 + tt if not stats.shared else torch.zeros_like(tt)
            masks = stats.mask[bm, tm].detach().to(torch.float64)
            exact = score_windows(
                metric,
                windows[:, :, None, None],
                (templates if grad else templates.detach())[:, :, None, None],
                masks[:, :, None, None],
                None,
                True,
            )
            parts.append(exact.reshape(-1))
        return index, torch.cat(parts)
