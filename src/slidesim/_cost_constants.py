"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.15, numba 0.36, conv 0.17, fft 0.18, reference 0.54
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0004832,
        "correlate_updates": 1.1e-10,
        "distance_updates": 2.38e-10,
        "statistics_updates": 8.909e-11,
        "tap_loops": 1.371e-05,
    },
    "numba": {
        "calls": 0.0002037,
        "distance_updates": 2.781e-11,
        "statistics_updates": 5.165e-10,
    },
    "conv": {
        "calls": 0.0003689,
        "correlate_updates": 1.541e-12,
        "finished_outputs": 1.589e-09,
        "masked_statistics_updates": 2.334e-09,
        "narrow_updates": 1.322e-10,
        "statistics_pixels": 7.251e-09,
        "unfolded_updates": 5.096e-11,
        "unfolded_values": 1.012e-09,
    },
    "fft": {
        "calls": 0.000298,
        "finished_outputs": 2.954e-09,
        "image_transform_nlogn": 6.782e-11,
        "kernel_transform_nlogn": 5.369e-11,
        "masked_statistics_updates": 1.042e-09,
        "spectrum_products": 3.965e-09,
        "statistics_pixels": 1.544e-09,
    },
    "reference": {
        "calls": 0.001223,
        "window_values": 1.882e-09,
    },
}
