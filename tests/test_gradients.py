"""Gradients: float64 gradcheck of every engine and metric, and agreement with the reference's autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim

from .conftest import GRADIENT_ENGINE_METRICS

CASES = [
    {},
    {"stride": 2, "dilation": (1, 2)},
    {"mode": "same", "padding": "reflect"},
    {"channels": "separate"},
    {"mask": "weights"},
]


def _inputs(seed: int, per_image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.random((2, 2, 7, 8))).requires_grad_()
    shape = (2, 2, 2, 3, 3) if per_image else (2, 2, 3, 3)
    bank = torch.from_numpy(rng.random(shape) + 0.05).requires_grad_()
    return images, bank


def _options(case: dict, metric: str) -> dict:
    options = dict(case)
    if options.get("mask") == "weights":
        options["mask"] = torch.from_numpy(np.random.default_rng(0).random((3, 3)) + 0.2)
    if metric in ("sad", "mad", "l1_similarity", "ssd") and not options:
        options["circular"] = {0: 0.7}
    return options


@pytest.mark.parametrize(("engine", "metric"), GRADIENT_ENGINE_METRICS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gradcheck(engine, metric, case) -> None:
    images, bank = _inputs(case, per_image=case == 1)
    options = _options(CASES[case], metric)

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return slidesim.similarity(x, t, metric=metric, method=engine, **options)

    # Triton's interpreter runs a forward pass in ~0.1 s: the full check (a pass per input element, twice) would
    # take minutes, so it checks a random direction; test_gradients_agree_with_reference compares every element.
    fast = engine == "triton" and not torch.cuda.is_available()
    assert torch.autograd.gradcheck(run, (images, bank), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast)


@pytest.mark.parametrize(("engine", "metric"), GRADIENT_ENGINE_METRICS)
def test_gradients_agree_with_reference(engine, metric) -> None:
    images, bank = _inputs(11)
    weights = torch.from_numpy(np.random.default_rng(1).random((2, 1, 3, 3)))
    grads = []
    for method in (engine, "reference"):
        x, t = images.detach().clone().requires_grad_(), bank.detach().clone().requires_grad_()
        scores = slidesim.similarity(x, t, metric=metric, mask=weights, stride=(1, 2), method=method)
        (scores * torch.linspace(-1, 2, scores.numel(), dtype=scores.dtype).view(scores.shape)).sum().backward()
        grads.append((x.grad, t.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_float32_gradients_flow_and_do_not_keep_windows() -> None:
    """Backward saves only its inputs: the graph holds no tensor larger than the inputs and the output."""
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    bank = torch.rand(4, 3, 9, 9, requires_grad=True)
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        scores = slidesim.similarity(images, bank, metric="sad", method="direct")
    scores.sum().backward()
    assert images.grad is not None and bank.grad is not None
    assert max(saved) <= max(images.numel(), scores.numel())
