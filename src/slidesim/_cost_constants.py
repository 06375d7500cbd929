"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.16, numba 0.31, conv 0.07, fft 0.16, reference 0.42
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0003883,
        "correlate_updates": 1.08e-10,
        "distance_updates": 2.437e-10,
        "statistics_updates": 1.667e-10,
        "tap_loops": 1.455e-05,
    },
    "numba": {
        "calls": 0.0002417,
        "distance_updates": 2.885e-11,
        "statistics_updates": 6.11e-10,
    },
    "conv": {
        "calls": 0.0003632,
        "correlate_updates": 1.561e-12,
        "finished_outputs": 1.451e-09,
        "masked_statistics_nlogn": 2.494e-10,
        "masked_statistics_updates": 4.255e-09,
        "narrow_updates": 1.368e-10,
        "statistics_pixels": 4.883e-09,
    },
    "fft": {
        "calls": 0.0003641,
        "finished_outputs": 3.352e-09,
        "image_transform_nlogn": 2.709e-11,
        "kernel_transform_nlogn": 8.985e-11,
        "masked_statistics_nlogn": 4.883e-10,
        "masked_statistics_updates": 1.156e-09,
        "spectrum_products": 3.126e-09,
        "statistics_pixels": 2.813e-09,
    },
    "reference": {
        "calls": 0.0008328,
        "window_values": 1.558e-09,
    },
}
