"""The machine's float32 limits that the fused kernels are measured against.

Run: python benchmarks/ceiling.py

* abs-diff ceiling: every thread accumulates |x − t| over a 4 KiB row that stays in L1 cache, eight template
  values per load and store of the accumulator, so the arithmetic (subtract, absolute value, add) is what limits
  it. The fraction of it that a kernel reaches says how much is left.
* squared-diff ceiling: the same loop with (x − t)² accumulated by a fused multiply-add, the arithmetic of exact
  ssd (the numba kernels contract the multiply and the add the same way).
* float32 GEMM: torch.mm on 2048² matrices, the best the machine does with fused multiply-adds, for context.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import torch


@numba.njit(inline="always")
def _abs_diff(d: float) -> float:
    return abs(d)


@numba.njit(inline="always")
def _squared(d: float) -> float:
    return d * d


def _difference_loop(term, fastmath):
    """The measuring loop, compiled for one difference term: eight template values per load and store of acc."""

    @numba.njit(parallel=True, fastmath=fastmath)
    def loop(row: np.ndarray, values: np.ndarray, repeats: int) -> float:
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
                        near = (term(q - v0) + term(q - v1)) + (term(q - v2) + term(q - v3))
                        acc[x] += near + (term(q - v4) + term(q - v5)) + (term(q - v6) + term(q - v7))
            total += acc.sum()
        return total

    return loop


_abs_diff_loop = _difference_loop(_abs_diff, fastmath=False)
# contract: squared differences accumulate by fused multiply-adds, as in the numba kernels
_squared_diff_loop = _difference_loop(_squared, fastmath={"contract"})


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


def squared_diff_ceiling() -> float:
    """Best rate of (x − t)² accumulations over all threads, in squared differences per second."""
    return _ceiling(_squared_diff_loop)


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
    print(f"squared-diff ceiling: {squared_diff_ceiling() / 1e9:.1f} G squared-diffs/s")
    print(f"float32 GEMM: {gemm_flops() / 1e9:.1f} GFLOP/s")
