"""The reference engine: :mod:`slidesim.reference` behind ``method="reference"``."""

from __future__ import annotations

import torch

from .. import reference
from .._validate import Canonical

NAME = "reference"


def unavailable_reason() -> str | None:
    """The reference needs nothing but torch."""
    return None


def ineligible_reason(problem: object) -> str | None:
    """The reference runs every problem (slowly, with memory that grows as output × template size)."""
    del problem
    return None


def run(canon: Canonical) -> torch.Tensor:
    """Float64 brute-force scores."""
    return reference.compute(canon)
