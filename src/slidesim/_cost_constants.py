"""Throughput constants of the cost model (seconds per counted unit of work; see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fitted by benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.16, numba 0.33, conv 0.09, fft 0.18, reference 0.48
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0003969,
        "correlate_updates": 9.149e-11,
        "distance_updates": 1.967e-10,
        "statistics_updates": 9.809e-11,
        "tap_loops": 1.422e-05,
    },
    "numba": {
        "calls": 0.0002115,
        "distance_updates": 2.786e-11,
        "statistics_updates": 4.043e-10,
    },
    "conv": {
        "calls": 0.0003532,
        "correlate_updates": 7.714e-13,
        "finished_outputs": 1.686e-09,
        "masked_statistics_nlogn": 2.469e-10,
        "masked_statistics_updates": 3.879e-09,
        "narrow_updates": 1.452e-10,
        "statistics_pixels": 4.65e-09,
        "unfolded_updates": 7.776e-11,
        "unfolded_values": 4.686e-10,
    },
    "fft": {
        "calls": 0.0002924,
        "finished_outputs": 4.51e-09,
        "image_transform_nlogn": 5.656e-11,
        "kernel_transform_nlogn": 1.71e-10,
        "masked_statistics_nlogn": 5.222e-10,
        "masked_statistics_updates": 8.461e-10,
        "spectrum_products": 2.392e-10,
        "statistics_pixels": 2.275e-10,
    },
    "reference": {
        "calls": 0,
        "window_values": 2.307e-09,
    },
}
