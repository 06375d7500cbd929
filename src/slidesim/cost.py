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
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import engines
from ._cost_constants import CONSTANTS
from ._cost_constants_cuda import CONSTANTS as CUDA_CONSTANTS
from ._validate import DEFAULT_MEMORY_LIMIT, Canonical, Problem, padded_images
from .scoring.driver import precision_work
from .scoring.rescoring import rescoring_costs

_TRANSFORM_WORK = ("image_transform_nlogn", "kernel_transform_nlogn", "spectrum_products")
"""The work counts of a cross term's transforms: a float64 cross term doubles them (half the vector lanes)."""


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


@dataclass(frozen=True)
class PrecisionWork:
    """What exact numerics add to an engine's work on one call's data (ncc and zncc; nothing for the others).

    Attributes:
        cross_in_float64: The cross term runs in float64 from the start (so many windows would need the exact
            rescoring that a float64 transform costs less).
        rescored_windows: About how many windows the exact rescoring scores one by one otherwise.
        seconds: The estimated time this adds to the engine's estimate.
    """

    cross_in_float64: bool
    rescored_windows: int
    seconds: float

    def __str__(self) -> str:
        if self.cross_in_float64:
            return "float64 cross term"
        return f"{self.rescored_windows} windows rescored exactly" if self.rescored_windows else ""


def precision_estimate(engine: str, canon: Canonical) -> PrecisionWork:
    """:func:`precision_estimates` of one engine."""
    return precision_estimates(canon, [engine])[engine]


def precision_estimates(canon: Canonical, names: Sequence[str]) -> dict[str, PrecisionWork]:
    """The data-dependent work of exact numerics for each engine of ``names`` on a validated call, which the
    shapes alone do not tell (see :meth:`slidesim.scoring.correlation.CorrelationScorer.precision_work`). It
    computes the call's window statistics, a pass over the images, once for the engines whose cross terms err
    alike (a transform's round-off spreads over every output, a tap loop's stays in its window). Called by
    :func:`slidesim.plan` and :func:`slidesim.explain`, which have the data; ``method="auto"`` ranks by the shapes
    alone."""
    problem = canon.problem
    if problem.metric not in ("ncc", "zncc") or problem.requires_grad or problem.compute_dtype == "float64":
        return {name: PrecisionWork(False, 0, 0.0) for name in names}
    image = padded_images(canon)
    # the float64 cross term is an FFT correlation whatever the engine: priced as the FFT engine's transforms
    fft_constants = constants_for(problem).get("fft", {})
    counts = features("fft", problem, canon.memory_limit)
    transforms = sum(fft_constants.get(name, 0.0) * counts.get(name, 0.0) for name in _TRANSFORM_WORK)
    taps = problem.channels * problem.template_height * problem.template_width
    outputs = problem.batch * problem.n_templates * problem.out_height * problem.out_width
    probed: dict[bool, tuple[bool, int]] = {}
    costs = rescoring_costs(problem.finite, image)
    found = {}
    for name in names:
        if constants_for(problem).get(name) is None:
            found[name] = PrecisionWork(False, 0, math.nan)
            continue
        prims = engines.load(name).primitives(canon, image)
        if prims.global_cross_error not in probed:
            with torch.no_grad():
                probed[prims.global_cross_error] = precision_work(prims, canon, image)
        cross_in_float64, rescored = probed[prims.global_cross_error]
        if cross_in_float64:  # in place of the compute dtype's: twice the work
            found[name] = PrecisionWork(True, 0, transforms)
        elif rescored * taps > outputs * problem.channels * costs.transform:  # a float64 transform of the cross
            found[name] = PrecisionWork(False, rescored, 2 * transforms)  # term (Rescorer.rescore), then few windows
        else:
            found[name] = PrecisionWork(False, rescored, rescored * taps * costs.tap_seconds)
    return found


def estimate_bytes(engine: str, problem: Problem, memory_limit: int) -> int:
    """Estimated peak temporary memory of ``engine`` beyond the output (bytes)."""
    return engines.load(engine).temporary_bytes(problem, memory_limit)
