"""Throughput constants of the cost model for the CPU (floor L0): seconds per counted unit of work (see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "numba fitted by benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch "
    "2.13.0+cpu, numba 0.68.1, slidesim 0.1.0; direct, conv, fft, reference kept from a table numba, "
    "conv, fft fitted by benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch "
    "2.13.0+cpu, numba 0.68.1, slidesim 0.1.0; direct, reference kept from a table numba, conv, fft "
    "fitted by benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, "
    "numba 0.68.1, slidesim 0.1.0; direct, reference kept from a table numba fitted by "
    "benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba "
    "0.68.1, slidesim 0.1.0; direct, conv, fft, reference kept from a table fitted by "
    "benchmarks/fit_cost.py on 2026-11-23: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba "
    "0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.15, numba 0.23, conv 0.19, fft 0.13, reference 0.71
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0004221,
        "correlate_updates": 1.585e-10,
        "distance_updates": 2.683e-10,
        "statistics_updates": 1.55e-10,
        "tap_loops": 2.105e-05,
    },
    "numba": {
        "calls": 0.0004488,
        "distance_updates": 3.086e-11,
        "finished_outputs": 1.245e-09,
        "masked_statistics_nlogn": 4.153e-10,
        "masked_statistics_updates": 4.305e-09,
        "narrow_products": 2.526e-11,
        "product_updates": 1.064e-11,
        "statistics_pixels": 1.148e-08,
        "statistics_updates": 1.166e-10,
    },
    "conv": {
        "calls": 0.0007957,
        "correlate_updates": 3.997e-12,
        "finished_outputs": 1.245e-09,
        "masked_statistics_nlogn": 4.153e-10,
        "masked_statistics_updates": 4.305e-09,
        "narrow_updates": 2.31e-10,
        "statistics_pixels": 1.148e-08,
    },
    "fft": {
        "calls": 0.0005084,
        "finished_outputs": 3.266e-09,
        "image_transform_nlogn": 6.364e-11,
        "kernel_transform_nlogn": 1.767e-10,
        "masked_statistics_nlogn": 1.093e-09,
        "masked_statistics_updates": 1.177e-09,
        "spectrum_products": 1.783e-09,
        "statistics_pixels": 2.874e-09,
    },
    "reference": {
        "calls": 0.003068,
        "window_values": 9.997e-11,
    },
}
