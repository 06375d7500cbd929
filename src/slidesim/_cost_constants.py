"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.16, numba 0.33, conv 0.06, fft 0.15, reference 0.42
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0006148,
        "correlate_updates": 1.137e-10,
        "distance_updates": 2.293e-10,
        "statistics_updates": 1.638e-10,
        "tap_loops": 1.838e-05,
    },
    "numba": {
        "calls": 0.0002515,
        "distance_updates": 3.178e-11,
        "statistics_updates": 5.764e-10,
    },
    "conv": {
        "calls": 0.0003849,
        "correlate_updates": 7.148e-13,
        "finished_outputs": 1.052e-09,
        "masked_statistics_nlogn": 3.143e-10,
        "masked_statistics_updates": 4.12e-09,
        "narrow_updates": 1.394e-10,
        "statistics_pixels": 4.596e-09,
    },
    "fft": {
        "calls": 0.0003461,
        "finished_outputs": 2.865e-09,
        "image_transform_nlogn": 1.145e-10,
        "kernel_transform_nlogn": 8.043e-11,
        "masked_statistics_nlogn": 9.877e-10,
        "masked_statistics_updates": 1.21e-09,
        "spectrum_products": 1.858e-09,
        "statistics_pixels": 3.073e-09,
    },
    "reference": {
        "calls": 0.002393,
        "window_values": 9.381e-10,
    },
}
