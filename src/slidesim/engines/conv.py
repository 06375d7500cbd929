"""The conv engine: the cross term of the correlation metrics through torch conv2d with the whole bank as output
channels (grouped per image for per-image banks), so the image is never repeated per template. Large float32
outputs on the CPU are computed in bands of rows (see :func:`slidesim.engines._fast.conv_correlate`).

Window statistics come from :mod:`slidesim.engines._fast`; the cross term of ccoeff and zncc
correlates the centred image with the mean-removed template. Best for small templates and large banks.
"""

from __future__ import annotations

import torch

from .._scoring import geometry, padded_images, score_channels
from .._validate import Canonical, Problem
from ._fast import FastStatistics, conv_correlate, correlation_ineligible_reason
from .direct import block_elements

NAME = "conv"


def unavailable_reason() -> str | None:
    """conv2d ships with torch."""
    return None


def ineligible_reason(problem: Problem) -> str | None:
    """Correlation metrics on finite images."""
    return correlation_ineligible_reason(problem)


_LARGE_TEMPLATE_TAPS = 4096  # h·w from which conv2d's float32 round-off sends many ncc/zncc windows to float64


def auto_excluded_reason(problem: Problem) -> str | None:
    """Why ``method="auto"`` should not pick this engine although it can run the problem, or None."""
    if problem.compute_dtype == "float64" and problem.device.startswith("cpu"):
        return "float64 conv2d on the CPU unfolds every window (im2col): slower than fft or direct; runs when named"
    return large_template_reason(problem, "conv2d's")


def large_template_reason(problem: Problem, what: str) -> str | None:
    """Why auto leaves ncc and zncc with large templates to the FFT engine, for an engine whose cross term sums
    tap by tap (``what``), or None."""
    taps = problem.template_height * problem.template_width
    if problem.metric in ("ncc", "zncc") and taps >= _LARGE_TEMPLATE_TAPS:
        # the round-off of a tap-by-tap sum grows as √n·Σ|K|: on photographs with 64² templates and larger, so
        # many low-contrast windows need the float64 recompute that the FFT engine's error bound spares
        return (
            f"{problem.metric} with {problem.template_height}×{problem.template_width} templates: {what} "
            "round-off would send many windows to a float64 recompute; runs when named"
        )
    return None


class ConvPrimitives(FastStatistics):
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
