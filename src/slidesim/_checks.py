"""Checkers of single user arguments (floor L1), shared by every public operation.

Each checker names the argument, says what was expected and what came, and raises a
:class:`~slidesim.errors.SlidesimTypeError` or :class:`~slidesim.errors.SlidesimValueError` (also TypeError and
ValueError).

Examples:
    >>> check_int("k", 3, 1)
    3
    >>> check_factors("scales", [0.5, 1], positive=True)
    [0.5, 1.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .errors import SlidesimTypeError, SlidesimValueError


def check_int(name: str, value: object, low: int) -> int:
    """``value`` as an int of at least ``low`` (bools are not ints here)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise SlidesimTypeError(f"`{name}` must be an int; got {value!r}.")
    if int(value) < low:
        raise SlidesimValueError(f"`{name}` must be >= {low}; got {value!r}.")
    return int(value)


def check_threshold(threshold: object) -> float | None:
    """A score threshold: a real number that is not NaN, or None."""
    if threshold is None:
        return None
    if not isinstance(threshold, numbers.Real) or isinstance(threshold, bool) or threshold != threshold:
        raise SlidesimTypeError(f"`threshold` must be a real number or None; got {threshold!r}.")
    return float(threshold)


def check_factors(name: str, values: object, positive: bool) -> list[float] | None:
    """A non-empty sequence of finite numbers (positive ones when ``positive``) as floats, or None."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
        raise SlidesimTypeError(f"`{name}` must be a sequence of numbers or None; got {type(values).__name__}.")
    numbers_ = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    if not numbers_:
        raise SlidesimValueError(f"`{name}` must hold at least one value; got an empty sequence.")
    bad = [v for v in numbers_ if not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        expected = "positive finite factors" if positive else "finite angles in degrees"
        raise SlidesimValueError(f"`{name}` must hold {expected}; got {bad[0]!r}.")
    return numbers_
