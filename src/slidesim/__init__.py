"""slidesim: slide templates over images and score every position, exactly and in bounded memory.

Public names only; importing slidesim loads torch and numpy and nothing optional.
"""

from __future__ import annotations

from . import reference
from .color import rgb_to_hsv
from .errors import EngineUnavailableError, SlidesimError, SlidesimTypeError, SlidesimValueError
from .metrics import METRICS
from .planner import Plan, explain, plan
from .similarity import similarity

__version__ = "0.1.0"

__all__ = [
    "METRICS",
    "EngineUnavailableError",
    "Plan",
    "SlidesimError",
    "SlidesimTypeError",
    "SlidesimValueError",
    "explain",
    "plan",
    "reference",
    "rgb_to_hsv",
    "similarity",
]
