"""Full float32 on CUDA (floor L2): TF32 off for the duration of a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def full_float32() -> Iterator[None]:
    """Switch TF32 off for cuDNN convolutions and CUDA matrix products while the block runs.

    TF32 keeps 10 bits of mantissa: a float32 correlation through it is off by about 1e-3 relative, which breaks
    the numerics contract (and PyTorch enables it for cuDNN convolutions by default). The global flags are
    restored afterwards.
    """
    cudnn = torch.backends.cudnn
    matmul = torch.backends.cuda.matmul
    previous = matmul.allow_tf32
    matmul.allow_tf32 = False
    try:
        with cudnn.flags(
            enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
        ):
            yield
    finally:
        matmul.allow_tf32 = previous
