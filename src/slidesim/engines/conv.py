"""The conv engine (floor L4): the cross term of the correlation metrics through torch conv2d with the whole bank as
output channels (grouped per image for per-image banks), so the image is never repeated per template. Large float32
outputs on the CPU are computed in bands of rows (see :func:`slidesim.kernels.conv.conv_correlate`).

Window statistics come from :mod:`slidesim.kernels.area_sums`; the cross term of ccoeff and zncc
correlates the centred image with the mean-removed template. Best for small templates and large banks.
"""

from __future__ import annotations

import torch

from .._validate import Canonical, Problem, geometry
from ..kernels.area_sums import AreaSumReductions
from ..kernels.conv import conv_correlate
from ..kernels.taps import block_elements
from . import counts
from .base import ReductionEngine, correlation_ineligible_reason, large_template_reason


class ConvPrimitives(AreaSumReductions):
    """Correlations by torch conv2d."""

    def correlate(
        self,
        image: torch.Tensor,
        kernel: torch.Tensor,
        support: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

        ``support`` is not needed: this engine runs finite images only, where the kernel's zero weights already
        leave those taps out.
        """
        del support
        result = conv_correlate(image, kernel, self.geom, self.unfold_bytes)
        return result if out_dtype is None else result.to(out_dtype)


class ConvEngine(ReductionEngine):
    """Correlations by conv2d, window statistics by area sums: correlation metrics of images without ±inf."""

    name = "conv"

    def ineligible_reason(self, problem: Problem) -> str | None:
        """Correlation metrics on images without ±inf."""
        return correlation_ineligible_reason(problem)

    def auto_excluded_reason(self, problem: Problem) -> str | None:
        """float64 on the CPU (im2col) and ncc / zncc with large templates (round-off) are left to other engines."""
        if problem.compute_dtype == "float64" and problem.device.startswith("cpu"):
            return "float64 conv2d on the CPU unfolds every window (im2col): slower than fft or direct; runs when named"
        return large_template_reason(problem, "conv2d's")

    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """conv2d's updates (unfolded windows in float64), the area-sum statistics and the finish."""
        del memory_limit
        found = {**counts.call_counts(problem), **counts.area_sum_statistics(problem)}
        updates = counts.updates(problem)
        if problem.compute_dtype == "float64":  # torch unfolds windows (im2col) and multiplies matrices
            found["unfolded_updates"] = updates
            found["unfolded_values"] = updates / problem.n_templates  # the im2col copy itself
        else:  # oneDNN: a few output channels leave most of its vector lanes and cache blocking idle
            found["correlate_updates"] = updates
            found["narrow_updates"] = updates / min(64, problem.n_templates)
        return found

    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """The area sums' temporaries, and one reordered copy of the (centred) image that oneDNN makes."""
        return counts.area_sum_bytes(problem, memory_limit) + counts.image_bytes(problem)

    def primitives(self, canon: Canonical, image: torch.Tensor) -> ConvPrimitives:
        """conv2d correlations; masked window sums' spectra within a quarter of ``memory_limit``."""
        block = block_elements(canon.memory_limit, image.element_size())
        return ConvPrimitives(geometry(canon), block, chunk_bytes=canon.memory_limit // 4)


ENGINE = ConvEngine()
