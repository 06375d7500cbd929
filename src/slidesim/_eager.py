"""One call outside a compiled region (floor L6): validate, plan, run the chosen engine, convert the result."""

from __future__ import annotations

from typing import Any

from ._checks import check_has_values
from ._threads import for_calls
from ._types import ArrayLike
from ._validate import canonicalize, finalize
from .planner import select_engine


@for_calls  # the call's thread count for torch and numba (see slidesim._threads)
def run_eager(images: ArrayLike, templates: ArrayLike, **options: Any) -> ArrayLike:
    """Validate, plan and run one call (every keyword option of :func:`slidesim.similarity`, none defaulted)."""
    canon = canonicalize(images, templates, **options)
    check_has_values(images=images, templates=templates)  # canonicalize plans shapes; scoring needs values
    engine = select_engine(canon)
    return finalize(engine.run(canon), canon, canon.out_dtype)
