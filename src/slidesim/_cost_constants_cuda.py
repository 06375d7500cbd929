"""Throughput constants of the cost model for CUDA tensors (floor L0): seconds per counted unit of work (see
:func:`slidesim.cost.features`).

Not fitted yet: these are estimates from an NVIDIA H100's published throughput (67 TFLOP/s float32 without TF32,
about 3 TB/s of memory bandwidth) and typical launch overheads, so that ``method="auto"`` ranks the engines
sensibly on a GPU. ``python benchmarks/fit_cost.py --device cuda`` on a GPU machine replaces them with fitted
values and their provenance.
"""

PROVENANCE = "estimated from NVIDIA H100 specifications (not fitted on a GPU)"

CONSTANTS: dict[str, dict[str, float]] = {
    "direct": {  # one torch kernel per template tap: each update reads and writes the accumulator (~12 bytes)
        "calls": 1e-4,
        "correlate_updates": 4e-12,
        "distance_updates": 8e-12,
        "statistics_updates": 4e-12,
        "tap_loops": 3e-5,
    },
    "triton": {  # the fused kernel at about half of the float32 limit for |a − b| + acc (two instructions)
        "calls": 5e-5,
        "distance_updates": 1.25e-13,
        "statistics_updates": 4e-12,
    },
    "conv": {  # cuDNN float32 (TF32 off), elementwise finishes bound by memory bandwidth
        "calls": 1e-4,
        "correlate_updates": 4e-14,
        "finished_outputs": 2e-11,
        "masked_statistics_nlogn": 5e-13,
        "masked_statistics_updates": 4e-13,
        "narrow_updates": 2e-14,
        "statistics_pixels": 2e-11,
    },
    "fft": {  # cuFFT; spectrum products and finishes bound by memory bandwidth
        "calls": 1.5e-4,
        "finished_outputs": 2e-11,
        "image_transform_nlogn": 2e-13,
        "kernel_transform_nlogn": 2e-13,
        "masked_statistics_nlogn": 5e-13,
        "masked_statistics_updates": 4e-13,
        "spectrum_products": 1e-11,
        "statistics_pixels": 2e-11,
    },
    "reference": {
        "calls": 1e-3,
        "window_values": 1e-11,
    },
}
