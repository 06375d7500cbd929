"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.15, numba 0.37, conv 0.08, fft 0.17, reference 0.71
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0004221,
        "correlate_updates": 1.585e-10,
        "distance_updates": 2.683e-10,
        "statistics_updates": 1.55e-10,
        "tap_loops": 2.105e-05,
    },
    "numba": {
        "calls": 0.000222,
        "distance_updates": 3.076e-11,
        "statistics_updates": 5.684e-10,
    },
    "conv": {
        "calls": 0.0007007,
        "correlate_updates": 1.052e-12,
        "finished_outputs": 7.474e-10,
        "masked_statistics_nlogn": 3.675e-10,
        "masked_statistics_updates": 4.672e-09,
        "narrow_updates": 1.487e-10,
        "statistics_pixels": 8.927e-09,
    },
    "fft": {
        "calls": 0.0007018,
        "finished_outputs": 4.597e-09,
        "image_transform_nlogn": 9.331e-13,
        "kernel_transform_nlogn": 2.126e-10,
        "masked_statistics_nlogn": 1.08e-09,
        "masked_statistics_updates": 1.346e-09,
        "spectrum_products": 4.3e-09,
        "statistics_pixels": 7.528e-09,
    },
    "reference": {
        "calls": 0.003068,
        "window_values": 9.997e-11,
    },
}
