"""The machine's float32 limits that the fused kernels are measured against.

Run: python benchmarks/ceiling.py

* abs-diff ceiling: every thread accumulates |x − t| over a 4 KiB row that stays in L1 cache, sixteen templates
  values per load, so nothing but the arithmetic (subtract, absolute value, add) limits it. No real kernel can beat
  it; the fraction of it that a kernel reaches says how much is left.
* float32 GEMM: torch.mm on 2048² matrices, the best the machine does with fused multiply-adds, for context.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import torch


@numba.njit(parallel=True, fastmath=False)
def _abs_diff_loop(row: np.ndarray, values: np.ndarray, repeats: int) -> float:
    threads = numba.get_num_threads()
    total = 0.0
    for _ in numba.prange(threads):
        acc = np.zeros_like(row)
        for _r in range(repeats):
            for k in range(0, values.shape[0], 4):
                v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
                for x in range(row.shape[0]):
                    q = row[x]
                    acc[x] += abs(q - v0) + abs(q - v1) + abs(q - v2) + abs(q - v3)
        total += acc.sum()
    return total


def abs_diff_ceiling() -> float:
    """Best rate of |x − t| accumulations over all threads, in abs-diffs per second."""
    row = np.random.default_rng(0).random(1024, dtype=np.float32)
    values = np.arange(16, dtype=np.float32) / 16
    repeats = 2000
    _abs_diff_loop(row, values, 1)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        _abs_diff_loop(row, values, repeats)
        best = min(best, time.perf_counter() - start)
    return numba.get_num_threads() * repeats * values.size * row.size / best


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


if __name__ == "__main__":
    print(f"abs-diff ceiling: {abs_diff_ceiling() / 1e9:.1f} G abs-diffs/s ({numba.get_num_threads()} threads)")
    print(f"float32 GEMM: {gemm_flops() / 1e9:.1f} GFLOP/s")
