"""Estimated time and peak temporary memory of each engine for a problem: the planner's cost model.

An engine's time is a sum of per-call overhead and counted work (template-tap updates, FFT sizes, pixels of
window statistics, output values finished), each count weighted by a throughput constant. The constants are
fitted on a reference machine by ``python benchmarks/fit_cost.py``, which writes them with their provenance to
:mod:`slidesim._cost_constants`; re-run it to refit on other hardware. The model only has to rank engines; the
sweep in ``benchmarks/sweep.py`` checks how often the engine it ranks first is the fastest.
"""

from __future__ import annotations

import math

from ._cost_constants import CONSTANTS
from ._cost_constants_cuda import CONSTANTS as CUDA_CONSTANTS
from ._validate import Problem
from .kernels.area_sums import fused_statistics_available
from .kernels.conv import UNFOLD_BUDGET
from .kernels.spectral import choose_tile, next_fast_length, template_chunk, tile_count
from .metrics import DISTANCE_METRICS, PRODUCT_METRICS
from .scoring.score import CENTRING_BYTES

CORRELATION_METRICS = PRODUCT_METRICS


def _fft_size(n: int) -> int:
    return next_fast_length(n)


def _padded(problem: Problem) -> tuple[int, int]:
    dy, dx = problem.dilation
    span_h = dy * (problem.template_height - 1) + 1
    span_w = dx * (problem.template_width - 1) + 1
    return (problem.out_height - 1) * problem.stride[0] + span_h, (problem.out_width - 1) * problem.stride[1] + span_w


def _updates(problem: Problem) -> float:
    """Template-tap updates of one sliding reduction over the whole bank."""
    taps = problem.channels * problem.template_height * problem.template_width
    return float(taps) * problem.batch * problem.n_templates * problem.out_height * problem.out_width


def _normalized(problem: Problem) -> bool:
    return problem.metric in ("ncc", "zncc", "ssd_normed")


def _fft_plan(problem: Problem, memory_limit: int) -> tuple[tuple[int, int], int]:
    """Transform size and number of transforms per image of the FFT engine: the whole image, or overlap-save
    tiles when its spectrum would not fit (as :func:`slidesim.kernels.spectral.fft_correlate` decides)."""
    item = 8 if problem.compute_dtype == "float64" else 4
    Hp, Wp = _padded(problem)
    dy, dx = problem.dilation
    span = (dy * (problem.template_height - 1) + 1, dx * (problem.template_width - 1) + 1)
    shape = (problem.batch, problem.channels, Hp, Wp)
    tile = choose_tile(shape, span, problem.n_templates, item, memory_limit // 4, problem.stride)
    if tile is None:
        return (_fft_size(Hp), _fft_size(Wp)), 1
    return tile, tile_count(tile, (Hp, Wp), span, problem.stride)


def features(engine: str, problem: Problem, memory_limit: int = 512 * 2**20) -> dict[str, float]:
    """The work counts of ``engine`` on ``problem`` that its constants weigh (see :data:`CONSTANTS`)."""
    updates = _updates(problem)
    Hp, Wp = _padded(problem)
    wide = 2.0 if problem.compute_dtype == "float64" else 1.0  # float64 halves the vector width
    pixels = float(problem.batch * problem.channels * Hp * Wp)
    shared_mask = problem.mask_kind != "per_template"
    window_updates = updates / max(1, problem.n_templates) * (1 if shared_mask else problem.n_templates)
    outputs = float(problem.batch * problem.n_templates * problem.out_height * problem.out_width)
    passes = problem.channels if problem.channels_mode != "joint" else 1
    counts = {"calls": float(passes)}
    correlation = problem.metric in CORRELATION_METRICS
    if (engine in ("conv", "fft") or (engine == "numba" and correlation)) and _normalized(problem):
        if problem.mask_kind == "none":
            counts["statistics_pixels"] = pixels
        elif problem.metric == "zncc":  # two or three float64 FFT correlations per channel (see _fast.window_sum)
            Hf, Wf = _fft_size(Hp), _fft_size(Wp)
            masks = problem.n_templates if problem.mask_kind == "per_template" else 1
            counts["masked_statistics_nlogn"] = (
                3 * problem.batch * problem.channels * (1 + masks) * Hf * Wf * math.log2(Hf * Wf)
            )
        else:  # energies through float64 conv2d, whose zeros are exact
            counts["masked_statistics_updates"] = window_updates
        counts["finished_outputs"] = outputs
    if engine == "direct":
        kind = "distance_updates" if problem.metric in (*DISTANCE_METRICS, "ssd_normed") else "correlate_updates"
        counts[kind] = updates * wide
        # one Python-level step per template tap and output block of about a million values
        blocks = math.ceil(outputs / 2**20)
        counts["tap_loops"] = float(problem.channels * problem.template_height * problem.template_width * blocks)
        if _normalized(problem):
            counts["statistics_updates"] = 3 * window_updates * 2
    elif engine == "numba" and correlation:  # the product tiles; k < 4 templates per tile leave it narrower
        counts["product_updates"] = updates * wide
        counts["narrow_products"] = updates * wide / min(4, problem.n_templates)
    elif engine in ("numba", "triton"):
        counts["distance_updates"] = updates * wide
        if problem.metric == "ssd_normed":
            counts["statistics_updates"] = window_updates * 2
    elif engine == "conv":
        if problem.compute_dtype == "float64":  # torch unfolds windows (im2col) and multiplies matrices
            counts["unfolded_updates"] = updates
            counts["unfolded_values"] = updates / problem.n_templates  # the im2col copy itself
        else:  # oneDNN: a few output channels leave most of its vector lanes and cache blocking idle
            counts["correlate_updates"] = updates
            counts["narrow_updates"] = updates / min(64, problem.n_templates)
    elif engine == "fft":
        (Hf, Wf), tiles = _fft_plan(problem, memory_limit)
        nlogn = Hf * Wf * math.log2(Hf * Wf)
        kernels = problem.n_templates * problem.channels * (problem.batch if problem.per_image_bank else 1)
        image_transforms = tiles * problem.batch * (problem.channels + problem.n_templates)
        counts["image_transform_nlogn"] = image_transforms * nlogn * wide
        counts["kernel_transform_nlogn"] = kernels * nlogn * wide
        spectra = tiles * problem.batch * problem.n_templates * problem.channels * Hf * (Wf // 2 + 1)
        counts["spectrum_products"] = spectra * wide
    else:  # the reference materializes every window in float64
        counts["window_values"] = updates
    return counts


def constants_for(problem: Problem) -> dict[str, dict[str, float]]:
    """The constants of the problem's device: the CPU table, or the CUDA table for CUDA tensors."""
    return CUDA_CONSTANTS if problem.device.startswith("cuda") else CONSTANTS


def estimate_seconds(engine: str, problem: Problem, memory_limit: int = 512 * 2**20) -> float:
    """Estimated wall time of ``engine`` on ``problem`` under ``memory_limit`` (seconds)."""
    constants = constants_for(problem).get(engine)
    if constants is None:  # no constants for this engine on this device (Triton's interpreter on the CPU)
        return math.nan
    counts = features(engine, problem, memory_limit)
    return sum(constants.get(name, 0.0) * count for name, count in counts.items())


def _centring_partial(problem: Problem, item: int) -> int:
    """An output-sized partial sum when ccoeff / zncc centre the image a few channels at a time."""
    Hp, Wp = _padded(problem)
    per_channel = problem.batch * Hp * Wp * item
    grouped = problem.metric in ("ccoeff", "zncc") and problem.channels * per_channel > CENTRING_BYTES
    return problem.batch * problem.n_templates * problem.out_height * problem.out_width * item if grouped else 0


def estimate_bytes(engine: str, problem: Problem, memory_limit: int) -> int:
    """Estimated peak temporary memory of ``engine`` beyond the output (bytes)."""
    item = 8 if problem.compute_dtype == "float64" else 4
    Hp, Wp = _padded(problem)
    image = problem.batch * problem.channels * Hp * Wp * item
    out_plane = problem.batch * problem.out_height * problem.out_width
    statistics = 4 * out_plane * 8 if _normalized(problem) else 0
    if engine in ("direct", "triton") or (engine == "numba" and problem.metric not in CORRELATION_METRICS):
        return image + statistics + min(memory_limit, 3 * 2**22 * item)
    partial = _centring_partial(problem, item)
    taps = problem.template_height * problem.template_width
    if _normalized(problem) and problem.mask_kind == "none":
        if fused_statistics_available():  # one float64 plane of variances or energies, the factors
            statistics = out_plane * (8 + item)
        else:  # a summed-area table and a few float64 planes
            statistics = problem.batch * (Hp + 1) * (Wp + 1) * 8 + 3 * out_plane * 8

    # float64 conv2d unfolds windows (im2col) a band of rows at a time; masked window sums run through it too
    unfold = min(UNFOLD_BUDGET, problem.channels * taps * out_plane * 8) if item == 8 else 0
    if problem.mask_kind != "none" and _normalized(problem):
        unfold = max(unfold, min(UNFOLD_BUDGET, taps * out_plane * 8))
    statistics += unfold
    copies = image if problem.mode == "valid" else 2 * image  # the centred copy, and the padded one
    if engine == "conv":
        return copies + image + statistics + partial  # oneDNN reorders the (centred) image once
    if engine == "numba":
        return copies + image + statistics + partial  # the tiles copy the (centred) image into phase planes
    if engine == "fft":
        (Hf, Wf), _ = _fft_plan(problem, memory_limit)  # the whole image, or overlap-save tiles
        spectrum = problem.batch * problem.channels * Hf * (Wf // 2 + 1) * 2 * item
        bank_batch = problem.batch if problem.per_image_bank else 1
        chunk = template_chunk((Hf, Wf), problem.batch, bank_batch, problem.n_templates, item, memory_limit // 4)
        per_template = (bank_batch + problem.batch) * Hf * (Wf // 2 + 1) * 2 * item + problem.batch * Hf * Wf * item
        return copies + spectrum + chunk * per_template + statistics + partial
    return out_plane * problem.n_templates * problem.channels * taps * 8 * 2
