"""The conv engine: the cross term of the correlation metrics through torch conv2d with the whole bank as output
channels (grouped per image for per-image banks), so the image is never repeated per template. Large float32
outputs on the CPU are computed in bands of rows (see :func:`slidesim.kernels.conv.conv_correlate`).

Window statistics come from :mod:`slidesim.kernels.area_sums`; the cross term of ccoeff and zncc
correlates the centred image with the mean-removed template. Best for small templates and large banks.
"""

from __future__ import annotations

import torch

from .._validate import Canonical, Problem, geometry, padded_images
from ..kernels.area_sums import AreaSumReductions
from ..kernels.conv import conv_correlate
from ..kernels.taps import block_elements
from ..scoring.score import score_channels
from .base import correlation_ineligible_reason, large_template_reason

NAME = "conv"


def unavailable_reason() -> str | None:
    """conv2d ships with torch."""
    return None


def ineligible_reason(problem: Problem) -> str | None:
    """Correlation metrics on finite images."""
    return correlation_ineligible_reason(problem)



def auto_excluded_reason(problem: Problem) -> str | None:
    """Why ``method="auto"`` should not pick this engine although it can run the problem, or None."""
    if problem.compute_dtype == "float64" and problem.device.startswith("cpu"):
        return "float64 conv2d on the CPU unfolds every window (im2col): slower than fft or direct; runs when named"
    return large_template_reason(problem, "conv2d's")


class ConvPrimitives(AreaSumReductions):
    """Correlations by torch conv2d."""

    def correlate(self, image: torch.Tensor, kernel: torch.Tensor, support: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

        ``support`` is not needed: this engine runs finite images only, where the kernel's zero weights already
        leave those taps out.
        """
        del support
        return conv_correlate(image, kernel, self.geom)


def primitives(canon: Canonical, image: torch.Tensor) -> ConvPrimitives:
    """The engine's sliding reductions for a validated call on its padded images."""
    block = block_elements(canon.memory_limit, image.element_size())
    return ConvPrimitives(geometry(canon), block, chunk_bytes=canon.memory_limit // 4)


def run(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
    image = padded_images(canon)
    return score_channels(primitives(canon, image), canon, image)
