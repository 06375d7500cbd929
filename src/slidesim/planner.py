"""Choosing an engine (floor L5): plan(), explain(), and the selection used by similarity().

``method="auto"`` estimates the time and peak temporary memory of every engine (:mod:`slidesim.cost`), drops those
that are unavailable, ineligible (with their reason: a metric they do not compute, NaN or inf pixels that an FFT or
a cumulative sum would spread, another device) or over ``memory_limit``, and takes the fastest of the rest.
``measure=True`` times the candidates once instead and remembers the winner for that problem. A pinned method that
cannot run raises with the engine's own reason. Nothing falls back silently.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from . import engines
from ._threads import for_calls
from ._validate import Canonical, Problem, canonicalize, with_defaults
from .cost import estimate_bytes, estimate_seconds, precision_estimates
from .engines.base import Engine
from .errors import EngineUnavailableError, SlidesimValueError

__all__ = ["Candidate", "Plan", "explain", "plan"]

_MEASURED: dict[tuple[Problem, int], str] = {}


@dataclass(frozen=True)
class Candidate:
    """One engine considered for a problem.

    Attributes:
        engine: Engine name.
        seconds: Estimated (or, with measure=True, measured) wall time.
        bytes: Estimated peak temporary memory beyond the output.
        excluded: Why the engine cannot run this problem, or None.
        precision: What exact numerics add on the planned call's data, included in ``seconds`` (empty when
            nothing, or when planned from shapes alone).
    """

    engine: str
    seconds: float
    bytes: int
    excluded: str | None = None
    precision: str = ""


@dataclass(frozen=True)
class Plan:
    """The engine chosen for a problem, and every candidate with its estimate or the reason it was excluded."""

    problem: Problem
    method: str
    engine: str
    candidates: tuple[Candidate, ...] = field(default=())
    measured: bool = False

    def __repr__(self) -> str:
        p = self.problem
        templates = f"{p.n_templates} template" + ("s" if p.n_templates != 1 else "")
        lines = [
            f"slidesim plan: {p.metric} of {p.batch}x{p.channels}x{p.height}x{p.width} images against "
            f"{templates} {p.template_height}x{p.template_width} ({p.mode}, stride {p.stride}, "
            f"dilation {p.dilation}, mask {p.mask_kind}, channels {p.channels_mode}, {p.compute_dtype} on {p.device})",
            f"method={self.method!r} -> {self.engine}" + (" (measured)" if self.measured else " (estimated)"),
            f"  {'engine':<10} {'time':>12} {'temporaries':>12}  note",
        ]
        for c in self.candidates:
            note = f"excluded: {c.excluded}" if c.excluded else ""
            if c.engine == self.engine:
                note = "chosen" + (
                    f" although {c.excluded}: no engine fits, its blocks shrink to the limit" if c.excluded else ""
                )
            if c.precision:
                note = f"{note}; {c.precision}" if note else c.precision
            time_text = "—" if c.excluded and c.seconds != c.seconds else f"{c.seconds * 1e3:10.2f} ms"
            lines.append(f"  {c.engine:<10} {time_text:>12} {c.bytes / 2**20:9.1f} MiB  {note}")
        return "\n".join(lines)

    __str__ = __repr__


@functools.lru_cache(maxsize=256)
def _candidates(problem: Problem, memory_limit: int, names: tuple[str, ...]) -> tuple[Candidate, ...]:
    """Every engine of ``names`` with its estimate or exclusion, best first; cached because problems repeat call
    after call (the names are part of the key, so a newly registered engine is seen)."""
    found = []
    for name in names:
        engine = engines.load(name)
        reason = engine.unavailable_reason() or engine.ineligible_reason(problem)
        seconds = estimate_seconds(name, problem, memory_limit)
        need = estimate_bytes(name, problem, memory_limit)
        if reason is None:
            reason = engine.auto_excluded_reason(problem)
        if reason is None and not engine.picked_by_auto:
            reason = f"runs only when named (method={name!r})"
        if reason is None and need > memory_limit:
            reason = f"needs about {need / 2**20:.0f} MiB, over memory_limit {memory_limit / 2**20:.0f} MiB"
        found.append(Candidate(name, seconds, need, reason))
    return tuple(sorted(found, key=_rank))


def _rank(candidate: Candidate) -> tuple[bool, float]:
    """Runnable engines first, fastest first; an engine without an estimate (NaN) last among its group."""
    seconds = candidate.seconds
    return candidate.excluded is not None, math.inf if seconds != seconds else seconds


@for_calls  # timed as calls run
def _measure(canon: Canonical, names: list[str]) -> dict[str, float]:
    times = {}
    for name in names:
        engine = engines.load(name)
        engine.run(canon)  # warm up (compilation, caches)
        start = time.perf_counter()
        engine.run(canon)
        times[name] = time.perf_counter() - start
    return times


def make_plan(canon: Canonical, measure: bool = False) -> Plan:
    """Plan a validated call (see :func:`plan`)."""
    method, problem = canon.method, canon.problem
    if method != "auto" and method not in engines.ENGINES:
        valid = ", ".join(repr(m) for m in ("auto", *engines.ENGINES))
        raise SlidesimValueError(f"`method` must be one of {valid}; got {method!r}.")
    if method != "auto":
        engine = engines.load(method)
        reason = engine.unavailable_reason() or engine.ineligible_reason(problem)
        if reason is not None:
            raise EngineUnavailableError(f"`method`={method!r} cannot run this problem: {method}: {reason}")
        seconds = estimate_seconds(method, problem, canon.memory_limit)
        need = estimate_bytes(method, problem, canon.memory_limit)
        return Plan(problem, method, method, (Candidate(method, seconds, need),))
    candidates = _candidates(problem, canon.memory_limit, engines.ENGINES)
    runnable = [c for c in candidates if c.excluded is None]
    if not runnable:  # every engine is over the memory limit: the direct engine still bounds its temporaries
        runnable = [c for c in candidates if c.engine == "direct"]
    key = (problem, canon.memory_limit)
    if measure or key in _MEASURED:
        if key not in _MEASURED:
            times = _measure(canon, [c.engine for c in runnable])
            _MEASURED[key] = min(times, key=times.__getitem__)
            candidates = sorted(
                (Candidate(c.engine, times.get(c.engine, c.seconds), c.bytes, c.excluded) for c in candidates),
                key=_rank,
            )
        return Plan(problem, method, _MEASURED[key], tuple(candidates), measured=True)
    return Plan(problem, method, runnable[0].engine, tuple(candidates))


def select_engine(canon: Canonical) -> Engine:
    """The engine that runs a validated call."""
    return engines.load(make_plan(canon).engine)


def plan(images: Any, templates: Any, *, measure: bool = False, **options: Any) -> Plan:
    """Plan :func:`slidesim.similarity` without running it.

    Args:
        images: As for :func:`slidesim.similarity`.
        templates: As for :func:`slidesim.similarity`.
        measure: Time every runnable engine once on these inputs, pick the fastest, and remember the choice for
            every later call with the same problem (shapes, dtypes, options).
        **options: The keyword options of :func:`slidesim.similarity` (``channels_last=True`` for [H, W, C] and
            [B, H, W, C] arrays: the plan is that of the channels-first call).

    Returns:
        A :class:`Plan`; ``repr(plan)`` lists every engine with its estimated time and memory, or why it was
        excluded.

    Examples:
        >>> import numpy as np, slidesim
        >>> p = slidesim.plan(np.zeros((64, 64), np.float32), np.ones((8, 8), np.float32), metric="sad")
        >>> p.engine
        'numba'
    """
    canon = canonicalize(images, templates, **with_defaults(options))
    found = make_plan(canon, measure=measure)
    return found if found.measured else _with_precision(found, canon)


def _with_precision(found: Plan, canon: Canonical) -> Plan:
    """The plan with each runnable engine's estimate including what exact numerics cost on these data
    (:func:`slidesim.cost.precision_estimates`: ncc and zncc, whose float64 cross term or exact rescoring of
    near-flat windows the shapes cannot tell). The chosen engine stays the one ``method="auto"`` runs, which
    ranks by the shapes alone."""
    runnable = [c.engine for c in found.candidates if c.excluded is None and c.seconds == c.seconds]
    works = precision_estimates(canon, runnable)
    candidates = []
    for c in found.candidates:
        work = works.get(c.engine)
        if work is not None and work.seconds > 0:
            c = replace(c, seconds=c.seconds + work.seconds, precision=str(work))
        candidates.append(c)
    return replace(found, candidates=tuple(candidates))


def explain(images: Any, templates: Any, **options: Any) -> str:
    """The text of :func:`plan`: which engine runs, what every engine would cost, and why some cannot run."""
    return repr(plan(images, templates, **options))
