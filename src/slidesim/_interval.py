"""Continuous ranges of angles and scales, and the pose grids that sample them (floor L0).

``slidesim.interval(start, stop)`` is a value: it says which poses are allowed, not how finely to try them. The
search picks the step from the template's size (:func:`angle_step`, :func:`scale_step`): about the turn, or the
change of scale, that moves the template's farthest pixel from its centre by one pixel. Plain math only: no
tensors.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import SlidesimTypeError, SlidesimValueError

__all__ = ["Interval", "angle_step", "check_range", "interval", "interval_values", "is_full_circle", "scale_step"]

FULL_CIRCLE = 360.0


@dataclass(frozen=True)
class Interval:
    """A continuous range [start, stop] of rotations (degrees) or scale factors; made by :func:`interval`.

    Attributes:
        start: The low end (included).
        stop: The high end (included; a rotation range of 360° or more is the whole circle).
    """

    start: float
    stop: float

    def __repr__(self) -> str:
        return f"interval({self.start:g}, {self.stop:g})"

    @property
    def span(self) -> float:
        return self.stop - self.start


def interval(start: float, stop: float) -> Interval:
    """A continuous range for ``rotations`` or ``scales`` of :func:`slidesim.match`, sampled on a step that the
    search chooses from the template's size (a plain sequence of values keeps its meaning: exactly those values).

    Args:
        start: Low end: degrees for rotations, a factor for scales.
        stop: High end, above ``start``. ``interval(0, 360)`` is every angle.

    Returns:
        A frozen :class:`Interval`.

    Raises:
        SlidesimTypeError: ``start`` or ``stop`` is not a real number.
        SlidesimValueError: Either is not finite, or ``stop`` is not above ``start``.

    Examples:
        >>> import slidesim
        >>> slidesim.interval(0, 360)
        interval(0, 360)
        >>> round(slidesim.interval(0.8, 1.25).span, 6)
        0.45
    """
    values = []
    for name, value in (("start", start), ("stop", stop)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise SlidesimTypeError(
                f"`{name}` of an interval must be a real number; got {value!r} ({type(value).__name__}). "
                "Pass numbers, for example slidesim.interval(0, 360)."
            )
        if not math.isfinite(value):
            raise SlidesimValueError(f"`{name}` of an interval must be finite; got {value!r}.")
        values.append(float(value))
    low, high = values
    if not high > low:
        raise SlidesimValueError(
            f"`stop` of an interval must be above `start`; got interval({low:g}, {high:g}). Swap them, or pass a "
            f"sequence such as [{low:g}] for one value."
        )
    return Interval(low, high)


def check_range(name: str, value: Interval, positive: bool) -> Interval:
    """``value`` as the ``rotations`` (``positive`` False) or ``scales`` (True) range of a search.

    Raises:
        SlidesimValueError: A scale range that reaches zero or below.
    """
    if positive and value.start <= 0:
        raise SlidesimValueError(
            f"`{name}` must be a range of positive factors; got {value!r}. Start it above 0, for example "
            "slidesim.interval(0.8, 1.25)."
        )
    return value


def _radius(h: int, w: int, scale: float) -> float:
    """Distance in pixels from the template's centre to its farthest corner pixel at ``scale`` (at least 1)."""
    return max(1.0, 0.5 * math.hypot(h - 1, w - 1) * scale)


def angle_step(h: int, w: int, scale: float) -> float:
    """Degrees of turn that move the farthest pixel of an h × w template at ``scale`` by one pixel."""
    return math.degrees(1.0 / _radius(h, w, scale))


def scale_step(h: int, w: int, scale: float) -> float:
    """Change of log(scale) that moves the farthest pixel of an h × w template at ``scale`` by one pixel."""
    return 1.0 / _radius(h, w, scale)


def is_full_circle(angles: Interval) -> bool:
    """Whether a rotation range covers every angle."""
    return angles.span >= FULL_CIRCLE - 1e-9


def interval_values(value: Interval, step: float, rotations: bool) -> list[float]:
    """The grid that samples ``value`` no coarser than ``step``: degrees for ``rotations`` (evenly spaced; a full
    circle without repeating its start at 360°), log-spaced factors for scales (``step`` in log units). Both ends
    are on it (but 360°)."""
    if rotations:
        if is_full_circle(value):
            n = max(1, math.ceil(FULL_CIRCLE / step - 1e-9))
            return [value.start + FULL_CIRCLE * i / n for i in range(n)]
        n = max(1, math.ceil(value.span / step - 1e-9))
        return [value.start + value.span * i / n for i in range(n + 1)]
    span = math.log(value.stop / value.start)
    n = max(1, math.ceil(span / step - 1e-9))
    return [value.start * math.exp(span * i / n) for i in range(n + 1)]
