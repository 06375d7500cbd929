"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.13, numba 0.32, conv 0.12, fft 0.16, reference 0.32
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0003114,
        "correlate_updates": 1.554e-10,
        "distance_updates": 3.403e-10,
        "statistics_updates": 1.785e-10,
        "tap_loops": 1.906e-05,
    },
    "numba": {
        "calls": 0.0002898,
        "distance_updates": 4.412e-11,
        "statistics_updates": 6.217e-10,
    },
    "conv": {
        "calls": 0.0004705,
        "correlate_updates": 6.979e-12,
        "finished_outputs": 6.556e-10,
        "masked_statistics_nlogn": 9.128e-10,
        "masked_statistics_updates": 4.496e-09,
        "narrow_updates": 2.195e-10,
        "statistics_pixels": 6.969e-09,
    },
    "fft": {
        "calls": 0.0005113,
        "finished_outputs": 3.104e-09,
        "image_transform_nlogn": 7.219e-11,
        "kernel_transform_nlogn": 2.018e-10,
        "masked_statistics_nlogn": 8.724e-10,
        "masked_statistics_updates": 1.153e-09,
        "spectrum_products": 1.252e-09,
        "statistics_pixels": 2.268e-09,
    },
    "reference": {
        "calls": 0.004097,
        "window_values": 4.596e-10,
    },
}
