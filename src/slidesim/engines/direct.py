"""The direct engine: exact tap loops (:mod:`slidesim.kernels.taps`) for every metric, on any device, in bounded
memory."""

from __future__ import annotations

import torch

from .._validate import Canonical, geometry, padded_images
from ..kernels.taps import TapReductions, block_elements
from ..scoring.score import score_channels

NAME = "direct"


def unavailable_reason() -> str | None:
    """The direct engine needs nothing but torch."""
    return None


def ineligible_reason(problem: object) -> str | None:
    """The direct engine runs every problem."""
    del problem
    return None


def primitives(canon: Canonical, image: torch.Tensor) -> TapReductions:
    """The engine's sliding reductions for a validated call on its padded images."""
    return TapReductions(geometry(canon), block_elements(canon.memory_limit, image.element_size()))


def run(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
    image = padded_images(canon)
    return score_channels(primitives(canon, image), canon, image)
