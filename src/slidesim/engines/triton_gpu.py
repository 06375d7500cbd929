"""The Triton engine (floor L4): fused GPU kernels for the distance metrics (sad, mad, l1_similarity, ssd) and the
exact ssd of ssd_normed, forward and backward.

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

from .._validate import Canonical, Problem, geometry
from ..kernels.taps import TapReductions, block_elements
from ..kernels.triton_env import interpreting, triton_missing_reason
from ..metrics import DIFFERENCE_METRICS
from . import counts
from .base import ReductionEngine


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


class TritonEngine(ReductionEngine):
    """Fused Triton kernels for the distance metrics on CUDA tensors."""

    name = "triton"

    def unavailable_reason(self) -> str | None:
        """None when triton can be imported, else how to get it."""
        return triton_missing_reason()

    def ineligible_reason(self, problem: Problem) -> str | None:
        """Distance metrics on CUDA tensors (on CPU tensors only under the interpreter)."""
        if problem.metric not in DIFFERENCE_METRICS:
            return f"accelerates the distance metrics {', '.join(DIFFERENCE_METRICS)} only; got {problem.metric!r}"
        if not problem.device.startswith("cuda") and not interpreting():
            return f"runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1); the tensors are on {problem.device}"
        return None

    def auto_excluded_reason(self, problem: Problem) -> str | None:
        """``auto`` never sends CPU tensors to Triton's interpreter: it exists to test the kernels, not to be fast."""
        if not problem.device.startswith("cuda"):
            return "Triton's interpreter on CPU tensors is for testing; runs only when named (method='triton')"
        return None

    def features(self, problem: Problem, memory_limit: int) -> dict[str, float]:
        """The kernels' updates, and ssd_normed's window energies by tap loops."""
        del memory_limit
        found = counts.call_counts(problem)
        found["distance_updates"] = counts.updates(problem) * counts.width_factor(problem)
        if problem.metric == "ssd_normed":  # its window energies by tap loops
            found["statistics_updates"] = counts.window_updates(problem) * 2
        return found

    def temporary_bytes(self, problem: Problem, memory_limit: int) -> int:
        """As the tap loops: the padded image, statistics planes and a few output blocks."""
        return counts.tap_loop_bytes(problem, memory_limit)

    def primitives(self, canon: Canonical, image: torch.Tensor) -> TritonPrimitives:
        """Triton distances; the tap loops for everything else."""
        return TritonPrimitives(geometry(canon), block_elements(canon.memory_limit, image.element_size()))


ENGINE = TritonEngine()
