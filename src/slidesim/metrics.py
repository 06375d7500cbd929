"""One specification per metric (floor L0): its reduction, direction, aliases and the elementwise finish.

Every grouping of metrics that engines and the cost model use (:data:`DIFFERENCE_METRICS`,
:data:`PRODUCT_METRICS`, :data:`NORMALIZED_METRICS`, :attr:`MetricSpec.family`) is derived from the one table
:data:`METRICS`.

Notation (per template, per window; sums run over channels and template taps, weighted by the mask M, with
W = M², n = Σ M, and OpenCV's convention of applying the mask to both the template and the window):

====================  ==========================================================  ===================================
metric                score                                                       degenerate windows / templates
====================  ==========================================================  ===================================
``sad``               Σ M·|I − T|                                                 always finite
``mad``               sad / n                                                     always finite
``l1_similarity``     1 − mad                                                     always finite
``ssd``               Σ W·(I − T)²            (OpenCV TM_SQDIFF)                  always finite
``ssd_normed``        min(ssd / √(Σ W T² · Σ W I²), 1)   (TM_SQDIFF_NORMED)       0 if ssd = 0, else 1 if √(...) = 0
``ccorr``             Σ W·I·T                 (TM_CCORR)                          always finite
``ncc``               ccorr / √(Σ W T² · Σ W I²), clipped to [−1, 1]  (TM_CCORR_NORMED)  0 if either energy is 0
``ccoeff``            Σ W·(T − m_T)(I − m_I), m per channel, M-weighted  (TM_CCOEFF)    always finite
``zncc``              ccoeff / √(Σ W (T − m_T)² · Σ W (I − m_I)²), in [−1, 1]  (TM_CCOEFF_NORMED)  0 if the
                                                                                  window or the template is flat
====================  ==========================================================  ===================================

A window (or template) is *flat* when, in every channel with non-zero mask weight, all of its values under the mask
are equal. Taps of zero weight are outside the window: their pixels and template values, even NaN or inf, do not
enter any sum. Without a mask every tap counts, so a NaN pixel under a template value of 0 still gives NaN.
"Always finite" assumes finite inputs; a window with a NaN under a positive weight scores NaN in every metric.
An inf pixel under a positive weight gives what the formula gives for the distances and ccorr (±inf, or NaN where
infinities cancel) and NaN for ccoeff, whose window mean m_I is then infinite, and for the normalized metrics.
Missing data outranks the degenerate rules: such a window scores NaN even against a flat or all-zero template
(zncc, ncc, ssd_normed), so a hole in the data is never reported as a 0 or 1.
The distance metrics accept circular channels: for a channel with period p the difference d is replaced by the
signed shortest way round, ((d + p/2) mod p) − p/2.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import SlidesimTypeError, SlidesimValueError

__all__ = ["METRICS", "MetricSpec", "resolve_metric"]

Reduction = Literal["difference", "product"]


@dataclass(frozen=True)
class MetricSpec:
    """What the engines need to know about one metric.

    Attributes:
        name: Canonical lowercase name.
        reduction: ``"difference"`` for metrics whose sliding reduction is Σ w·|I − T|^power (a fused reduction
            that no correlation expresses exactly), ``"product"`` for those built from the cross term Σ W·I·T.
        normalized: Whether the score divides by window statistics (energies or variances).
        higher_is_better: True for similarities, False for distances (sad, mad, ssd, ssd_normed).
        circular_ok: Whether ``circular=`` channels are meaningful for the metric.
        power: For difference reductions, 1 (absolute) or 2 (squared); 0 for products.
        opencv: Name of the OpenCV method with the same numbers, if any.
    """

    name: str
    reduction: Reduction
    normalized: bool
    higher_is_better: bool
    circular_ok: bool
    power: int
    opencv: str | None = None

    @property
    def family(self) -> Literal["distance", "correlation"]:
        """``"distance"``: scored from the difference reduction and the weight total alone; ``"correlation"``:
        scored from a reduction and window statistics (every product metric, and ssd_normed)."""
        return "distance" if self.reduction == "difference" and not self.normalized else "correlation"


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("sad", "difference", False, False, True, 1),
        MetricSpec("mad", "difference", False, False, True, 1),
        MetricSpec("l1_similarity", "difference", False, True, True, 1),
        MetricSpec("ssd", "difference", False, False, True, 2, "TM_SQDIFF"),
        MetricSpec("ssd_normed", "difference", True, False, False, 2, "TM_SQDIFF_NORMED"),
        MetricSpec("ccorr", "product", False, True, False, 0, "TM_CCORR"),
        MetricSpec("ncc", "product", True, True, False, 0, "TM_CCORR_NORMED"),
        MetricSpec("ccoeff", "product", False, True, False, 0, "TM_CCOEFF"),
        MetricSpec("zncc", "product", True, True, False, 0, "TM_CCOEFF_NORMED"),
    )
}

DIFFERENCE_METRICS: tuple[str, ...] = tuple(m for m, s in METRICS.items() if s.reduction == "difference")
"""Metrics whose reduction is a fused Σ w·|I − T|^p: sad, mad, l1_similarity, ssd, ssd_normed."""
PRODUCT_METRICS: tuple[str, ...] = tuple(m for m, s in METRICS.items() if s.reduction == "product")
"""Metrics built from the cross term Σ W·I·T: ccorr, ncc, ccoeff, zncc."""
NORMALIZED_METRICS: tuple[str, ...] = tuple(m for m, s in METRICS.items() if s.normalized)
"""Metrics that divide by window statistics: ssd_normed, ncc, zncc."""

# OpenCV's method constants in the order of their values: cv2.TM_SQDIFF == 0 ... cv2.TM_CCOEFF_NORMED == 5
_OPENCV_METHODS: tuple[str, ...] = (
    "TM_SQDIFF",
    "TM_SQDIFF_NORMED",
    "TM_CCORR",
    "TM_CCORR_NORMED",
    "TM_CCOEFF",
    "TM_CCOEFF_NORMED",
)

_ALIASES: dict[str, str] = {
    "sqdiff": "ssd",
    "sqdiff_normed": "ssd_normed",
    "ccorr_normed": "ncc",
    "ccoeff_normed": "zncc",
}


def resolve_metric(metric: object) -> MetricSpec:
    """Return the spec of a metric given by name, OpenCV alias or OpenCV method constant.

    Names are case-insensitive and OpenCV's method names are accepted with or without the ``tm_`` prefix. OpenCV's
    integer constants (``cv2.TM_SQDIFF`` = 0 ... ``cv2.TM_CCOEFF_NORMED`` = 5) name the metric with OpenCV's
    numbers, so code written for ``cv2.matchTemplate`` can pass its method as it is.

    Args:
        metric: A metric name such as ``"zncc"``, ``"TM_CCOEFF_NORMED"`` or ``"sqdiff"``, or an OpenCV method
            constant such as ``cv2.TM_CCOEFF_NORMED`` (5).

    Returns:
        The metric's :class:`MetricSpec`.

    Raises:
        SlidesimTypeError: If ``metric`` is neither a string nor an integer (bool included).
        SlidesimValueError: If the name is unknown, or the integer is not one of OpenCV's six method constants;
            the message lists the valid values.

    Examples:
        >>> resolve_metric("TM_CCOEFF_NORMED").name
        'zncc'
        >>> resolve_metric(5).name  # cv2.TM_CCOEFF_NORMED
        'zncc'
    """
    if isinstance(metric, numbers.Integral) and not isinstance(metric, bool):
        return _from_opencv_constant(int(metric))
    if not isinstance(metric, str):
        raise SlidesimTypeError(
            f"`metric` must be a string such as 'zncc' or an OpenCV method constant such as cv2.TM_CCOEFF_NORMED; "
            f"got {type(metric).__name__}."
        )
    key = metric.strip().lower()
    if key.startswith("tm_"):
        key = key[3:]
    key = _ALIASES.get(key, key)
    if key not in METRICS:
        valid = (
            ", ".join(METRICS)
            + "; OpenCV names: "
            + ", ".join(["sqdiff", "sqdiff_normed", "ccorr", "ccorr_normed", "ccoeff", "ccoeff_normed"])
        )
        raise SlidesimValueError(f"`metric` must be one of {valid} (case-insensitive, optional 'tm_'); got {metric!r}.")
    return METRICS[key]


def _from_opencv_constant(number: int) -> MetricSpec:
    """The metric of OpenCV's method constant ``number`` (0 to 5), through the ``opencv`` column of METRICS."""
    if not 0 <= number < len(_OPENCV_METHODS):
        listed = ", ".join(f"{value} (cv2.{name})" for value, name in enumerate(_OPENCV_METHODS))
        raise SlidesimValueError(
            f"`metric` as an integer must be one of OpenCV's method constants {listed}; got {number}. "
            "Pass a metric name such as 'zncc' otherwise."
        )
    name = _OPENCV_METHODS[number]
    return next(spec for spec in METRICS.values() if spec.opencv == name)


def _safe_ratio(num: torch.Tensor, den_sq: torch.Tensor, degenerate: torch.Tensor) -> torch.Tensor:
    """num / sqrt(den_sq) where not degenerate, 0 elsewhere, with gradients that stay finite everywhere.

    A NaN numerator stays NaN even where the denominator is degenerate: missing data in a window outranks the
    degenerate-template rule, so a NaN pixel is never hidden behind a 0.
    """
    safe = torch.where(degenerate, torch.ones_like(den_sq), den_sq.clamp_min(torch.finfo(den_sq.dtype).tiny))
    return torch.where(degenerate & ~torch.isnan(num), torch.zeros_like(num), num / safe.sqrt())


def finish_distance(name: str, distance: torch.Tensor, n: torch.Tensor | float, in_place: bool = False) -> torch.Tensor:
    """Turn a weighted distance sum into sad, mad, l1_similarity or ssd (overwriting ``distance`` if in_place)."""
    if name in ("sad", "ssd"):
        return distance
    if in_place:
        mad = distance.div_(n)
        return mad if name == "mad" else mad.neg_().add_(1.0)  # −mad + 1 rounds as 1 − mad does
    mad = distance / n
    return mad if name == "mad" else 1.0 - mad


def finish_ncc(cross: torch.Tensor, template_energy: torch.Tensor, window_energy: torch.Tensor) -> torch.Tensor:
    """ncc from Σ W I T, Σ W T² and Σ W I²; 0 where either energy is zero."""
    den_sq = template_energy * window_energy
    return _safe_ratio(cross, den_sq, den_sq <= 0).clamp(-1.0, 1.0)


def finish_ssd_normed(ssd: torch.Tensor, template_energy: torch.Tensor, window_energy: torch.Tensor) -> torch.Tensor:
    """ssd_normed from the exact ssd and the two energies, capped at 1 as OpenCV does."""
    den_sq = template_energy * window_energy
    degenerate = den_sq <= 0
    ratio = _safe_ratio(ssd, den_sq, degenerate)
    fallback = torch.where(ssd <= 0, torch.zeros_like(ssd), torch.where(torch.isnan(ssd), ssd, torch.ones_like(ssd)))
    return torch.where(degenerate, fallback, ratio.clamp(0.0, 1.0))


def finish_zncc(
    ccoeff: torch.Tensor, template_var: torch.Tensor, window_var: torch.Tensor, flat: torch.Tensor
) -> torch.Tensor:
    """zncc from ccoeff and the two weighted variances; 0 where the window or the template is flat."""
    den_sq = template_var * window_var
    return _safe_ratio(ccoeff, den_sq, flat | (den_sq <= 0)).clamp(-1.0, 1.0)


Finish = Callable[..., torch.Tensor]
