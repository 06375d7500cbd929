"""Scores from sliding statistics: the part every engine shares.

An engine supplies three sliding reductions (see :class:`Primitives`); this module turns them into every metric:
it pads the image, centres it where cancellation would otherwise hurt, computes the per-template constants in
float64, combines channels, applies the finish of :mod:`slidesim.metrics` and bounds temporaries by processing the
bank in chunks. Keeping this in one place means every engine has the same numerics and degenerate-window policy.

Numerics:
    * Window sums (means, energies, variances) are accumulated in float64 on an image centred by its per-channel
      mean of finite values, so a float32 image 1e4 + U(0, 1) keeps its variance.
    * The cross term of ccoeff / zncc correlates the centred image with the mean-removed template in the compute
      dtype (float32 or float64); ccorr / ncc correlate the raw image.
    * ssd and ssd_normed use an exact sliding Σ W (I − T)², never ΣI² − 2ΣIT + ΣT².
    * NaN stays local: the tap loops of the direct and numba engines use no cumulative sums and no FFT, so a NaN
      pixel only reaches the windows that contain it; for the fast engines (summed-area tables, running sums,
      FFT) NaN pixels are filled before the sums and their windows marked NaN after (:mod:`slidesim.scoring.holes`).
    * Flat windows are found exactly: a window whose computed variance exceeds a proven bound on its rounding
      error is not flat; the rest go through the engine's exact test.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Protocol

import torch

from .._geometry import Geometry
from .._validate import Canonical
from ..kernels.spectral import fft_correlate
from ..metrics import MetricSpec, finish_distance, finish_ncc, finish_ssd_normed, finish_zncc
from ..reference import score_windows
from .holes import mark_holes

_FINISH_TEMPORARIES = 8  # float64 output-sized temporaries alive at once while finishing a chunk
_MAX_FINISH_BYTES = 8 * 2**20
CENTRING_BYTES = 4 * 2**20  # centred copies of the image are made this many bytes at a time
_NORM_CHUNK_BYTES = 2**20  # float64 rows per step of _image_norm: a fresh large temporary costs page faults
_SCORE_TOLERANCE = 5e-4  # ncc / zncc scores that round-off could move further are recomputed exactly
_RESCORE_BYTES = 64 * 2**20  # temporaries of the exact rescoring of gathered windows, at a time
_TRANSFORM_COST = 40  # float64 operations per output value of an FFT correlation, against one per gathered tap


class Primitives(Protocol):
    """Sliding reductions an engine provides (shapes in the docstrings of the direct engine).

    ``spreads_nan`` is true for engines whose sums carry a NaN beyond its windows (FFTs, cumulative sums): the
    scoring code then fills NaN pixels and marks their windows afterwards (:mod:`slidesim.scoring.holes`).
    """

    geom: Geometry
    spreads_nan: bool
    cumulative_window_sums: bool  # unmasked window sums come from cumulative sums (their round-off: the image's)
    global_cross_error: bool  # the cross term's round-off spreads over every output (transforms)

    def for_stream(self) -> Primitives: ...

    def correlate(
        self, image: torch.Tensor, kernel: torch.Tensor, support: torch.Tensor | None = None
    ) -> torch.Tensor: ...

    def distance(
        self,
        image: torch.Tensor,
        templates: torch.Tensor,
        weights: torch.Tensor | None,
        power: int,
        periods: tuple[float | None, ...] | None,
    ) -> torch.Tensor: ...

    def window_sum(
        self, plane: torch.Tensor, weights: torch.Tensor | None, exact_zeros: bool = True
    ) -> torch.Tensor: ...

    def window_flat(
        self, plane: torch.Tensor, support: torch.Tensor | None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor: ...

    def window_squares(self, plane: torch.Tensor, shift: torch.Tensor, centred: bool) -> torch.Tensor | None: ...

    def window_factors(
        self, plane: torch.Tensor, shift: torch.Tensor, tolerance: float, dtype: torch.dtype
    ) -> torch.Tensor | None: ...

    def plane_energy(self, plane: torch.Tensor, shift: torch.Tensor) -> torch.Tensor | None: ...


def score_channels(prims: Primitives, canon: Canonical, image: torch.Tensor) -> torch.Tensor:
    """Scores for the call's channels mode: [B, T, H', W'] ("joint", "mean") or [B, T, C, H', W'] ("separate")."""
    if _fills_holes(prims, canon):
        holes, image, canon = _filled(canon, image)
        scores = score_channels(prims, canon, image)
        return mark_holes(scores, holes, canon.mask, prims.geom, canon.channels_mode == "separate")
    spec, bank, mask, periods = canon.spec, canon.templates, canon.mask, canon.periods
    if canon.channels_mode == "joint":
        return score_joint(prims, spec, image, bank, mask, periods, canon.memory_limit, canon.problem.finite)
    per_channel = []
    for c in range(image.shape[1]):
        channel_mask = mask[:, :, c : c + 1] if mask is not None and mask.shape[2] > 1 else mask
        channel_periods = (periods[c],) if periods is not None else None
        per_channel.append(
            score_joint(
                prims,
                spec,
                image[:, c : c + 1],
                bank[:, :, c : c + 1],
                channel_mask,
                channel_periods,
                canon.memory_limit,
                canon.problem.finite,
            )
        )
    if canon.channels_mode == "separate":
        return torch.stack(per_channel, dim=2)
    return torch.stack(per_channel, dim=0).mean(dim=0)


def _fills_holes(prims: Primitives, canon: Canonical) -> bool:
    """Whether NaN pixels must be filled before this engine sums the images (and their windows marked after)."""
    return prims.spreads_nan and not canon.problem.finite


def _filled(canon: Canonical, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Canonical]:
    """(NaN map [B, C, Hp, Wp], the padded images with their NaN pixels filled, the call marked finite)."""
    holes = torch.isnan(image.detach())
    filled = torch.where(holes, _finite_channel_mean(image), image)
    return holes, filled, dataclasses.replace(canon, problem=dataclasses.replace(canon.problem, nonfinite="none"))


def _mask_sums(mask: torch.Tensor | None, channels: int, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """Σ M over channels and taps per template -> [Bm, Tm] (float64)."""
    if mask is None:
        return like.new_full((1, 1), float(channels * h * w), dtype=torch.float64)
    per_tap = mask.to(torch.float64).sum(dim=(-1, -2))
    return per_tap.sum(dim=-1) * (channels if mask.shape[2] == 1 else 1)


def _template_chunk(memory_limit: int, batch: int, out_h: int, out_w: int, n_templates: int) -> int:
    per_template = _FINISH_TEMPORARIES * 8 * batch * out_h * out_w
    budget = min(memory_limit // 2, _MAX_FINISH_BYTES)
    return int(max(1, min(n_templates, budget // max(1, per_template))))


def _finite_channel_mean(image: torch.Tensor) -> torch.Tensor:
    """Per (image, channel) mean of the finite pixels, [B, C, 1, 1], detached: the centring shift.

    One channel at a time, so that the temporaries stay one plane large.
    """
    data = image.detach()
    means = torch.zeros(data.shape[0], data.shape[1], 1, 1, dtype=torch.float64, device=data.device)
    for c in range(data.shape[1]):
        plane = data[:, c]
        total = plane.sum(dim=(-1, -2))  # any shift near the mean centres well enough: the compute dtype will do
        if bool(torch.isfinite(total).all()):  # a finite sum means finite pixels
            means[:, c, 0, 0] = total.to(torch.float64) / (plane.shape[-1] * plane.shape[-2])
            continue
        finite = torch.isfinite(plane)
        total = torch.where(finite, plane, 0).sum(dim=(-1, -2), dtype=torch.float64)
        means[:, c, 0, 0] = total / finite.sum(dim=(-1, -2)).clamp_min(1)
    return means.to(image.dtype)


def score_joint(
    prims: Primitives,
    spec: MetricSpec,
    image: torch.Tensor,
    bank: torch.Tensor,
    mask: torch.Tensor | None,
    periods: tuple[float | None, ...] | None,
    memory_limit: int,
    finite: bool,
) -> torch.Tensor:
    """One score over all channels (OpenCV's semantics): [B, T, H', W'] in the compute dtype.

    Args:
        prims: The engine's sliding reductions.
        spec: The metric.
        image: Padded images [B, C, Hp, Wp].
        bank: Templates [Bk, T, C, h, w].
        mask: Weights [Bm, Tm, Cm, h, w] or None.
        periods: Per-channel periods of circular channels, or None.
        memory_limit: Bytes that temporaries may use.
        finite: Whether every image pixel is finite (the validated problem knows).
    """
    _Bk, T, C, h, w = bank.shape
    if spec.family == "distance":
        weights = None if mask is None else (mask if spec.power == 1 else mask * mask)
        distance = prims.distance(image, bank, weights, spec.power, periods)
        # Without a mask n is a count: a Python number spares small calls two tensor operations.
        n = float(C * h * w) if mask is None else _mask_sums(mask, C, h, w, image).to(image.dtype)[..., None, None]
        return finish_distance(spec.name, distance, n, in_place=not distance.requires_grad)

    B = image.shape[0]
    out_h, out_w = _out_size(prims)
    state = _CorrelationState(prims, spec, image, bank, mask, finite)
    raw = state.raw()
    if spec.name == "ccoeff":
        return _undefined_means(raw, image, mask, prims.geom, finite)
    if spec.name == "ccorr":
        return raw
    # Finishing needs float64 temporaries: do it a few templates at a time, in place when no gradient is needed.
    chunk = _template_chunk(memory_limit, B, out_h, out_w, T)
    if raw.requires_grad:
        return torch.cat([state.finish(raw[:, t0 : t0 + chunk], t0, t0 + chunk) for t0 in range(0, T, chunk)], dim=1)
    if spec.name != "ssd_normed":  # ncc and zncc finish in place with no per-template temporaries: all at once
        chunk = T
    for t0 in range(0, T, chunk):
        state.finish_in_place(raw[:, t0 : t0 + chunk], t0, min(T, t0 + chunk))
    return raw


def score_stream(
    prims: Primitives, canon: Canonical, image: torch.Tensor, chunk: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Joint scores of the bank ``chunk`` templates at a time: yields (t0, t1, scores [B, t1 − t0, H', W']).

    The image side is computed once for the whole bank: its centring, the window statistics that templates share
    and, for engines that keep them, the spectra of the image planes. Memory beyond that is one chunk's scores and
    temporaries, whatever the bank size.
    """
    if canon.channels_mode != "joint":
        raise ValueError(f"streaming scores one joint score per template; got channels={canon.channels_mode!r}")
    if _fills_holes(prims, canon):
        holes, image, canon = _filled(canon, image)
        for t0, t1, scores in score_stream(prims, canon, image, chunk):
            mask = canon.mask if canon.mask is None or canon.mask.shape[1] == 1 else canon.mask[:, t0:t1]
            yield t0, t1, mark_holes(scores, holes, mask, prims.geom, separate=False)
        return
    spec, bank, mask, periods = canon.spec, canon.templates, canon.mask, canon.periods
    T = bank.shape[1]
    if spec.family == "distance":
        weights = None if mask is None else (mask if spec.power == 1 else mask * mask)
        n = _mask_sums(mask, bank.shape[2], *bank.shape[-2:], image).to(image.dtype)[..., None, None]
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            chunk_weights = weights if weights is None or weights.shape[1] == 1 else weights[:, t0:t1]
            chunk_n = n if n.shape[1] == 1 else n[:, t0:t1]
            distance = prims.distance(image, bank[:, t0:t1], chunk_weights, spec.power, periods)
            yield t0, t1, finish_distance(spec.name, distance, chunk_n)
        return
    prims = prims.for_stream()
    state = _CorrelationState(prims, spec, image, bank, mask, canon.problem.finite)
    state.keep_planes()
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        raw = state.raw(t0, t1)
        if spec.name == "ccoeff":
            chunk_mask = mask if mask is None or mask.shape[1] == 1 else mask[:, t0:t1]
            yield t0, t1, _undefined_means(raw, image, chunk_mask, prims.geom, canon.problem.finite)
        elif spec.name == "ccorr":
            yield t0, t1, raw
        elif raw.requires_grad:
            yield t0, t1, state.finish(raw, t0, t1)
        else:
            state.finish_in_place(raw, t0, t1)
            yield t0, t1, raw


def _undefined_means(
    scores: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None, geom: Geometry, finite: bool
) -> torch.Tensor:
    """ccoeff ``scores`` with NaN where a window holds ±inf under a positive weight.

    Σ W (T − m_T)(I − m_I) needs the window mean m_I, which is infinite there, so the reference scores NaN; the
    engines fold m_I into a kernel that sums to zero, which would give ±inf instead.
    """
    if finite:
        return scores
    infinite = torch.isinf(image.detach())
    if not bool(infinite.any()):
        return scores
    return mark_holes(scores, infinite, mask, geom, separate=False)


def _out_size(prims: Primitives) -> tuple[int, int]:
    return prims.geom.out_height, prims.geom.out_width


def _tiny() -> float:
    return torch.finfo(torch.float64).tiny


class _CorrelationState:
    """Per-call state of the correlation family: the centred image and window statistics shared by all chunks."""

    def __init__(
        self,
        prims: Primitives,
        spec: MetricSpec,
        image: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor | None,
        finite: bool,
    ) -> None:
        self.prims, self.spec, self.image, self.bank = prims, spec, image, bank
        h, w = bank.shape[-2:]
        self.masked = mask is not None
        self.mask = mask if mask is not None else torch.ones(1, 1, 1, h, w, dtype=image.dtype, device=image.device)
        self.binary = mask is None or bool(((mask == 0) | (mask == 1)).all())
        self.shared = self.mask.shape[1] == 1
        if spec.name in ("ccoeff", "zncc"):
            # Centring keeps the float32 cross term and the float64 window sums free of cancellation.
            self.shift = _finite_channel_mean(image)
        self.finite_image = finite  # then degenerate windows have finite raw scores (no 0 · NaN)
        self._cache: dict[str, object] = {}
        self._planes: dict[tuple, torch.Tensor] | None = None

    def keep_planes(self) -> None:
        """Keep the derived image planes (centred, float64, squared) for later chunks of a streamed bank, so that
        an engine that caches work per image tensor (FFT spectra) recognizes them."""
        self._planes = {}

    def _plane(self, key: tuple, compute) -> torch.Tensor:
        if self._planes is None:
            return compute()
        if key not in self._planes:
            self._planes[key] = compute()
        return self._planes[key]

    def _channel_reach(self, c: int) -> float:
        """max |I − shift| over the finite pixels of channel c, computed once per call."""
        key = f"reach{c}"
        if key not in self._cache:
            self._cache[key] = _reach(self.image[:, c : c + 1], self.shift[:, c : c + 1])
        return self._cache[key]

    def _once(self, key: str, compute):
        """Window statistics depend on the mask only: compute them once when every template shares it."""
        if not self.shared:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _centred_kernel(self, bank64: torch.Tensor, m64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ccoeff kernel, template minus its per-channel M-weighted mean), both float64 [Bk, T, C, h, w]."""
        m_sum = m64.sum(dim=(-1, -2), keepdim=True).clamp_min(_tiny())
        t_centred = bank64 - (m64 * bank64).sum(dim=(-1, -2), keepdim=True) / m_sum
        kernel = m64 * m64 * t_centred
        # OpenCV's ccoeff is Σ W (T − m_T)(I − m_I) with M-weighted window means m_I; folding the window mean into
        # the kernel gives one correlation whose kernel sums to zero per channel, hence shift-invariant.
        return kernel - m64 * kernel.sum(dim=(-1, -2), keepdim=True) / m_sum, t_centred

    def raw(self, t0: int = 0, t1: int | None = None) -> torch.Tensor:
        """The sliding reduction of templates t0:t1 (default all) -> [B, t1 − t0, H', W'] in the compute dtype.

        ccorr and ncc: Σ W I T; ssd_normed: the exact Σ W (I − T)²; ccoeff and zncc: ccoeff.
        """
        bank = self.bank[:, t0:t1]
        mask = self.mask if self.shared else self.mask[:, t0:t1]
        name, weights = self.spec.name, mask * mask
        support = mask > 0 if self.masked else None  # a zero weight takes its tap out of the window, NaN and all
        if name in ("ccorr", "ncc"):
            return self.prims.correlate(self.image, bank * weights if self.masked else bank, support)
        if name == "ssd_normed":  # unmasked: no weights, so the distance kernels take their unweighted path
            return self.prims.distance(self.image, bank, weights if self.masked else None, 2, None)
        kernel, _ = self._centred_kernel(bank.to(torch.float64), mask.to(torch.float64))
        return self._centred_correlate(kernel.to(self.image.dtype), support)

    def _centred(self, c0: int, c1: int) -> torch.Tensor:
        """Channels c0:c1 of the image minus their mean of finite pixels."""
        return self.image[:, c0:c1] - self.shift[:, c0:c1]

    def _centred_correlate(self, kernel: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """correlate(image − shift, kernel), centring a few channels at a time so no full copy of the image exists."""
        image = self.image
        C = image.shape[1]
        per_channel = image[:, :1].numel() * image.element_size()
        group = max(1, CENTRING_BYTES // max(1, per_channel))
        if group >= C:
            return self.prims.correlate(self._plane(("centred", 0, C), lambda: self._centred(0, C)), kernel, support)
        total = None
        for c0 in range(0, C, group):
            centred = self._plane(("centred", c0, c0 + group), lambda c0=c0: self._centred(c0, c0 + group))
            channels = support if support is None or support.shape[2] == 1 else support[:, :, c0 : c0 + group]
            part = self.prims.correlate(centred, kernel[:, :, c0 : c0 + group], channels)
            if total is None:
                total = part
            elif total.requires_grad or part.requires_grad:
                total = total + part
            else:
                total += part
        return total

    def finish(self, raw: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Normalized scores of templates t0:t1 from their raw reduction -> [B, t1 - t0, H', W']."""
        name = self.spec.name
        bank64 = self.bank[:, t0:t1].to(torch.float64)
        mask = self.mask if self.shared else self.mask[:, t0:t1]
        weights = mask * mask
        w64 = weights.to(torch.float64)
        raw64 = raw.to(torch.float64)
        if name in ("ncc", "ssd_normed"):
            energy_t = (w64 * bank64 * bank64).sum(dim=(-3, -2, -1))[..., None, None]
            energy_w = self._once("energy", lambda: self._window_energy(weights))
            if name == "ssd_normed":
                return finish_ssd_normed(raw64, energy_t, energy_w).to(raw.dtype)
            scores = finish_ncc(raw64, energy_t, energy_w).to(raw.dtype)
            uncertain = self._once("energy_uncertain", lambda: self._uncertain_energies(energy_w.detach(), weights))
            return self._rescored(scores, t0, t1, energy_t, energy_w, uncertain)
        _, t_centred = self._centred_kernel(bank64, mask.to(torch.float64))
        template_var = (w64 * t_centred * t_centred).sum(dim=(-3, -2, -1))[..., None, None]
        window_var, flat_w, uncertain = self._once("moments", lambda: self._window_moments(mask, weights))
        flat = flat_w | _flat_templates(bank64, mask)[..., None, None]
        scores = finish_zncc(raw64, template_var, window_var, flat).to(raw.dtype)
        return self._rescored(scores, t0, t1, template_var, torch.where(flat_w, 0.0, window_var), uncertain)

    def _rescored(
        self,
        scores: torch.Tensor,
        t0: int,
        t1: int,
        template_moment: torch.Tensor,
        window_moment: torch.Tensor,
        uncertain: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Differentiable scores with the windows that round-off could spoil scored exactly (see _unreliable)."""
        template_scale, _ = _inverse_root(template_moment.detach()[..., 0, 0].clone(), None)
        window_scale, _ = _inverse_root(window_moment.detach().clone(), None)
        flagged = self._unreliable(t0, t1, template_scale, window_scale, uncertain)
        if flagged is None:
            return scores
        index, exact = self._exact_scores(t0, flagged.expand(scores.shape), grad=True)
        return scores.index_put(tuple(index.unbind(dim=1)), exact.to(scores.dtype))

    def finish_in_place(self, raw: torch.Tensor, t0: int, t1: int) -> None:
        """Normalize raw [B, t1 - t0, H', W'] of templates t0:t1 in place, without autograd.

        ncc and zncc are raw · s_window · s_template with s = 1/√energy (or 1/√variance) and s = 0 for degenerate
        windows and templates: the window factor is computed once per call, so each template costs two passes
        over its map instead of a dozen float64 temporaries. ssd_normed keeps the general finish.
        """
        name = self.spec.name
        if name == "ssd_normed":
            raw.copy_(self.finish(raw, t0, t1))
            return
        bank64 = self.bank[:, t0:t1].to(torch.float64)
        mask = self.mask if self.shared else self.mask[:, t0:t1]
        weights = mask * mask
        w64 = weights.to(torch.float64)
        if name == "ncc":
            template_energy = (w64 * bank64 * bank64).sum(dim=(-3, -2, -1))
            template_scale, template_degenerate = _inverse_root(template_energy, None)
            window_scale, window_degenerate, uncertain = self._once(
                "ncc_scale", lambda: self._ncc_window_factors(weights, raw.dtype)
            )
        else:
            _, t_centred = self._centred_kernel(bank64, mask.to(torch.float64))
            template_var = (w64 * t_centred * t_centred).sum(dim=(-3, -2, -1))
            template_scale, template_degenerate = _inverse_root(template_var, _flat_templates(bank64, mask))
            window_scale, window_degenerate, uncertain = self._once(
                "zncc_scale", lambda: self._zncc_window_factors(mask, weights, raw.dtype)
            )
        unreliable = self._unreliable(t0, t1, template_scale, window_scale, uncertain)
        # Template factor first: raw · s_t is about the window's deviation, within range whenever raw is.
        raw.mul_(template_scale[..., None, None].to(window_scale.dtype)).mul_(window_scale).clamp_(-1.0, 1.0)
        # 0 · NaN is NaN: degenerate scores are 0 whatever the window holds. The clamped scores lie in [−1, 1]
        # unless NaN, so their plain sum is finite exactly when none is NaN (one pass, no temporary).
        if not self.finite_image and not bool(torch.isfinite(raw.sum())):
            if window_degenerate is None:
                window_degenerate = window_scale == 0
            raw.masked_fill_(window_degenerate | template_degenerate[..., None, None], 0.0)
        elif bool(template_degenerate.any()):
            raw.masked_fill_(template_degenerate[..., None, None], 0.0)
        if unreliable is not None:
            self._rescore(raw, t0, unreliable, (template_scale, window_scale, uncertain))

    def _cross_error(self, t0: int, t1: int) -> torch.Tensor:
        """Round-off of the cross term of templates t0:t1, estimated -> [Bk, t1 − t0] float64.

        Engines that correlate tap by tap (direct, conv) err by about ε·√n·Σ|I||K| per window, bounded here by
        the image's reach; FFTs spread ε·‖I‖₂·‖K‖₂ over every output. The errors measured on photographs stay
        under 0.55 of these estimates.
        """
        eps = torch.finfo(self.image.dtype).eps
        if self.prims.global_cross_error:
            return self._fft_error(t0, t1, eps)
        kernel = self._kernels64(t0, t1)
        reach = self._once_value("image_reach", lambda: self._image_reach(self.spec.name == "zncc"))
        taps = kernel.shape[-3] * kernel.shape[-2] * kernel.shape[-1]
        return eps * math.sqrt(taps) * reach * kernel.abs().sum(dim=(-3, -2, -1))

    def _fft_error(self, t0: int, t1: int, eps: float) -> torch.Tensor:
        """ε·‖I‖₂·‖K‖₂ per template of t0:t1: the round-off an FFT correlation spreads over every output."""
        norm = self._once_value("image_norm", lambda: self._image_norm(self.spec.name == "zncc"))
        return eps * norm * self._kernels64(t0, t1).pow(2).sum(dim=(-3, -2, -1)).sqrt()

    def _once_value(self, key: str, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _image_norm(self, centred: bool) -> float:
        """Largest ‖I − shift‖₂ (or ‖I‖₂) over the images, in float64."""
        image = self.image.detach()
        B, C, H, W = image.shape
        total = torch.zeros(B, dtype=torch.float64, device=image.device)
        rows = max(1, _NORM_CHUNK_BYTES // max(1, B * W * 8))  # float64 pieces small enough to reuse freed memory
        zero = torch.zeros(B, 1, 1, 1, dtype=torch.float64, device=image.device)
        for c in range(C):
            energy = None
            if self.finite_image:  # the fused pass sums every pixel; NaN and ±inf are left out below
                energy = self.prims.plane_energy(image[:, c : c + 1], self.shift[:, c : c + 1] if centred else zero)
            if energy is not None:  # one fused pass
                total += energy.to(total.device)
                continue
            shift = self.shift[:, c : c + 1].detach().to(torch.float64) if centred else 0.0
            for r0 in range(0, H, rows):
                piece = image[:, c : c + 1, r0 : r0 + rows].to(torch.float64) - shift
                if not self.finite_image:
                    piece = piece.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                total += piece.pow(2).sum(dim=(-3, -2, -1))
        return float(total.max().sqrt())

    def _image_reach(self, centred: bool) -> float:
        """max |I − shift| (or |I|) over the images' finite pixels."""
        if centred:
            return max(self._channel_reach(c) for c in range(self.image.shape[1]))
        low, high = _finite_extremes(self.image.detach())
        return float(max(abs(float(low)), abs(float(high))))

    def _unreliable(
        self,
        t0: int,
        t1: int,
        template_scale: torch.Tensor,
        window_scale: torch.Tensor,
        uncertain: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """Windows whose normalized score round-off could move by more than _SCORE_TOLERANCE -> [B, t1 − t0 or 1,
        H', W'] bool, or None when there are none; they are then scored exactly (:meth:`_rescore`).

        The error of a normalized score is the cross term's error times both factors, so only windows whose
        variation is tiny against the image's (near-flat windows at another level than the image mean, such as
        a black area with faint ringing) can be affected. ``uncertain`` adds the windows whose variance itself is
        within its rounding bound without being exactly flat.
        """
        per_template = self._cross_error(t0, t1).detach() * template_scale  # [Bk, t]
        # windows that hold NaN have a NaN factor and score NaN whatever happens: they must not hide the others
        widest = float(torch.nan_to_num(window_scale, nan=0.0).max()) if window_scale.numel() else 0.0
        largest = float(per_template.max()) * widest if per_template.numel() else 0.0
        flagged = None
        if largest > _SCORE_TOLERANCE:
            flagged = window_scale.to(torch.float64) * per_template[..., None, None] > _SCORE_TOLERANCE
        if uncertain is not None:
            flagged = uncertain if flagged is None else flagged | uncertain
        return flagged if flagged is not None and bool(flagged.any()) else None

    def _rescore(self, scores: torch.Tensor, t0: int, flagged: torch.Tensor, factors: tuple) -> None:
        """Score the flagged windows of templates t0.. exactly, in place.

        Few windows are gathered and scored one by one in float64. When so many are flagged that this would cost
        more than a transform (large templates with a tap-by-tap engine, whose round-off estimate grows with the
        template), the cross term of the whole chunk is recomputed by a float64 FFT instead and finished with the
        same factors; the windows that even its round-off (or their own variance's) could spoil are then gathered.
        """
        template_scale, window_scale, uncertain = factors
        B, t, H, W = scores.shape
        flagged = flagged.expand(B, t, H, W)
        taps = self.bank.shape[-3] * self.bank.shape[-2] * self.bank.shape[-1]
        transform = B * t * self.image.shape[1] * H * W * _TRANSFORM_COST
        if int(flagged.sum()) * taps > transform:
            cross = self._float64_cross(t0, t0 + t)
            better = (cross * template_scale[..., None, None] * window_scale.to(torch.float64)).clamp_(-1.0, 1.0)
            scores.copy_(torch.where(flagged, better.to(scores.dtype), scores))
            error = self._fft_error(t0, t0 + t, torch.finfo(torch.float64).eps)
            flagged = window_scale.to(torch.float64) * (error * template_scale)[..., None, None] > _SCORE_TOLERANCE
            if uncertain is not None:
                flagged = flagged | uncertain
            flagged = flagged.expand(B, t, H, W)
            if not bool(flagged.any()):
                return
        index, exact = self._exact_scores(t0, flagged, grad=False)
        scores[tuple(index.unbind(dim=1))] = exact.to(scores.dtype)

    def _kernels64(self, t0: int, t1: int) -> torch.Tensor:
        """The cross term's kernels of templates t0:t1 in float64 [Bk, t, C, h, w]."""
        bank64 = self.bank[:, t0:t1].detach().to(torch.float64)
        mask = self.mask if self.shared else self.mask[:, t0:t1]
        m64 = mask.detach().to(torch.float64)
        return self._centred_kernel(bank64, m64)[0] if self.spec.name == "zncc" else bank64 * m64 * m64

    def _float64_cross(self, t0: int, t1: int) -> torch.Tensor:
        """The cross term of templates t0:t1 by a float64 FFT -> [B, t1 − t0, H', W'] float64."""
        if self.spec.name == "zncc":
            C = self.image.shape[1]
            planes = [
                self._plane(("centred64", c), lambda c=c: self._centred(c, c + 1).to(torch.float64)) for c in range(C)
            ]
            image = torch.cat([p.detach() for p in planes], dim=1)
        else:
            image = self.image.detach().to(torch.float64)
        if not self.finite_image:
            # A transform spreads NaN and ±inf over every output. Windows that hold one are never recomputed (their
            # window factor is NaN or 0), so the pixels can take any finite value here: 0, the centred mean.
            image = image.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        return fft_correlate(image, self._kernels64(t0, t1), self.prims.geom, _RESCORE_BYTES)

    def _exact_scores(self, t0: int, flagged: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [n, 4] of the flagged (b, t, y, x), their scores [n] by the reference's float64 formula)."""
        index = flagged.nonzero()
        (sy, sx), (dy, dx) = self.prims.geom.stride, self.prims.geom.dilation
        C, h, w = self.bank.shape[-3:]
        rows = torch.arange(h, device=index.device) * dy
        cols = torch.arange(w, device=index.device) * dx
        per_window = C * h * w * 8 * 8  # the gathered window and the formula's temporaries, float64
        step = max(1, _RESCORE_BYTES // per_window)
        image = self.image if grad else self.image.detach()
        parts = []
        for start in range(0, len(index), step):
            b, tt, y, x = index[start : start + step].unbind(dim=1)
            windows = image[
                b[:, None, None, None],
                torch.arange(C, device=b.device)[None, :, None, None],
                (y[:, None] * sy + rows)[:, None, :, None],
                (x[:, None] * sx + cols)[:, None, None, :],
            ].to(torch.float64)
            bk = b if self.bank.shape[0] > 1 else torch.zeros_like(b)
            templates = self.bank[bk, t0 + tt].to(torch.float64)
            bm = b if self.mask.shape[0] > 1 else torch.zeros_like(b)
            tm = t0 + tt if not self.shared else torch.zeros_like(tt)
            masks = self.mask[bm, tm].detach().to(torch.float64)
            exact = score_windows(
                self.spec.name,
                windows[:, :, None, None],
                (templates if grad else templates.detach())[:, :, None, None],
                masks[:, :, None, None],
                None,
                True,
            )
            parts.append(exact.reshape(-1))
        return index, torch.cat(parts)

    def _zncc_window_factors(
        self, mask: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(1/√window variance, 0 for degenerate windows; their mask or None to derive it from the zeros; the
        windows whose variance is too close to zero to trust, or None)."""
        if not self.masked and self.image.shape[1] == 1 and not self.image.requires_grad:
            reach = self._channel_reach(0)
            tolerance = _variance_rounding_bound(reach, self.image.shape[-2:], mask.to(torch.float64))
            info = torch.finfo(dtype)
            # the factors must be normal numbers of dtype: 1/√tolerance and 1/√(largest variance) bound them
            largest = mask.shape[-2] * mask.shape[-1] * reach * reach
            if tolerance > 0 and math.sqrt(tolerance) > 1 / info.max and math.sqrt(largest) < 1 / info.tiny:
                factors = self.prims.window_factors(self.image, self.shift, tolerance, dtype)
                if factors is not None:  # no window is within the rounding bound of zero variance
                    return factors, None, None
        variance, flat, uncertain = self._window_moments(mask, weights)
        return (*_inverse_root(variance, flat, dtype), uncertain)

    def _ncc_window_factors(
        self, weights: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(1/√window energy, 0 for zero windows; the zero windows; the windows whose energy is too close to zero
        to trust, or None)."""
        energy = self._window_energy(weights)
        uncertain = self._uncertain_energies(energy, weights)
        return (*_inverse_root(energy, None, dtype), uncertain)

    def _uncertain_energies(self, energy: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """Windows whose energy Σ W I², taken from cumulative sums (summed-area tables, running sums), lies within
        those sums' rounding bound without the window being all zeros -> bool [B, Tm, H', W'], or None.

        Tap sums of non-negative terms are accurate relative to themselves and exactly zero only for zero windows;
        cumulative sums err by the image's scale instead, which only matters for faint windows in a bright image
        (with integer-valued images the sums are exact and such windows do not exist).
        """
        if self.masked or not self.prims.cumulative_window_sums:
            return None
        low, high = _finite_extremes(self.image.detach())
        reach = max(abs(float(low)), abs(float(high)))
        bound = self.image.shape[1] * _variance_rounding_bound(reach, self.image.shape[-2:], weights.to(torch.float64))
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

    def _window_energy(self, weights: torch.Tensor) -> torch.Tensor:
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
            squares = self._plane(("squares",), self._channel_squares)
            return self.prims.window_sum(squares, w64 if self.masked else None)
        energy = None
        for c in range(self.image.shape[1]):
            squares = self._plane(("squares", c), lambda c=c: self.image[:, c : c + 1].to(torch.float64) ** 2)
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

    def _window_moments(
        self, mask: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Joint weighted variance Σ_c Σ W (I − m_c)² (float64), flatness of every window -> [B, Tm, H', W'], and
        the windows that are not flat but whose variance is within its rounding bound (or None)."""
        m64, w64 = mask.to(torch.float64), weights.to(torch.float64)
        variance, tolerance = None, 0.0
        for c in range(self.image.shape[1]):
            cm = min(c, m64.shape[2] - 1)
            m_c, w_c = m64[:, :, cm : cm + 1], w64[:, :, cm : cm + 1]
            tolerance += _variance_rounding_bound(self._channel_reach(c), self.image.shape[-2:], m_c)
            if not self.masked:  # one fused pass when the engine has it
                var_c = self.prims.window_squares(self.image[:, c : c + 1], self.shift[:, c : c + 1], True)
                if var_c is not None:
                    variance = var_c if variance is None else variance.add_(var_c)
                    continue
            plane = self._plane(("centred64", c), lambda c=c: self._centred(c, c + 1).to(torch.float64))
            box = None if not self.masked else m_c  # unmasked windows: plain box sums
            # the exact flat test decides degenerate windows, so masked sums need not be exactly zero
            first = self.prims.window_sum(plane, box, exact_zeros=False)
            mean = first / m_c.sum(dim=(-1, -2, -3))[..., None, None].clamp_min(_tiny())
            squares = self._plane(("centred64²", c), lambda plane=plane: plane * plane)
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


def _inverse_root(
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
    return values.clamp_min_(_tiny()).rsqrt_().masked_fill_(bad, 0.0), bad


def _reach(plane: torch.Tensor, shift: torch.Tensor) -> float:
    """max |plane − shift| over the finite pixels of plane [B, 1, Hp, Wp] and shifts [B, 1, 1, 1]."""
    low, high = _finite_extremes(plane.detach())
    reach = torch.maximum(high.to(torch.float64) - shift.min(), shift.max() - low.to(torch.float64))
    return float(reach.clamp_min(0))


def _variance_rounding_bound(reach: float, size: tuple[int, int], mask: torch.Tensor) -> float:
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


def _finite_extremes(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of the finite values of a float tensor (0, 0 when there are none)."""
    low, high = torch.aminmax(data)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return low, high
    finite = torch.isfinite(data)
    if not bool(finite.any()):
        return data.new_zeros(()), data.new_zeros(())
    return torch.aminmax(data[finite])


def _flat_templates(bank64: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True for templates whose supported values are equal within every channel -> [Bk or Bm, T]."""
    support = mask > 0
    big = torch.finfo(torch.float64).max
    hi = torch.where(support, bank64, -big).amax(dim=(-1, -2))
    lo = torch.where(support, bank64, big).amin(dim=(-1, -2))
    return (hi <= lo).all(dim=-1)  # equal values, or an empty support (hi = −max < lo = +max)
