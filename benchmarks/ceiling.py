"""The machine's float32 limits that the fused kernels are measured against.

Run: python benchmarks/ceiling.py

* abs-diff ceiling: every thread accumulates |x − t| over a 4 KiB row that stays in L1 cache, eight template
  values per load and store of the accumulator, so the arithmetic (subtract, absolute value, add) is what limits
  it. The fraction of it that a kernel reaches says how much is left.
  (The numba kernels keep their accumulators in registers instead, which the loop does not need: its two adds
  per difference already fill the add units.)
* squared-diff ceiling: the machine's float32 multiply-add rate, measured as torch.mm's on 2048² matrices (the
  best the machine does with fused multiply-adds). Exact ssd needs one multiply-add per squared difference, and
  its subtract runs beside it on the add units, so no kernel of it can go faster.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import torch


@numba.njit(parallel=True)
def _abs_diff_loop(row: np.ndarray, values: np.ndarray, repeats: int) -> float:
    """The measuring loop: eight template values per load and store of the accumulator."""
    threads = numba.get_num_threads()
    total = 0.0
    for _ in numba.prange(threads):
        acc = np.zeros_like(row)
        for _r in range(repeats):
            for k in range(0, values.shape[0], 8):
                v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
                v4, v5, v6, v7 = values[k + 4], values[k + 5], values[k + 6], values[k + 7]
                for x in range(row.shape[0]):
                    q = row[x]
                    near = (abs(q - v0) + abs(q - v1)) + (abs(q - v2) + abs(q - v3))
                    acc[x] += near + (abs(q - v4) + abs(q - v5)) + (abs(q - v6) + abs(q - v7))
        total += acc.sum()
    return total


def _ceiling(loop) -> float:
    row = np.random.default_rng(0).random(1024, dtype=np.float32)
    values = np.arange(16, dtype=np.float32) / 16
    repeats = 2000
    loop(row, values, 1)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        loop(row, values, repeats)
        best = min(best, time.perf_counter() - start)
    return numba.get_num_threads() * repeats * values.size * row.size / best


def abs_diff_ceiling() -> float:
    """Best rate of |x − t| accumulations over all threads, in abs-diffs per second."""
    return _ceiling(_abs_diff_loop)


def gemm_flops() -> float:
    """float32 multiply-adds of torch.mm (2 flops each) per second."""
    torch.set_num_threads(2)
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def squared_diff_ceiling() -> float:
    """Squared differences per second at the machine's float32 multiply-add rate (one multiply-add each)."""
    return gemm_flops() / 2


if __name__ == "__main__":
    print(f"abs-diff ceiling: {abs_diff_ceiling() / 1e9:.1f} G abs-diffs/s ({numba.get_num_threads()} threads)")
    print(f"squared-diff ceiling: {squared_diff_ceiling() / 1e9:.1f} G squared-diffs/s")
    print("(the float32 multiply-add rate of torch.mm, 2 flops each)")
