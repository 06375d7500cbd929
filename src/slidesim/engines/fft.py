"""The FFT engine: the cross term of the correlation metrics through torch.fft.

The image spectrum is computed once per call and reused for every template of the bank; channels are summed in
the frequency domain, so one inverse transform yields each template's map. Transform sizes are products of 2, 3,
5 and 7; overlap-save tiles take the whole transform's place on large images (faster: their temporaries stay in
cache) and when the whole spectrum would not fit ``memory_limit`` (:mod:`slidesim.kernels.spectral`). Window
statistics come from :mod:`slidesim.kernels.area_sums`; the cross term of ccoeff and zncc correlates the centred image
with the mean-removed template, which keeps the float32 transform's round-off small against the window's own
variation. Best for single templates and large ones.
"""

from __future__ import annotations

import torch

from .._validate import Canonical, Problem, geometry, padded_images
from ..kernels.area_sums import AreaSumReductions
from ..kernels.spectral import fft_correlate
from ..kernels.taps import block_elements
from ..scoring.score import score_channels
from .base import correlation_ineligible_reason

NAME = "fft"


def unavailable_reason() -> str | None:
    """torch.fft ships with torch."""
    return None


def ineligible_reason(problem: Problem) -> str | None:
    """Correlation metrics on finite images."""
    return correlation_ineligible_reason(problem)


class FFTPrimitives(AreaSumReductions):
    """Correlations by FFT, the image spectrum shared by every template."""

    global_cross_error = True  # round-off spreads over every output: ε·‖I‖₂·‖K‖₂, not per window

    def correlate(self, image: torch.Tensor, kernel: torch.Tensor, support: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_c Σ_taps kernel · image. image [B, C, Hp, Wp], kernel [Bk, T, C, h, w] -> [B, T, H', W'].

        ``support`` is not needed: this engine runs finite images only, where the kernel's zero weights already
        leave those taps out.
        """
        del support
        return fft_correlate(image, kernel, self.geom, self.chunk_bytes, spectra=self.spectra)


def primitives(canon: Canonical, image: torch.Tensor) -> FFTPrimitives:
    """The engine's sliding reductions for a validated call on its padded images."""
    block = block_elements(canon.memory_limit, image.element_size())
    return FFTPrimitives(geometry(canon), block, chunk_bytes=canon.memory_limit // 4)


def run(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
    image = padded_images(canon)
    return score_channels(primitives(canon, image), canon, image)
