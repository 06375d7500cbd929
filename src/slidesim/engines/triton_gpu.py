"""The Triton engine: fused GPU kernels for the distance metrics (sad, mad, l1_similarity, ssd) and the exact ssd of
ssd_normed, forward and backward.

The kernels (:mod:`slidesim.kernels.triton_kernels`, registered as torch operators in
:mod:`slidesim.kernels.triton_ops`) never materialize windows: each program keeps a tile of up to 32 templates ×
128 output positions in registers and adds one difference per template and position for every tap, so memory is
the output plus nothing that grows with the template. Masks, circular channels, stride, dilation and per-image
banks are handled in the kernel; float16 and bfloat16 operands are loaded as they are and accumulated in float32.
Window statistics and correlations (for ssd_normed) come from the direct engine's device-agnostic loops.

Runs on CUDA tensors. With ``TRITON_INTERPRET=1`` set before slidesim loads triton, Triton's interpreter runs the
same kernels on CPU tensors (slowly): that is how the kernels are tested without a GPU. triton is optional:
without it this engine reports itself unavailable and ``method="auto"`` moves on.
"""

from __future__ import annotations

import torch

from .._validate import Canonical, Problem, geometry, padded_images
from ..kernels.taps import TapReductions, block_elements
from ..kernels.triton_env import interpreting, triton_missing_reason
from ..metrics import DIFFERENCE_METRICS
from ..scoring.score import score_channels

NAME = "triton"
_METRICS = DIFFERENCE_METRICS


def unavailable_reason() -> str | None:
    """None when triton can be imported, else how to get it."""
    return triton_missing_reason()


def ineligible_reason(problem: Problem) -> str | None:
    """The Triton engine runs distance metrics on CUDA tensors (on CPU tensors only under the interpreter)."""
    if problem.metric not in _METRICS:
        return f"accelerates the distance metrics {', '.join(_METRICS)} only; got {problem.metric!r}"
    if not problem.device.startswith("cuda") and not interpreting():
        return f"runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1); the tensors are on {problem.device}"
    return None


def _ops():
    from ..kernels import triton_ops  # imports triton: only once the engine runs

    return triton_ops


class TritonPrimitives(TapReductions):
    """Tap reductions with the distance reduction replaced by the fused Triton kernels."""

    def distance(
        self,
        image: torch.Tensor,
        templates: torch.Tensor,
        weights: torch.Tensor | None,
        power: int,
        periods: tuple[float | None, ...] | None,
    ) -> torch.Tensor:
        """Σ_c Σ_taps w · |image − template|^power -> [B, T, H', W'] (weights [Bm, Tm, Cm, h, w] or None)."""
        _ops()  # registers torch.ops.slidesim.triton_distance on first use
        accumulate = torch.float64 if image.dtype == torch.float64 else torch.float32
        period_tensor = None
        if periods is not None and any(p is not None for p in periods):
            period_tensor = torch.tensor([p or 0.0 for p in periods], dtype=accumulate, device=image.device)
        weights = weights.detach().to(image.dtype) if weights is not None else None
        geom = self.geom
        return torch.ops.slidesim.triton_distance(
            image,
            templates.to(image.dtype),
            weights,
            period_tensor,
            power,
            list(geom.stride),
            list(geom.dilation),
            geom.out_height,
            geom.out_width,
        )


def primitives(canon: Canonical, image: torch.Tensor) -> TritonPrimitives:
    """The engine's sliding reductions for a validated call on its padded images."""
    return TritonPrimitives(geometry(canon), block_elements(canon.memory_limit, image.element_size()))


def run(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem: [B, T, H', W'] (or [B, T, C, H', W'] for channels="separate")."""
    image = padded_images(canon)
    return score_channels(primitives(canon, image), canon, image)


def auto_excluded_reason(problem: Problem) -> str | None:
    """``auto`` never sends CPU tensors to Triton's interpreter: it exists to test the kernels, not to be fast."""
    if not problem.device.startswith("cuda"):
        return "Triton's interpreter on CPU tensors is for testing; runs only when named (method='triton')"
    return None
