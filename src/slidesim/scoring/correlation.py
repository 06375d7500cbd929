"""The correlation metrics from the engine's reductions (floor L3): the raw reduction of a chunk of templates and
its finish into ccorr, ncc, ccoeff, zncc or ssd_normed, and ssd through a correlation for engines that transform.

Numerics:
    * The cross term of ccoeff / zncc correlates the centred image with the mean-removed template in the compute
      dtype (float32 or float64); ccorr / ncc correlate the raw image.
    * ssd_normed uses the exact sliding Σ W (I − T)², never ΣI² − 2ΣIT + ΣT², except on engines that transform
      (``squares_by_correlation``): there ssd and ssd_normed's Σ W (I − T)² are Σ W I′² − 2 Σ W I′T′ + Σ W T′²
      with I′ = I − s and T′ = T − s centred by the image's shift, the cross term a float64 correlation whose
      round-off e = 2ε‖I′‖₂‖W T′‖₂ (ε of float64) plus the window sums' rounding bound is known per template.
      Every window whose value is within e / tolerance (tolerance: 1e-9 for float64, the compute dtype's ε
      otherwise) is scored again exactly, so exact matches score exactly 0 and every other window is within that
      relative tolerance. Integer images with integer templates and binary masks are exact throughout: every
      term is an integer and the cross term, rounded, is exact while e < 1/8.
    * Per-template constants are float64; window statistics come from :mod:`slidesim.scoring.statistics`, and
      windows that round-off could spoil are scored exactly (:mod:`slidesim.scoring.rescoring`).
    * Engines whose round-off spreads over every output (FFTs) learn from the window factors, before they
      correlate, how many windows a compute-dtype cross term would leave to the exact rescoring. When rescoring
      them would cost more than a transform (near-flat windows are common in screenshots and documents), the cross
      term is computed once in float64 instead of once in float32 and again in float64.
"""

from __future__ import annotations

import torch

from .._geometry import Border
from ..metrics import MetricSpec, finish_ncc, finish_ssd_normed, finish_zncc
from .bounds import inverse_root
from .primitives import Primitives
from .rescoring import Rescorer
from .statistics import WindowStatistics
from .templates import centred_kernel, flat_templates

CENTRING_BYTES = 4 * 2**20  # centred copies of the image are made this many bytes at a time


class CorrelationScorer:
    """Scores of one correlation call, a chunk of templates at a time; the image side is computed once.

    Args:
        prims: The engine's sliding reductions.
        spec: A metric of the correlation family (every product metric, and ssd_normed).
        image: Padded images [B, C, Hp, Wp]: in the compute dtype, or 8- and 16-bit integers as stored (narrow,
            for engines that widen as they read).
        bank: Templates [Bk, T, C, h, w] in the compute dtype.
        mask: Weights [Bm, Tm, Cm, h, w], or None.
        finite: Whether every image pixel is finite.
        edge: Where the images lie in their padded planes (default: no padding).
        keep_planes: Keep derived image planes for later chunks of a streamed bank.
        integral: Whether every pixel of the padded images is an integer of at most 16 bits.
    """

    def __init__(
        self,
        prims: Primitives,
        spec: MetricSpec,
        image: torch.Tensor,
        bank: torch.Tensor,
        mask: torch.Tensor | None,
        finite: bool,
        edge: Border | None = None,
        keep_planes: bool = False,
        integral: bool = False,
    ) -> None:
        self.prims, self.spec, self.bank = prims, spec, bank
        self.by_correlation = spec.name in ("ssd", "ssd_normed") and prims.squares_by_correlation
        centre = spec.name in ("ccoeff", "zncc") or self.by_correlation
        dtype = image.dtype if image.is_floating_point() else bank.dtype  # narrow images: the bank's compute dtype
        self.stats = WindowStatistics(prims, image, mask, centre, finite, edge, keep_planes, integral, dtype)
        self.rescorer = Rescorer(self.stats, spec, bank)
        self._last_factors: tuple[tuple, tuple] | None = None  # _factors of the last chunk asked for

    def load(self, bank: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Score another chunk of a streamed bank from now on: templates [Bk, t, C, h, w], weights
        [Bm, t or 1, Cm, h, w] or None (as at construction). The image side is kept."""
        self.bank = self.rescorer.bank = bank
        self.stats.use_mask(mask)
        self._last_factors = None

    def _mask(self, t0: int, t1: int) -> torch.Tensor:
        return self.stats.mask if self.stats.shared else self.stats.mask[:, t0:t1]

    def raw(self, t0: int, t1: int) -> torch.Tensor:
        """The sliding reduction of templates t0:t1 -> [B, t1 − t0, H', W'] in the compute dtype.

        ccorr and ncc: Σ W I T; ssd and ssd_normed: Σ W (I − T)²; ccoeff and zncc: ccoeff.
        """
        if self.by_correlation:
            return self._squared_distance(t0, t1).to(self.stats.dtype)
        stats = self.stats
        bank, mask = self.bank[:, t0:t1], self._mask(t0, t1)
        name, weights = self.spec.name, mask * mask
        support = mask > 0 if stats.masked else None  # a zero weight takes its tap out of the window, NaN and all
        dtype = torch.float64 if self._cross_in_float64(t0, t1) else stats.dtype
        self.rescorer.cross_dtype = dtype
        if name in ("ccorr", "ncc"):
            # narrow images are widened by the engine as it reads them, to the kernel's dtype: no float64 copy
            narrow = not stats.image.is_floating_point()
            image = stats.image if dtype == stats.dtype or narrow else stats.plane(("float64",), stats.image.double)
            kernel = bank * weights if stats.masked else bank
            return self.prims.correlate(image, kernel.to(dtype), support, out_dtype=stats.dtype)
        if name == "ssd_normed":  # unmasked: no weights, so the distance kernels take their unweighted path
            return self.prims.distance(stats.image, bank, weights if stats.masked else None, 2, None)
        if name == "zncc" and not (torch.is_grad_enabled() and (bank.requires_grad or mask.requires_grad)):
            kernel = self.rescorer.kernels64(t0, t1)  # the same float64 kernels, kept for the round-off estimate
        else:
            kernel, _ = centred_kernel(bank.to(torch.float64), mask.to(torch.float64))
        return self._centred_correlate(kernel.to(dtype), support, stats.dtype).to(stats.dtype)

    def _squared_distance(self, t0: int, t1: int) -> torch.Tensor:
        """Σ_c Σ W (I − T)² of templates t0:t1 through a float64 correlation (see the module docstring) ->
        [B, t1 − t0, H', W'] float64."""
        stats = self.stats
        f64 = torch.float64
        bank = self.bank[:, t0:t1].detach().to(f64)  # [Bk, t, C, h, w]
        weights = self._mask(t0, t1).detach().to(f64) ** 2  # [Bm, t or 1, Cm, h, w]
        shift = stats.shift.detach().to(f64)[:, None]  # [B, 1, C, 1, 1]
        centred = bank - shift  # [B, t, C, h, w]: each image's templates centred by its shift
        kernel = weights * centred
        support = weights > 0 if stats.masked else None
        cross = self._centred_correlate(kernel, support)  # [B, t, H', W'] float64
        energy_t = (kernel * centred).sum(dim=(-3, -2, -1))  # [B, t]
        energy_w, energy_error = stats.per_mask(("centred energy",), lambda: stats.centred_energy(weights))
        norm = stats.once(("image_norm", True), lambda: self.rescorer.image_norm(True))
        error = 2 * torch.finfo(f64).eps * norm * kernel.pow(2).sum(dim=(-3, -2, -1)).sqrt()  # [B, t]
        whole = stats.integral and bool((bank == bank.round()).all()) and bool(((weights == 0) | (weights == 1)).all())
        if whole and energy_error == 0 and float(error.max()) < 0.125:  # integers: round the cross term, exactly
            cross.round_()
            error = torch.zeros_like(error)
        distance = cross.mul_(-2).add_(energy_w).add_(energy_t[..., None, None]).clamp_min_(0.0)
        if float(error.max()) == 0 and energy_error == 0:
            return distance
        tolerance = 1e-9 if stats.dtype == f64 else torch.finfo(stats.dtype).eps
        doubtful = distance <= ((error + energy_error) / tolerance)[..., None, None]
        if bool(doubtful.any()):
            index, exact = self.rescorer.exact_scores(t0, doubtful, grad=False, metric="ssd")
            distance[tuple(index.unbind(dim=1))] = exact
        return distance

    def precision_work(self, t0: int, t1: int) -> tuple[bool, int]:
        """The work of templates t0:t1 that exact numerics add on these data, which shapes alone cannot tell:
        (whether the ncc / zncc cross term runs in float64 from the start, about how many windows its round-off
        leaves to the exact rescoring otherwise, uncertain variances included). Computes the window statistics.
        Other metrics: (False, 0)."""
        if self.spec.name not in ("ncc", "zncc") or self.stats.image.dtype == torch.float64:
            return False, 0
        with torch.no_grad():
            if self._cross_in_float64(t0, t1):
                return True, 0
            template_scale, _, window_scale, uncertain = self._factors(t0, t1, self.stats.image.dtype)
            self.rescorer.cross_dtype = self.stats.image.dtype
            count = self.rescorer.unreliable_count(t0, t1, template_scale, window_scale)
            if uncertain is not None:
                count += int(uncertain.sum()) * (t1 - t0 if uncertain.shape[1] == 1 else 1)
        return False, count

    def _cross_in_float64(self, t0: int, t1: int) -> bool:
        """Whether templates t0:t1 should be correlated in float64 from the start: a compute-dtype cross term of
        an engine whose round-off spreads over every output would leave so many windows to the exact rescoring
        that its float64 transform would run anyway (see :meth:`Rescorer.prefers_transform`)."""
        stats = self.stats
        if (
            self.spec.name not in ("ncc", "zncc")
            or not self.prims.global_cross_error
            or not stats.shared  # per-template window factors would be computed twice
            or stats.dtype == torch.float64
            or (torch.is_grad_enabled() and (stats.image.requires_grad or self.bank.requires_grad))
        ):
            return False
        template_scale, _, window_scale, _ = self._factors(t0, t1, stats.dtype)
        self.rescorer.cross_dtype = stats.dtype
        count = self.rescorer.unreliable_count(t0, t1, template_scale, window_scale)
        B, _, H, W = window_scale.shape
        return self.rescorer.prefers_transform(count, B * (t1 - t0) * H * W, upfront=True)

    def _centred_correlate(
        self, kernel: torch.Tensor, support: torch.Tensor | None, out_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """correlate(image − shift, kernel) in the kernel's dtype: centred as the engine reads the image where it
        can (the FFT engine's tiles: no copy, every channel in one call), else centring a few channels at a time
        so no full copy of the image exists; in ``out_dtype`` where one call takes every channel (partial sums of
        channel groups add up in the kernel's dtype)."""
        stats = self.stats
        if stats.finite or support is None:  # taps outside the support read no NaN: centre as the engine reads
            fused = self.prims.correlate_centred(stats.image, stats.shift, kernel, out_dtype)
            if fused is not None:
                return fused
        C, dtype = stats.image.shape[1], kernel.dtype
        per_channel = stats.image[:, :1].numel() * kernel.element_size()
        group = max(1, CENTRING_BYTES // max(1, per_channel))
        if group >= C:
            return self.prims.correlate(stats.centred_plane(0, C, dtype), kernel, support, out_dtype=out_dtype)
        total = None
        for c0 in range(0, C, group):
            centred = stats.centred_plane(c0, c0 + group, dtype)
            channels = support if support is None or support.shape[2] == 1 else support[:, :, c0 : c0 + group]
            part = self.prims.correlate(centred, kernel[:, :, c0 : c0 + group], channels)
            if total is None:
                total = part
            elif total.requires_grad or part.requires_grad:
                total = total + part
            else:
                total += part
        return total

    def finish(self, raw: torch.Tensor, t0: int, t1: int, in_place: bool) -> torch.Tensor:
        """Normalized scores of templates t0:t1 from their raw reduction [B, t1 − t0, H', W'].

        With ``in_place`` (no autograd) ncc and zncc are raw · s_window · s_template with s = 1/√energy (or
        1/√variance) and s = 0 for degenerate windows and templates, written over ``raw``: the window factor is
        computed once per call, so each template costs two passes over its map instead of a dozen float64
        temporaries; ssd_normed of finite images likewise, ssd · s_window · s_template with s = 1/√energy.
        Otherwise the differentiable float64 formulas of :mod:`slidesim.metrics` run.
        """
        if in_place and self.spec.name != "ssd_normed":
            self._finish_in_place(raw, t0, t1)
            return raw
        # ssd_normed keeps the differentiable formula for NaN and inf (its rules) and for a bank that needs a
        # gradient (the energies carry it where ssd's float64 correlation does not)
        differentiable = torch.is_grad_enabled() and (self.bank.requires_grad or self.stats.image.requires_grad)
        if in_place and self.stats.finite and not differentiable:
            self._finish_ssd_normed_in_place(raw, t0, t1)
            return raw
        scores = self._finish_differentiable(raw, t0, t1)
        return raw.copy_(scores) if in_place else scores

    def _finish_differentiable(self, raw: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        stats, name = self.stats, self.spec.name
        bank64 = self.bank[:, t0:t1].to(torch.float64)
        mask = self._mask(t0, t1)
        weights = mask * mask
        w64 = weights.to(torch.float64)
        raw64 = raw.to(torch.float64)
        if name in ("ncc", "ssd_normed"):
            energy_t = (w64 * bank64 * bank64).sum(dim=(-3, -2, -1))[..., None, None]
            energy_w = stats.per_mask(("energy",), lambda: stats.window_energy(weights))
            if name == "ssd_normed":
                return finish_ssd_normed(raw64, energy_t, energy_w).to(raw.dtype)
            scores = finish_ncc(raw64, energy_t, energy_w).to(raw.dtype)
            uncertain = stats.per_mask(
                ("energy_uncertain",), lambda: stats.uncertain_energies(energy_w.detach(), weights)
            )
            return self.rescorer.rescored(scores, t0, t1, energy_t, energy_w, uncertain)
        _, t_centred = centred_kernel(bank64, mask.to(torch.float64))
        template_var = (w64 * t_centred * t_centred).sum(dim=(-3, -2, -1))[..., None, None]
        window_var, flat_w, uncertain = stats.per_mask(("moments",), lambda: stats.window_moments(mask, weights))
        flat = flat_w | flat_templates(bank64, mask)[..., None, None]
        scores = finish_zncc(raw64, template_var, window_var, flat).to(raw.dtype)
        return self.rescorer.rescored(scores, t0, t1, template_var, torch.where(flat_w, 0.0, window_var), uncertain)

    def _factors(
        self, t0: int, t1: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(template factors [Bk, t] float64, degenerate templates [Bk, t], window factors [B, Tm, H', W'] in
        ``dtype`` where it holds them, windows too close to degenerate to trust or None) of ncc or zncc: s = 1/√
        energy (or variance), 0 for degenerate ones, without autograd. The window factors are computed once per
        mask; the last chunk's factors are kept (asked for before the cross term and again to finish it)."""
        if self._last_factors is not None and self._last_factors[0] == (t0, t1, dtype):
            return self._last_factors[1]
        found = self._compute_factors(t0, t1, dtype)
        self._last_factors = ((t0, t1, dtype), found)
        return found

    def _compute_factors(
        self, t0: int, t1: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        stats = self.stats
        bank64 = self.bank[:, t0:t1].to(torch.float64)
        mask = self._mask(t0, t1)
        weights = mask * mask
        w64 = weights.to(torch.float64)
        if self.spec.name == "ncc":
            template_energy = (w64 * bank64 * bank64).sum(dim=(-3, -2, -1))
            template_scale, template_degenerate = inverse_root(template_energy, None)
            window_scale, _, uncertain = stats.per_mask(("ncc_scale",), lambda: stats.ncc_factors(weights, dtype))
        else:
            _, t_centred = centred_kernel(bank64, mask.to(torch.float64))
            template_var = (w64 * t_centred * t_centred).sum(dim=(-3, -2, -1))
            template_scale, template_degenerate = inverse_root(template_var, flat_templates(bank64, mask))
            window_scale, _, uncertain = stats.per_mask(
                ("zncc_scale",), lambda: stats.zncc_factors(mask, weights, dtype)
            )
        return template_scale, template_degenerate, window_scale, uncertain

    def _finish_ssd_normed_in_place(self, raw: torch.Tensor, t0: int, t1: int) -> None:
        """ssd_normed written over the ssd ``raw`` [B, t, H', W']: ssd / √(E_template · E_window), capped at 1;
        where an energy is zero, 0 for a zero ssd and 1 otherwise (NaN stays NaN), as
        :func:`slidesim.metrics.finish_ssd_normed` has it. The window factor is computed once per mask."""
        bank64 = self.bank[:, t0:t1].to(torch.float64)
        weights = self._mask(t0, t1) ** 2
        energy_t = (weights.to(torch.float64) * bank64 * bank64).sum(dim=(-3, -2, -1))  # [Bk, t]
        template_scale, template_zero = inverse_root(energy_t, None)
        window_scale, window_zero, _ = self.stats.per_mask(
            ("ncc_scale",), lambda: self.stats.ncc_factors(weights, raw.dtype)
        )
        positive_at_zero = (raw > 0) & window_zero if bool(window_zero.any()) else None
        fallback = None
        if bool(template_zero.any()):
            fallback = torch.where(raw.isnan(), raw, (raw > 0).to(raw.dtype))
        raw.mul_(template_scale[..., None, None].to(window_scale.dtype)).mul_(window_scale).clamp_(0.0, 1.0)
        if positive_at_zero is not None:
            raw.masked_fill_(positive_at_zero, 1.0)
        if fallback is not None:
            raw.copy_(torch.where(template_zero[..., None, None], fallback, raw))

    def _finish_in_place(self, raw: torch.Tensor, t0: int, t1: int) -> None:
        stats = self.stats
        template_scale, template_degenerate, window_scale, uncertain = self._factors(t0, t1, raw.dtype)
        unreliable = self.rescorer.unreliable(t0, t1, template_scale, window_scale, uncertain)
        # Template factor first: raw · s_t is about the window's deviation, within range whenever raw is.
        raw.mul_(template_scale[..., None, None].to(window_scale.dtype)).mul_(window_scale).clamp_(-1.0, 1.0)
        # Degenerate scores are 0, which raw · 0 already is, except where raw is NaN: then the window holds NaN or
        # ±inf under a positive weight, and NaN must win over the degenerate rule (as in the reference). So only
        # finite images zero their degenerate templates explicitly (raw could overflow to ±inf in low precision).
        if stats.finite and bool(template_degenerate.any()):
            raw.masked_fill_(template_degenerate[..., None, None], 0.0)
        if unreliable is not None:
            self.rescorer.rescore(raw, t0, unreliable, (template_scale, window_scale, uncertain))
