"""The reference engine (floor L4): :mod:`slidesim.reference` behind ``method="reference"``."""

from __future__ import annotations

import torch

from .. import reference
from .._validate import Canonical, Problem
from . import counts
from .base import BankSource, Chunks, Engine, whole_calls


class ReferenceEngine(Engine):
    """Float64 brute force over materialized windows: every problem, slowly; only when named."""

    name = "reference"
    picked_by_auto = False

    def auto_excluded_reason(self, problem: Problem) -> str | None:
        """The oracle is for tests and checks: ``auto`` never picks it."""
        del problem
        return "the float64 oracle runs only when asked for by name"

    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """Every window value, materialized in float64."""
        del memory_limit
        return {**counts.call_counts(problem), "window_values": counts.updates(problem)}

    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """The windows of one template in float64, and a temporary of their size."""
        del memory_limit
        out_plane = problem.batch * problem.out_height * problem.out_width
        taps = problem.template_height * problem.template_width
        return out_plane * problem.n_templates * problem.channels * taps * 8 * 2

    def run(self, canon: Canonical) -> torch.Tensor:
        """Float64 brute-force scores."""
        return reference.compute(canon)

    def stream(self, canon: Canonical, chunk: int, source: BankSource | None = None) -> Chunks:
        """Whole calls on chunks of the bank (see :meth:`Engine.stream`)."""
        return whole_calls(self, canon, chunk, source)


ENGINE = ReferenceEngine()
