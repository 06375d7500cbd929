"""What the engines share (floor L4): the reasons that the correlation engines give, and their metric set."""

from __future__ import annotations

from .._validate import Problem
from ..metrics import PRODUCT_METRICS

LARGE_TEMPLATE_TAPS = 4096  # h·w from which a tap-by-tap float32 cross term sends many ncc/zncc windows to float64


def correlation_ineligible_reason(problem: Problem) -> str | None:
    """Reasons shared by the engines that use O(H·W) window statistics (fft, conv, and numba for correlations)."""
    if problem.metric not in PRODUCT_METRICS:
        return f"computes the correlation metrics {', '.join(PRODUCT_METRICS)} only; got {problem.metric!r}"
    if problem.nonfinite == "inf":
        return "the images contain ±inf, which an FFT or a cumulative sum would spread beyond their windows"
    return None


def large_template_reason(problem: Problem, what: str) -> str | None:
    """Why auto leaves ncc and zncc with large templates to the FFT engine, for an engine whose cross term sums
    tap by tap (``what``), or None."""
    taps = problem.template_height * problem.template_width
    if problem.metric in ("ncc", "zncc") and taps >= LARGE_TEMPLATE_TAPS:
        # the round-off of a tap-by-tap sum grows as √n·Σ|K|: on photographs with 64² templates and larger, so
        # many low-contrast windows need the float64 recompute that the FFT engine's error bound spares
        return (
            f"{problem.metric} with {problem.template_height}×{problem.template_width} templates: {what} "
            "round-off would send many windows to a float64 recompute; runs when named"
        )
    return None
