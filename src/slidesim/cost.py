"""Estimated time and peak temporary memory of each engine for a problem (floor L5): the planner's cost model.

An engine's time is a weighted sum of the work counts it reports (:meth:`slidesim.engines.base.Engine.features`:
per-call overhead, template-tap updates, FFT sizes, pixels of window statistics, output values finished), each
count weighted by a throughput constant. The constants are fitted on a reference machine by
``python benchmarks/fit_cost.py``, which writes them with their provenance to :mod:`slidesim._cost_constants`;
re-run it to refit on other hardware. The model only has to rank engines; the sweep in ``benchmarks/sweep.py``
checks how often the engine it ranks first is the fastest.
"""

from __future__ import annotations

import math

from . import engines
from ._cost_constants import CONSTANTS
from ._cost_constants_cuda import CONSTANTS as CUDA_CONSTANTS
from ._validate import DEFAULT_MEMORY_LIMIT, Problem


def features(engine: str, problem: Problem, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> dict[str, float]:
    """The work counts of ``engine`` on ``problem`` that its constants weigh (see :data:`CONSTANTS`)."""
    return engines.load(engine).features(problem, memory_limit)


def constants_for(problem: Problem) -> dict[str, dict[str, float]]:
    """The constants of the problem's device: the CPU table, or the CUDA table for CUDA tensors."""
    return CUDA_CONSTANTS if problem.device.startswith("cuda") else CONSTANTS


def estimate_seconds(engine: str, problem: Problem, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> float:
    """Estimated wall time of ``engine`` on ``problem`` under ``memory_limit`` (seconds)."""
    constants = constants_for(problem).get(engine)
    if constants is None:  # no constants for this engine on this device (Triton's interpreter on the CPU)
        return math.nan
    counts = features(engine, problem, memory_limit)
    return sum(constants.get(name, 0.0) * count for name, count in counts.items())


def estimate_bytes(engine: str, problem: Problem, memory_limit: int) -> int:
    """Estimated peak temporary memory of ``engine`` beyond the output (bytes)."""
    return engines.load(engine).temporary_bytes(problem, memory_limit)
