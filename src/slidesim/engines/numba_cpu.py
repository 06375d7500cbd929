"""The numba engine (floor L4): fused, parallel CPU kernels (:mod:`slidesim.kernels.numba_ops`) for the distance
metrics (sad, mad, l1_similarity, ssd), the exact ssd of ssd_normed and the cross term of the correlation metrics.

ssd_normed's window energies come from the fused one-pass sums of :mod:`slidesim.kernels.area_sums` for finite
images (the tap loops for images with NaN or ±inf, whose running sums would carry them past their windows;
a tap loop per template tap cost 3.6 of the 4.7 ms of an 8² template on 512²). The correlation metrics (ccorr, ncc,
ccoeff, zncc) run their cross term in the product tiles and take their window statistics from the O(H·W) sums of
:mod:`slidesim.kernels.area_sums`, as ``conv`` and ``fft`` do (so NaN holes are filled and marked, and ±inf is
refused). With autograd the cross term runs through torch's conv2d, whose backward torch provides.

numba is optional: without it this engine reports itself unavailable and ``method="auto"`` moves on.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from .._validate import Canonical, Problem, geometry
from ..kernels import numba_ops
from ..kernels.area_sums import AreaSumReductions
from ..kernels.conv import conv_correlate
from ..kernels.taps import TapReductions, block_elements
from ..metrics import DIFFERENCE_METRICS, PRODUCT_METRICS
from . import counts
from .base import ReductionEngine, correlation_ineligible_reason, large_template_reason


class NumbaPrimitives(TapReductions):
    """Tap reductions with the distance reduction replaced by the fused numba kernels."""

    def distance(
        self,
        image: torch.Tensor,
        templates: torch.Tensor,
        weights: torch.Tensor | None,
        power: int,
        periods: tuple[float | None, ...] | None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps w · |image − template|^power -> [B, T, H', W'] (weights [Bm, Tm, Cm, h, w] or None) in the
        templates' dtype; 8- and 16-bit integer images are widened as the kernels copy them into their planes."""
        dtype = image.dtype if image.is_floating_point() else templates.dtype
        templates = templates.to(dtype)
        weights = weights.detach().to(dtype) if weights is not None else None
        if torch.is_grad_enabled() and (image.requires_grad or templates.requires_grad):
            image = image.to(dtype)  # the operator's backward works in one float dtype
            geom = self.geom
            period_list = [p or 0.0 for p in periods] if periods is not None and any(periods) else []
            return torch.ops.slidesim.numba_distance(
                image, templates, weights, period_list, power, list(geom.stride), list(geom.dilation),
                geom.out_height, geom.out_width,
            )  # fmt: skip
        # without autograd the kernels run directly: the dispatcher would add a few µs to small calls
        return numba_ops.distance(image, templates, weights, power, periods, self.geom)


ENERGY_SHARE = 0.5
"""Cost of ssd_normed's fused window energies per pixel, as a share of the correlation metrics' window statistics
(constant ``statistics_pixels``: factors, flat tests). With 0.5 the estimates of uint8 photographs, a screenshot
and a page with 8²-32² templates came within 0.90-1.17 of the measured time, against 0.98-1.83 with 1."""


@dataclass(frozen=True)
class NumbaNormedDistance(NumbaPrimitives, AreaSumReductions):
    """ssd_normed of finite images: the exact distances of the numba kernels, the window energies from the fused
    running sums (unmasked) or the area sums' exact-zero window sums (masked), with their rounding bounds."""


class NumbaCorrelation(AreaSumReductions):
    """The correlation metrics: the cross term in the numba product tiles, window statistics from the fast
    engines' O(H·W) sums (:class:`slidesim.kernels.area_sums.AreaSumReductions`)."""

    def correlate(
        self,
        image: torch.Tensor,
        kernel: torch.Tensor,
        support: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

        ``support`` is not needed: images reach this engine finite (NaN holes filled, ±inf refused), where the
        kernel's zero weights already leave their taps out. With autograd the cross term runs through torch's
        conv2d instead, whose backward torch provides.
        """
        del support
        if torch.is_grad_enabled() and (image.requires_grad or kernel.requires_grad):
            image = image if image.is_floating_point() else image.to(kernel.dtype)
            result = conv_correlate(image, kernel, self.geom, self.unfold_bytes)
        else:
            result = numba_ops.correlate(image, kernel, self.geom)
        return result if out_dtype is None else result.to(out_dtype)


class NumbaEngine(ReductionEngine):
    """Fused numba kernels on the CPU: distance metrics, and correlation metrics of images without ±inf."""

    name = "numba"
    reads_narrow = True  # the tiles' phase planes are the widened copy; the statistics widen as they read

    def unavailable_reason(self) -> str | None:
        """None when numba can be imported, else how to get it."""
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed (pip install 'slidesim[numba]')"
        return None

    def ineligible_reason(self, problem: Problem) -> str | None:
        """CPU tensors only; correlation metrics only on images without ±inf."""
        if not problem.device.startswith("cpu"):
            return f"runs on the CPU only; the tensors are on {problem.device}"
        if problem.metric in DIFFERENCE_METRICS:
            return None
        return correlation_ineligible_reason(problem)

    def auto_excluded_reason(self, problem: Problem) -> str | None:
        """ncc and zncc with large templates are left to the FFT engine (round-off of a tap-by-tap sum)."""
        return large_template_reason(problem, "the product tiles'") if problem.metric in PRODUCT_METRICS else None

    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """The tiles' updates (k < 4 templates per product tile leave it narrower), and the window statistics."""
        del memory_limit
        found = counts.call_counts(problem)
        updates = counts.updates(problem) * counts.width_factor(problem)
        if problem.metric in PRODUCT_METRICS:
            found.update(counts.area_sum_statistics(problem))
            found["product_updates"] = updates
            found["narrow_products"] = updates / min(4, problem.n_templates)
        else:
            found["distance_updates"] = updates
            if _area_sum_energies(problem):
                found.update(counts.area_sum_statistics(problem))
                if "statistics_pixels" in found:  # energies only: about half the correlation metrics' factors
                    found["statistics_pixels"] *= ENERGY_SHARE
            elif counts.normalized(problem):  # ssd_normed's energies by tap loops
                found["statistics_updates"] = counts.window_updates(problem) * 2
        return found

    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """Distances: as the tap loops. Correlations: the area sums' temporaries and the tiles' phase planes."""
        if problem.metric not in PRODUCT_METRICS:
            return counts.tap_loop_bytes(problem, memory_limit)
        return counts.area_sum_bytes(problem, memory_limit) + counts.image_bytes(problem)

    def primitives(self, canon: Canonical, image: torch.Tensor) -> NumbaPrimitives | NumbaCorrelation:
        """Distance tiles (with area-sum energies for ssd_normed of finite images), or product tiles with
        area-sum statistics for the correlation metrics."""
        block = block_elements(canon.memory_limit, canon.out_dtype.itemsize)
        if canon.spec.name in PRODUCT_METRICS:
            return NumbaCorrelation(geometry(canon), block, chunk_bytes=canon.memory_limit // 4)
        if _area_sum_energies(canon.problem):
            return NumbaNormedDistance(geometry(canon), block, chunk_bytes=canon.memory_limit // 4)
        return NumbaPrimitives(geometry(canon), block)


ENGINE = NumbaEngine()


def _area_sum_energies(problem: Problem) -> bool:
    """Whether a distance metric's window energies come from area sums: ssd_normed of finite images, unmasked or
    of integer pixels. Masked energies of fractional pixels stay with the tap loops, whose sums of non-negative
    terms are trusted as they are: the area sums' FFT would leave every dark window to a slower sum of its own
    (astronaut 512² / 255 with a 16² disk: 40 against 12 ms)."""
    if not (counts.normalized(problem) and problem.metric not in PRODUCT_METRICS and problem.finite):
        return False
    return problem.mask_kind == "none" or "float" not in problem.input_dtype
