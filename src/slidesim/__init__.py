"""slidesim (floor L7): slide templates over images and score every position, exactly and in bounded memory.

Public names only. They load on first use (PEP 562), so ``import slidesim`` stays quick (command-line start-up,
``--help``) and torch is imported by the first call that needs it; nothing optional (numba, OpenCV) is imported
until an engine that uses it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import EngineUnavailableError, SlidesimError, SlidesimTypeError, SlidesimValueError

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str | None]] = {
    "Interval": ("_interval", "Interval"),
    "METRICS": ("metrics", "METRICS"),
    "Matches": ("matching", "Matches"),
    "Peaks": ("peaks", "Peaks"),
    "Plan": ("planner", "Plan"),
    "explain": ("matching", "explain"),
    "find_peaks": ("peaks", "find_peaks"),
    "get_num_threads": ("_threads", "get_num_threads"),
    "interval": ("_interval", "interval"),
    "match": ("matching", "match"),
    "plan": ("planner", "plan"),
    "reference": ("reference", None),
    "rgb_to_hsv": ("color", "rgb_to_hsv"),
    "set_num_threads": ("_threads", "set_num_threads"),
    "similarity": ("_similarity", "similarity"),
    "thread_limit": ("_threads", "thread_limit"),
}

__all__ = [
    "METRICS",
    "EngineUnavailableError",
    "Interval",
    "Matches",
    "Peaks",
    "Plan",
    "SlidesimError",
    "SlidesimTypeError",
    "SlidesimValueError",
    "explain",
    "find_peaks",
    "get_num_threads",
    "interval",
    "match",
    "plan",
    "reference",
    "rgb_to_hsv",
    "set_num_threads",
    "similarity",
    "thread_limit",
]

if TYPE_CHECKING:
    from . import reference
    from ._interval import Interval, interval
    from ._similarity import similarity
    from ._threads import get_num_threads, set_num_threads, thread_limit
    from .color import rgb_to_hsv
    from .matching import Matches, explain, match
    from .metrics import METRICS
    from .peaks import Peaks, find_peaks
    from .planner import Plan, plan


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'slidesim' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
