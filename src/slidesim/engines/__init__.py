"""Engine registry: every engine is a module with NAME, unavailable_reason(), ineligible_reason(problem), run(canon)
and, except the reference, primitives(canon, image): its sliding reductions, which banks stream through.

Engines are imported lazily by name so that an optional dependency of one engine never loads with slidesim.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES: dict[str, str] = {
    "direct": "direct",
    "numba": "numba_cpu",
    "triton": "triton_gpu",
    "conv": "conv",
    "fft": "fft",
    "reference": "reference",
}

ENGINES: tuple[str, ...] = tuple(_MODULES)
"""Every engine that ``method=`` accepts besides "auto"."""

AUTO_ORDER: tuple[str, ...] = ("numba", "triton", "conv", "fft", "direct")
"""Engines that ``method="auto"`` may pick; the planner ranks them by estimated time under ``memory_limit``."""


def load(name: str) -> ModuleType:
    """Import the module of a registered engine."""
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")
