"""The engines (floor L4) and their registry: every value of ``method=`` but "auto".

Each engine is a module holding ``ENGINE``, an instance of :class:`slidesim.engines.base.Engine` (the contract).
Engines load lazily by name, so that the optional dependency of one engine (numba, triton) never loads with
slidesim or with another engine. An engine outside this package joins with :func:`register`.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Engine

_MODULES: dict[str, str] = {  # engine name -> the absolute name of its module
    "direct": f"{__name__}.direct",
    "numba": f"{__name__}.numba_cpu",
    "triton": f"{__name__}.triton_gpu",
    "conv": f"{__name__}.conv",
    "fft": f"{__name__}.fft",
    "reference": f"{__name__}.reference",
}

_BUILT_IN = frozenset(_MODULES)

ENGINES: tuple[str, ...] = tuple(_MODULES)
"""Every engine that ``method=`` accepts besides "auto"."""


def load(name: str) -> Engine:
    """The registered engine called ``name`` (its module is imported on first use)."""
    return _load(_MODULES[name])


@functools.cache  # an import statement per call costs microseconds that small calls notice
def _load(module: str) -> Engine:
    return importlib.import_module(module).ENGINE


def register(name: str, module: str) -> None:
    """Make the engine ``ENGINE`` of ``module`` (an absolute module name) available as ``method=name``.

    Registering an existing name replaces that engine; the planner considers the new one from the next call.
    """
    global ENGINES
    _MODULES[name] = module
    ENGINES = tuple(_MODULES)


def unregister(name: str) -> None:
    """Remove an engine added by :func:`register` (the built-in ones cannot be removed)."""
    global ENGINES
    if name in _BUILT_IN:
        raise ValueError(f"the built-in engine {name!r} cannot be unregistered")
    _MODULES.pop(name, None)
    ENGINES = tuple(_MODULES)


def auto_engines() -> tuple[str, ...]:
    """The engines that ``method="auto"`` may pick; the planner ranks them by estimated time."""
    return tuple(name for name in ENGINES if load(name).picked_by_auto)
