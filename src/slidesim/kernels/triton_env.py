"""Where Triton can run (floor L2): whether it is installed, and whether its interpreter runs kernels on the CPU.

Reads the environment only: importing this module never imports triton.
"""

from __future__ import annotations

import importlib.util
import os


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1), which accepts CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_missing_reason() -> str | None:
    """None when triton can be imported, else how to get it."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'slidesim[triton]'; it ships with CUDA builds of torch)"
    return None
