"""Estimated time and peak temporary memory of each engine for a problem: the planner's cost model.

Times are operation counts divided by throughputs measured on the reference machine (2 x86_64 cores with AVX2,
torch 2.13.0+cpu, numba 0.68.1, 2026-11-22) by ``python benchmarks/fit_cost.py``; re-run it to refit on other
hardware. The model only has to rank engines: it is checked against measured times by the sweep in benchmarks/.
"""

from __future__ import annotations

import math

from ._validate import Problem

# Throughputs in template-tap updates per second (one tap of one template at one output position), float32.
DIRECT_CORRELATE_RATE = 3.2e9
DIRECT_DISTANCE_RATE = 1.8e9
NUMBA_DISTANCE_RATE = 13.0e9
CONV_CORRELATE_RATE = 25.0e9
# FFT: seconds per n·log2(n) of one real transform, and per complex multiply-add of the spectra.
FFT_SECONDS_PER_NLOGN = 0.3e-9
SPECTRUM_SECONDS_PER_MAC = 1.0e-9
# Window statistics of the normalized metrics: seconds per padded image pixel and channel (box sums, flat test)
# for the fast engines; the direct engine runs float64 tap loops at about half its float32 rate.
FAST_STATISTICS_SECONDS_PER_PIXEL = 9e-8
CALL_OVERHEAD_SECONDS = 2e-4


def _fft_size(n: int) -> int:
    from .engines.fft import next_fast_length

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


def estimate_seconds(engine: str, problem: Problem) -> float:
    """Estimated wall time of ``engine`` on ``problem`` (seconds)."""
    updates = _updates(problem)
    Hp, Wp = _padded(problem)
    pixels = float(problem.batch * problem.channels * Hp * Wp)
    window_updates = updates / max(1, problem.n_templates)
    if problem.mask == "per_template":
        window_updates = updates
    masked_statistics = window_updates * (3 if problem.metric == "zncc" else 1)
    fast_statistics = (
        (
            FAST_STATISTICS_SECONDS_PER_PIXEL * pixels
            if problem.mask == "none"
            else masked_statistics / CONV_CORRELATE_RATE
        )
        if _normalized(problem)
        else 0.0
    )
    if engine == "direct":
        seconds = updates / (
            DIRECT_DISTANCE_RATE
            if problem.metric in ("sad", "mad", "l1_similarity", "ssd", "ssd_normed")
            else DIRECT_CORRELATE_RATE
        )
        if _normalized(problem):
            seconds += 3 * window_updates / (DIRECT_CORRELATE_RATE / 2)
    elif engine == "numba":
        seconds = updates / NUMBA_DISTANCE_RATE
        if problem.metric == "ssd_normed":
            seconds += window_updates / (DIRECT_CORRELATE_RATE / 2)
    elif engine == "conv":
        seconds = updates / CONV_CORRELATE_RATE + fast_statistics
    elif engine == "fft":
        Hf, Wf = _fft_size(Hp), _fft_size(Wp)
        nlogn = Hf * Wf * math.log2(Hf * Wf)
        kernels = problem.n_templates * problem.channels * (problem.batch if problem.per_image_bank else 1)
        transforms = problem.batch * problem.channels + kernels + problem.batch * problem.n_templates
        spectra = problem.batch * problem.n_templates * problem.channels * Hf * (Wf // 2 + 1)
        seconds = transforms * nlogn * FFT_SECONDS_PER_NLOGN + spectra * SPECTRUM_SECONDS_PER_MAC + fast_statistics
    else:  # the reference materializes every window in float64
        seconds = updates * 10 / DIRECT_CORRELATE_RATE
    channel_passes = problem.channels if problem.channels_mode != "joint" else 1
    return CALL_OVERHEAD_SECONDS * channel_passes + seconds


def estimate_bytes(engine: str, problem: Problem, memory_limit: int) -> int:
    """Estimated peak temporary memory of ``engine`` beyond the output (bytes)."""
    item = 8 if problem.compute_dtype == "float64" else 4
    Hp, Wp = _padded(problem)
    image = problem.batch * problem.channels * Hp * Wp * item
    out_plane = problem.batch * problem.out_height * problem.out_width
    statistics = 4 * out_plane * 8 if _normalized(problem) else 0
    if engine in ("direct", "numba"):
        return image + statistics + min(memory_limit, 3 * 2**22 * item)
    if engine == "conv":
        return 2 * image + statistics + 2 * out_plane * problem.n_templates * item
    if engine == "fft":
        Hf, Wf = _fft_size(Hp), _fft_size(Wp)
        spectrum = problem.batch * problem.channels * Hf * (Wf // 2 + 1) * 2 * item
        return 2 * image + 3 * spectrum + statistics + min(memory_limit, 3 * 2**22 * item)
    taps = problem.channels * problem.template_height * problem.template_width
    return out_plane * taps * 8 * 2
