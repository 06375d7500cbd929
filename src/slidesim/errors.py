"""Exceptions raised by slidesim (floor L0).

Every error a user can trigger is a :class:`SlidesimError` and also derives from the matching built-in, so both
``except slidesim.SlidesimError`` and ``except ValueError`` work. Messages name the argument in backticks, say what
was expected and what was received, and suggest a fix where there is one.
"""

from __future__ import annotations

__all__ = ["EngineUnavailableError", "SlidesimError", "SlidesimTypeError", "SlidesimValueError"]


class SlidesimError(Exception):
    """Base class of every exception raised by slidesim for bad input or an impossible request."""


class SlidesimValueError(SlidesimError, ValueError):
    """An argument has the right type but an unacceptable value (shape, range, option name)."""


class SlidesimTypeError(SlidesimError, TypeError):
    """An argument has the wrong type or dtype."""


class EngineUnavailableError(SlidesimValueError):
    """A pinned ``method=`` cannot run this problem; the message carries the engine's own reason."""
