"""The direct engine (floor L4): exact tap loops (:mod:`slidesim.kernels.taps`) for every metric, on any device, in
bounded memory."""

from __future__ import annotations

import math

import torch

from .._validate import Canonical, Problem, geometry
from ..kernels.taps import TapReductions, block_elements
from ..metrics import DIFFERENCE_METRICS
from . import counts
from .base import ReductionEngine


class DirectEngine(ReductionEngine):
    """Tap loops: every problem, every device."""

    name = "direct"

    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """Updates of the tap loops, one Python-level step per tap and output block, and the window sums."""
        del memory_limit
        found = counts.call_counts(problem)
        kind = "distance_updates" if problem.metric in DIFFERENCE_METRICS else "correlate_updates"
        found[kind] = counts.updates(problem) * counts.width_factor(problem)
        # one Python-level step per template tap and output block of about a million values
        blocks = math.ceil(counts.outputs(problem) / 2**20)
        found["tap_loops"] = float(problem.channels * problem.template_height * problem.template_width * blocks)
        if counts.normalized(problem):
            found["statistics_updates"] = 3 * counts.window_updates(problem) * 2
        return found

    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """The padded image, statistics planes and a few output blocks."""
        return counts.tap_loop_bytes(problem, memory_limit)

    def primitives(self, canon: Canonical, image: torch.Tensor) -> TapReductions:
        """Tap loops in output blocks bounded by ``memory_limit``."""
        return TapReductions(geometry(canon), block_elements(canon.memory_limit, image.element_size()))


ENGINE = DirectEngine()
