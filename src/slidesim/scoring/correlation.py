"""The correlation metrics from the engine's reductions (floor L3): the raw reduction of a chunk of templates and
its finish into ccorr, ncc, ccoeff, zncc or ssd_normed.

Numerics:
    * The cross term of ccoeff / zncc correlates the centred image with the mean-removed template in the compute
      dtype (float32 or float64); ccorr / ncc correlate the raw image.
    * ssd_normed uses the exact sliding Σ W (I − T)², never ΣI² − 2ΣIT + ΣT².
    * Per-template constants are float64; window statistics come from :mod:`slidesim.scoring.statistics`, and
      windows that round-off could spoil are scored exactly (:mod:`slidesim.scoring.rescoring`).
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
        image: Padded images [B, C, Hp, Wp].
        bank: Templates [Bk, T, C, h, w].
        mask: Weights [Bm, Tm, Cm, h, w], or None.
        finite: Whether every image pixel is finite.
        edge: Where the images lie in their padded planes (default: no padding).
        keep_planes: Keep derived image planes for later chunks of a streamed bank.
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
    ) -> None:
        self.prims, self.spec, self.bank = prims, spec, bank
        centre = spec.name in ("ccoeff", "zncc")
        self.stats = WindowStatistics(prims, image, mask, centre, finite, edge, keep_planes)
        self.rescorer = Rescorer(self.stats, spec, bank)

    def load(self, bank: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Score another chunk of a streamed bank from now on: templates [Bk, t, C, h, w], weights
        [Bm, t or 1, Cm, h, w] or None (as at construction). The image side is kept."""
        self.bank = self.rescorer.bank = bank
        self.stats.use_mask(mask)

    def _mask(self, t0: int, t1: int) -> torch.Tensor:
        return self.stats.mask if self.stats.shared else self.stats.mask[:, t0:t1]

    def raw(self, t0: int, t1: int) -> torch.Tensor:
        """The sliding reduction of templates t0:t1 -> [B, t1 − t0, H', W'] in the compute dtype.

        ccorr and ncc: Σ W I T; ssd_normed: the exact Σ W (I − T)²; ccoeff and zncc: ccoeff.
        """
        stats = self.stats
        bank, mask = self.bank[:, t0:t1], self._mask(t0, t1)
        name, weights = self.spec.name, mask * mask
        support = mask > 0 if stats.masked else None  # a zero weight takes its tap out of the window, NaN and all
        if name in ("ccorr", "ncc"):
            return self.prims.correlate(stats.image, bank * weights if stats.masked else bank, support)
        if name == "ssd_normed":  # unmasked: no weights, so the distance kernels take their unweighted path
            return self.prims.distance(stats.image, bank, weights if stats.masked else None, 2, None)
        kernel, _ = centred_kernel(bank.to(torch.float64), mask.to(torch.float64))
        return self._centred_correlate(kernel.to(stats.image.dtype), support)

    def _centred_correlate(self, kernel: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """correlate(image − shift, kernel), centring a few channels at a time so no full copy of the image exists."""
        stats = self.stats
        C = stats.image.shape[1]
        per_channel = stats.image[:, :1].numel() * stats.image.element_size()
        group = max(1, CENTRING_BYTES // max(1, per_channel))
        if group >= C:
            return self.prims.correlate(stats.plane(("centred", 0, C), lambda: stats.centred(0, C)), kernel, support)
        total = None
        for c0 in range(0, C, group):
            centred = stats.plane(("centred", c0, c0 + group), lambda c0=c0: stats.centred(c0, c0 + group))
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
        temporaries. Otherwise (and for ssd_normed) the differentiable float64 formulas of
        :mod:`slidesim.metrics` run.
        """
        if in_place and self.spec.name != "ssd_normed":
            self._finish_in_place(raw, t0, t1)
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

    def _finish_in_place(self, raw: torch.Tensor, t0: int, t1: int) -> None:
        stats = self.stats
        bank64 = self.bank[:, t0:t1].to(torch.float64)
        mask = self._mask(t0, t1)
        weights = mask * mask
        w64 = weights.to(torch.float64)
        if self.spec.name == "ncc":
            template_energy = (w64 * bank64 * bank64).sum(dim=(-3, -2, -1))
            template_scale, template_degenerate = inverse_root(template_energy, None)
            window_scale, _, uncertain = stats.per_mask(
                ("ncc_scale",), lambda: stats.ncc_factors(weights, raw.dtype)
            )
        else:
            _, t_centred = centred_kernel(bank64, mask.to(torch.float64))
            template_var = (w64 * t_centred * t_centred).sum(dim=(-3, -2, -1))
            template_scale, template_degenerate = inverse_root(template_var, flat_templates(bank64, mask))
            window_scale, _, uncertain = stats.per_mask(
                ("zncc_scale",), lambda: stats.zncc_factors(mask, weights, raw.dtype)
            )
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
