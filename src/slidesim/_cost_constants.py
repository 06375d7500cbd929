"""Throughput constants of the cost model for the CPU (floor L0): seconds per counted unit of work (see
:func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.
"""

PROVENANCE = (
    "fft fitted by benchmarks/fit_cost.py --engines fft --cases 200 on 2026-12-07: x86_64, 2 threads, Python "
    "3.11.7, torch 2.13.0+cpu, numba 0.68.1, slidesim 0.1.0; direct, numba, conv, reference kept from a table "
    "numba fitted by benchmarks/fit_cost.py on 2026-12-07: x86_64, 2 threads, Python 3.11.7, torch "
    "2.13.0+cpu, numba 0.68.1, slidesim 0.1.0; direct, conv, fft, reference kept from a table conv, "
    "direct fitted by benchmarks/fit_cost.py on 2026-12-07: x86_64, 2 threads, Python 3.11.7, torch "
    "2.13.0+cpu, numba 0.68.1, slidesim 0.1.0; numba, fft, reference kept from a table numba, fft fitted "
    "by benchmarks/fit_cost.py on 2026-12-07: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba "
    "0.68.1, slidesim 0.1.0; direct, conv, reference kept from a table numba fitted by "
    "benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba "
    "0.68.1, slidesim 0.1.0; direct, conv, fft, reference kept from a table numba, conv, fft fitted by "
    "benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba "
    "0.68.1, slidesim 0.1.0; direct, reference kept from a table numba, conv, fft fitted by "
    "benchmarks/fit_cost.py on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba "
    "0.68.1, slidesim 0.1.0; direct, reference kept from a table numba fitted by benchmarks/fit_cost.py "
    "on 2026-12-01: x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba 0.68.1, slidesim 0.1.0; "
    "direct, conv, fft, reference kept from a table fitted by benchmarks/fit_cost.py on 2026-11-23: "
    "x86_64, 2 threads, Python 3.11.7, torch 2.13.0+cpu, numba 0.68.1, slidesim 0.1.0"
)

# median |log(predicted / measured)| of each engine's fit:
# direct 0.12, numba 0.30, conv 0.08, fft 0.22, reference 0.71
CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {
        "calls": 0.0004383,
        "correlate_updates": 1.002e-10,
        "distance_updates": 1.701e-10,
        "statistics_updates": 8.958e-11,
        "tap_loops": 1.418e-05,
    },
    "numba": {
        "calls": 0.0002368,
        "distance_updates": 1.886e-11,
        "finished_outputs": 5.857e-10,
        "masked_statistics_nlogn": 2.992e-10,
        "masked_statistics_updates": 3.846e-09,
        "narrow_products": 2.329e-11,
        "product_updates": 7.04e-12,
        "statistics_pixels": 6.733e-09,
        "statistics_updates": 5.514e-11,
    },
    "conv": {
        "calls": 0.0005395,
        "correlate_updates": 7.749e-13,
        "finished_outputs": 5.857e-10,
        "masked_statistics_nlogn": 2.992e-10,
        "masked_statistics_updates": 3.846e-09,
        "narrow_updates": 1.508e-10,
        "statistics_pixels": 6.733e-09,
    },
    "fft": {
        "calls": 0,
        "centred_pixels": 1.127e-09,
        "finished_outputs": 3.063e-09,
        "image_transform_nlogn": 4.13e-11,
        "kernel_transform_nlogn": 1.272e-10,
        "masked_statistics_nlogn": 2.426e-10,
        "masked_statistics_updates": 1.135e-09,
        "spectrum_products": 2.8e-09,
        "statistics_pixels": 4.008e-09,
        "transform_calls": 0.0001261,
    },
    "reference": {
        "calls": 0.003068,
        "window_values": 9.997e-11,
    },
}
