"""Work and memory counts that several engines share (floor L4): the pieces of their cost features.

Each engine's :meth:`~slidesim.engines.base.Engine.features` adds its own counts to these; the planner weighs them
with the constants fitted by ``benchmarks/fit_cost.py``.
"""

from __future__ import annotations

import math

from .._validate import Problem
from ..kernels.area_sums import FFT_EXACT_TAPS, fused_statistics_available
from ..kernels.conv import unfold_budget
from ..kernels.spectral import transform_size
from ..kernels.taps import block_elements
from ..metrics import METRICS
from ..scoring.correlation import CENTRING_BYTES


def padded_size(problem: Problem) -> tuple[int, int]:
    """(Hp, Wp): the rows and columns of the padded image that the windows read."""
    dy, dx = problem.dilation
    span_h = dy * (problem.template_height - 1) + 1
    span_w = dx * (problem.template_width - 1) + 1
    return (problem.out_height - 1) * problem.stride[0] + span_h, (problem.out_width - 1) * problem.stride[1] + span_w


def updates(problem: Problem) -> float:
    """Template-tap updates of one sliding reduction over the whole bank."""
    taps = problem.channels * problem.template_height * problem.template_width
    return float(taps) * problem.batch * problem.n_templates * problem.out_height * problem.out_width


def width_factor(problem: Problem) -> float:
    """2 for float64 (half the vector lanes of float32), else 1."""
    return 2.0 if problem.compute_dtype == "float64" else 1.0


def window_updates(problem: Problem) -> float:
    """Template-tap updates of one window statistic: per mask, not per template, when the mask is shared."""
    shared_mask = problem.mask_kind != "per_template"
    return updates(problem) / max(1, problem.n_templates) * (1 if shared_mask else problem.n_templates)


def outputs(problem: Problem) -> float:
    """Scores of the whole bank."""
    return float(problem.batch * problem.n_templates * problem.out_height * problem.out_width)


def normalized(problem: Problem) -> bool:
    """Whether the metric divides by window statistics."""
    return METRICS[problem.metric].normalized


def call_counts(problem: Problem) -> dict[str, float]:
    """The per-call overhead: one pass per channel when channels are scored separately."""
    return {"calls": float(problem.channels if problem.channels_mode != "joint" else 1)}


def area_sum_statistics(problem: Problem) -> dict[str, float]:
    """The window statistics of :class:`slidesim.kernels.area_sums.AreaSumReductions` and the finish."""
    if not normalized(problem):
        return {}
    Hp, Wp = padded_size(problem)
    counts: dict[str, float] = {}
    if problem.mask_kind == "none":
        counts["statistics_pixels"] = float(problem.batch * problem.channels * Hp * Wp)
    elif problem.metric == "zncc":  # two or three float64 FFT correlations per channel (see window_sum there)
        counts["masked_statistics_nlogn"] = 3 * problem.channels * _masked_sums_nlogn(problem)
    else:
        counts.update(masked_energies(problem))
    counts["finished_outputs"] = outputs(problem)
    return counts


def masked_energies(problem: Problem) -> dict[str, float]:
    """The masked window energies Σ W I², whose zeros must be exact: one float64 FFT window sum per mask for
    templates of more than FFT_EXACT_TAPS taps, float64 conv2d for smaller ones (see AreaSumReductions.window_sum)."""
    if problem.template_height * problem.template_width <= FFT_EXACT_TAPS:
        return {"masked_statistics_updates": window_updates(problem)}
    return {"masked_statistics_nlogn": _masked_sums_nlogn(problem)}


def _masked_sums_nlogn(problem: Problem) -> float:
    """n·log n of one float64 FFT window sum of a plane under every mask: the plane's transform and each mask's
    forward and inverse."""
    Hf, Wf = transform_size(*padded_size(problem))
    masks = problem.n_templates if problem.mask_kind == "per_template" else 1
    return problem.batch * (1 + masks) * Hf * Wf * math.log2(Hf * Wf)


def item_size(problem: Problem) -> int:
    """Bytes per value of the compute dtype."""
    return 8 if problem.compute_dtype == "float64" else 4


def image_bytes(problem: Problem) -> int:
    """Bytes of the padded images in the compute dtype."""
    Hp, Wp = padded_size(problem)
    return problem.batch * problem.channels * Hp * Wp * item_size(problem)


def tap_loop_bytes(problem: Problem, memory_limit: int) -> int:
    """Temporaries of the tap loops: the padded image, float64 statistics planes and a few output blocks."""
    out_plane = problem.batch * problem.out_height * problem.out_width
    statistics = 4 * out_plane * 8 if normalized(problem) else 0
    item = item_size(problem)
    return image_bytes(problem) + statistics + 3 * block_elements(memory_limit, item) * item  # blocks, as run


def area_sum_bytes(problem: Problem, memory_limit: int) -> int:
    """Temporaries of the engines whose window statistics are area sums, before their cross term's own: the
    centred and padded copies, the statistics planes, float64 windows unfolded a band of rows at a time within a
    share of ``memory_limit``, and a partial sum when channels are centred in groups."""
    item = item_size(problem)
    Hp, Wp = padded_size(problem)
    image = image_bytes(problem)
    out_plane = problem.batch * problem.out_height * problem.out_width
    statistics = 4 * out_plane * 8 if normalized(problem) else 0
    if normalized(problem) and problem.mask_kind == "none":
        if fused_statistics_available():  # one float64 plane of variances or energies, the factors
            statistics = out_plane * (8 + item)
        else:  # a summed-area table and a few float64 planes
            statistics = problem.batch * (Hp + 1) * (Wp + 1) * 8 + 3 * out_plane * 8
    # float64 conv2d unfolds windows (im2col) a band of rows at a time; masked window sums run through it too
    taps = problem.template_height * problem.template_width
    band = max(unfold_budget(memory_limit), taps * problem.out_width * 8 * problem.batch)  # one row at least
    unfold = min(band, problem.channels * taps * out_plane * 8) if item == 8 else 0
    if problem.mask_kind != "none" and normalized(problem):
        unfold = max(unfold, min(band, taps * out_plane * 8))
    copies = image if problem.mode == "valid" else 2 * image  # the centred copy, and the padded one
    return copies + statistics + unfold + _centring_partial(problem, item)


def _centring_partial(problem: Problem, item: int) -> int:
    """An output-sized partial sum when ccoeff / zncc centre the image a few channels at a time."""
    Hp, Wp = padded_size(problem)
    per_channel = problem.batch * Hp * Wp * item
    grouped = problem.metric in ("ccoeff", "zncc") and problem.channels * per_channel > CENTRING_BYTES
    return problem.batch * problem.n_templates * problem.out_height * problem.out_width * item if grouped else 0
