"""Random problems for fitting and checking the planner's cost model (shared by fit_cost.py and sweep.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import slidesim
from slidesim import engines
from slidesim._validate import DEFAULT_OPTIONS, canonicalize
from slidesim.metrics import DIFFERENCE_METRICS, PRODUCT_METRICS

CORRELATION = PRODUCT_METRICS  # the metrics of the cross term, and of the difference reduction
DISTANCE = DIFFERENCE_METRICS


@dataclass
class Case:
    """One call of slidesim.similarity: images [B, C, H, W], a bank [T, C, h, w] and options."""

    batch: int
    channels: int
    size: int
    n_templates: int
    tsize: int
    metric: str
    dtype: str = "float32"
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.size * 1000 + self.tsize)
        images = torch.rand(self.batch, self.channels, self.size, self.size, generator=generator)
        bank = torch.rand(self.n_templates, self.channels, self.tsize, self.tsize, generator=generator)
        if self.dtype == "uint8":
            images, bank = (images * 255).to(torch.uint8), (bank * 255).to(torch.uint8)
        else:
            dtype = getattr(torch, self.dtype)
            images, bank = images.to(dtype), bank.to(dtype)
        return images.to(self.device), bank.to(self.device)

    def label(self) -> str:
        extra = "".join(f", {k}={'…' if isinstance(v, torch.Tensor) else v}" for k, v in self.options.items())
        return (
            f"{self.metric} {self.batch}×{self.channels}×{self.size}² vs {self.n_templates}×{self.tsize}² "
            f"{self.dtype}{extra}"
        )

    def problem(self):
        images, bank = self.inputs()
        return canonicalize(images, bank, **{**DEFAULT_OPTIONS, "metric": self.metric, **self.options}).problem

    def runnable(self) -> list[str]:
        """Engines auto may pick that can run this case."""
        problem = self.problem()
        names = []
        for name in engines.auto_engines():
            engine = engines.load(name)
            reason = engine.unavailable_reason() or engine.ineligible_reason(problem)
            if reason is None and engine.auto_excluded_reason(problem) is None:
                names.append(name)
        return names


def best_time(case: Case, method: str, repeats: int = 3, budget: float = 2.0) -> float:
    """Best wall time of ``repeats`` calls after one warm-up (fewer repeats when a call is slow); CUDA calls are
    timed to the end of their kernels."""
    images, bank = case.inputs()
    options = {k: v.to(case.device) if isinstance(v, torch.Tensor) else v for k, v in case.options.items()}
    call = {"metric": case.metric, "method": method, **options}
    sync = torch.cuda.synchronize if case.device.startswith("cuda") else (lambda: None)

    def once() -> float:
        start = time.perf_counter()
        slidesim.similarity(images, bank, **call)
        sync()
        return time.perf_counter() - start

    first = once()
    best = first
    for _ in range(repeats if first * repeats < budget else 1):
        best = min(best, once())
    return best


def random_cases(
    seed: int, count: int, metrics: tuple[str, ...], max_size: int = 512, device: str = "cpu"
) -> list[Case]:
    """``count`` varied cases: sizes, banks, channels, dtypes, strides, modes and masks drawn at random."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        size = int(rng.choice([48, 96, 160, 256, 384, 512]))
        if size > max_size:
            continue
        tsize = int(rng.choice([3, 5, 8, 12, 16, 24, 32, 48]))
        if tsize > size // 2:
            continue
        options: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.15:
            options["stride"] = int(rng.choice([2, 3]))
        elif roll < 0.25:
            options["mode"] = "same"
        elif roll < 0.35:
            options["mask"] = torch.rand(tsize, tsize, generator=torch.Generator().manual_seed(tsize)) > 0.3
        cases.append(
            Case(
                batch=int(rng.choice([1, 1, 1, 2])),
                channels=int(rng.choice([1, 1, 3])),
                size=size,
                n_templates=int(rng.choice([1, 1, 2, 4, 16, 64])),
                tsize=tsize,
                metric=str(rng.choice(metrics)),
                dtype=str(rng.choice(["float32", "float32", "float32", "float64", "uint8"])),
                options=options,
                device=device,
            )
        )
    return cases
