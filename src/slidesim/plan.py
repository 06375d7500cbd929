"""Choosing an engine for a problem.

``method="auto"`` takes the first engine of :data:`slidesim.engines.AUTO_ORDER` that is available and eligible; a
pinned method that cannot run raises with the engine's own reason. Nothing falls back silently.
"""

from __future__ import annotations

from types import ModuleType

from . import engines
from ._validate import Problem
from .errors import EngineUnavailableError, SlidesimValueError


def select_engine(method: str, problem: Problem) -> ModuleType:
    """Return the engine module that will run ``problem``.

    Args:
        method: "auto" or a name from :data:`slidesim.engines.ENGINES`.
        problem: The validated problem.

    Raises:
        SlidesimValueError: Unknown method (the message lists the valid ones).
        EngineUnavailableError: A pinned engine cannot run the problem, with its reason.
    """
    if method != "auto" and method not in engines.ENGINES:
        valid = ", ".join(repr(m) for m in ("auto", *engines.ENGINES))
        raise SlidesimValueError(f"`method` must be one of {valid}; got {method!r}.")
    names = engines.AUTO_ORDER if method == "auto" else (method,)
    reasons = []
    for name in names:
        engine = engines.load(name)
        reason = engine.unavailable_reason() or engine.ineligible_reason(problem)
        if reason is None:
            return engine
        reasons.append(f"{name}: {reason}")
    raise EngineUnavailableError(f"`method`={method!r} cannot run this problem: " + "; ".join(reasons))
