"""The engine contract (floor L4): what every engine says about itself, what its work costs, and how it scores.

An engine is a module of :mod:`slidesim.engines` with an instance ``ENGINE`` of an :class:`Engine` subclass. The
planner asks each engine whether it can run a problem (:meth:`Engine.unavailable_reason`,
:meth:`Engine.ineligible_reason`, :meth:`Engine.auto_excluded_reason`), what the work would be
(:meth:`Engine.features`, weighed by the fitted constants of :mod:`slidesim._cost_constants`) and how much
temporary memory it would take (:meth:`Engine.temporary_bytes`). Engines built from sliding reductions
(:class:`ReductionEngine`, every engine but the reference) only supply their :meth:`~ReductionEngine.primitives`:
the shared scoring code of :mod:`slidesim.scoring` turns them into every metric, whole or a chunk of the bank at
a time.

Adding an engine is one module here with its ``ENGINE``, one line in the registry of :mod:`slidesim.engines`, and
its constants in :mod:`slidesim._cost_constants` (``python benchmarks/fit_cost.py`` fits them); the engine then
joins the planner and every engine × metric test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import torch

from .._validate import Canonical, Problem, padded_images, with_bank
from ..metrics import PRODUCT_METRICS
from ..scoring.driver import BankSource, score_channels, score_stream
from ..scoring.primitives import Primitives

Chunks = Iterator[tuple[int, int, torch.Tensor]]
"""(t0, t1, scores [B, t1 − t0, H', W']) for consecutive chunks of a bank."""


class Engine(ABC):
    """One way of computing scores.

    Attributes:
        name: The value of ``method=`` that selects the engine.
        picked_by_auto: Whether ``method="auto"`` may choose it (the reference runs only when named).
    """

    name: ClassVar[str]
    picked_by_auto: ClassVar[bool] = True

    def unavailable_reason(self) -> str | None:
        """Why the engine cannot run at all here (a missing optional dependency), or None."""
        return None

    def ineligible_reason(self, problem: Problem) -> str | None:
        """Why the engine cannot run ``problem`` (a metric, device or pixel values it does not handle), or None."""
        del problem
        return None

    def auto_excluded_reason(self, problem: Problem) -> str | None:
        """Why ``method="auto"`` should not pick the engine although it can run ``problem``, or None."""
        del problem
        return None

    @abstractmethod
    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """The work counts of ``problem`` that the engine's cost constants weigh (one entry per constant)."""

    @abstractmethod
    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """Estimated peak temporary memory of ``problem`` beyond the output (bytes)."""

    @abstractmethod
    def run(self, canon: Canonical) -> torch.Tensor:
        """Scores of a validated call: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""

    @abstractmethod
    def stream(self, canon: Canonical, chunk: int, source: BankSource | None = None) -> Chunks:
        """Joint (or channel-mean) scores of the bank ``chunk`` templates at a time, in bounded memory.

        With ``source`` the bank is drawn from it a chunk at a time (templates of the size and channels of
        ``canon``'s, whose own bank then only sets the geometry): the whole bank streams through one call.
        """


class ReductionEngine(Engine):
    """An engine that supplies sliding reductions; the shared scoring code does the rest.

    Attributes:
        reads_narrow: Whether the engine's reductions read 8- and 16-bit integer images as they are stored
            (converting a tile or plane at a time), so that a call without padding makes no float copy of them.
    """

    reads_narrow: ClassVar[bool] = False

    @abstractmethod
    def primitives(self, canon: Canonical, image: torch.Tensor) -> Primitives:
        """The engine's sliding reductions for a validated call on its padded images [B, C, Hp, Wp]."""

    def run(self, canon: Canonical) -> torch.Tensor:
        """Scores of a validated call: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
        image = padded_images(canon, narrow=self.reads_narrow)
        return score_channels(self.primitives(canon, image), canon, image)

    def stream(self, canon: Canonical, chunk: int, source: BankSource | None = None) -> Chunks:
        """Joint scores stream with the image side computed once; channel means run whole calls on chunks."""
        if canon.channels_mode != "joint":
            yield from whole_calls(self, canon, chunk, source)
            return
        image = padded_images(canon, narrow=self.reads_narrow)
        yield from score_stream(self.primitives(canon, image), canon, image, chunk, source)


def whole_calls(engine: Engine, canon: Canonical, chunk: int, source: BankSource | None = None) -> Chunks:
    """Scores of the bank (``canon``'s, or drawn from ``source``) ``chunk`` templates at a time, each chunk a
    whole call of its own."""
    T = canon.templates.shape[1] if source is None else source.members
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        if source is not None:
            yield t0, t1, engine.run(with_bank(canon, *source.draw(t0, t1)))
            continue
        mask = canon.mask
        if mask is not None and mask.shape[1] > 1:
            mask = mask[:, t0:t1]
        yield t0, t1, engine.run(with_bank(canon, canon.templates[:, t0:t1], mask))


LARGE_TEMPLATE_TAPS = 4096  # h·w from which a tap-by-tap float32 cross term sends many ncc/zncc windows to float64


def correlation_ineligible_reason(problem: Problem) -> str | None:
    """Reasons shared by the engines that use O(H·W) window statistics (fft, conv, and numba for correlations)."""
    if problem.metric not in PRODUCT_METRICS:
        return f"computes the correlation metrics {', '.join(PRODUCT_METRICS)} only; got {problem.metric!r}"
    if problem.nonfinite == "inf":
        return "the images contain ±inf, which an FFT or a cumulative sum would spread beyond their windows"
    return None


def large_template_reason(problem: Problem, what: str) -> str | None:
    """Why auto leaves ncc and zncc with large templates to the FFT engine, for an engine whose cross term sums
    tap by tap (``what``), or None."""
    taps = problem.template_height * problem.template_width
    if problem.metric in ("ncc", "zncc") and taps >= LARGE_TEMPLATE_TAPS:
        # the round-off of a tap-by-tap sum grows as √n·Σ|K|: on photographs with 64² templates and larger, so
        # many low-contrast windows need the float64 recompute that the FFT engine's error bound spares
        return (
            f"{problem.metric} with {problem.template_height}×{problem.template_width} templates: {what} "
            "round-off would send many windows to a float64 recompute; runs when named"
        )
    return None
