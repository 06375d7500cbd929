"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.19, numba 0.54, conv 0.20, fft 0.16, reference 0.44
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0005622,
        "correlate_updates": 1.113e-10,
        "distance_updates": 2.479e-10,
        "statistics_updates": 8.887e-11,
        "tap_loops": 1.391e-05,
    },
    "numba": {
        "calls": 0.0002017,
        "distance_updates": 3.854e-11,
        "statistics_updates": 7.759e-10,
    },
    "conv": {
        "calls": 0.0004696,
        "correlate_updates": 9.213e-12,
        "finished_outputs": 0,
        "masked_statistics_nlogn": 1.065e-09,
        "masked_statistics_updates": 4.334e-09,
        "narrow_updates": 1.911e-10,
        "statistics_pixels": 1.989e-08,
    },
    "fft": {
        "calls": 0.0005071,
        "finished_outputs": 3.679e-09,
        "image_transform_nlogn": 2.261e-11,
        "kernel_transform_nlogn": 2.314e-10,
        "masked_statistics_nlogn": 7.051e-10,
        "masked_statistics_updates": 1.181e-09,
        "spectrum_products": 8.661e-10,
        "statistics_pixels": 5.738e-09,
    },
    "reference": {
        "calls": 0.002128,
        "window_values": 1.283e-09,
    },
}
