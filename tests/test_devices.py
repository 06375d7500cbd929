"""Engines on CUDA give the CPU reference's numbers and keep tensors on the device (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim

from .conftest import ENGINE_METRICS, random_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
def test_cuda_matches_reference(engine, metric) -> None:
    images, bank = random_problem(np.random.default_rng(0), size=(21, 19), tsize=(5, 4))
    mask = torch.rand(5, 4) + 0.1
    want = slidesim.reference.similarity(images, bank, metric=metric, mask=mask, stride=(1, 2))
    x, t = images.cuda().requires_grad_(), bank.cuda().requires_grad_()
    got = slidesim.similarity(x, t, metric=metric, mask=mask.cuda(), stride=(1, 2), method=engine)
    assert got.device == x.device
    torch.testing.assert_close(got.double().cpu(), want, rtol=2e-4, atol=2e-4 * max(1.0, float(want.abs().max())))
    got.sum().backward()
    assert x.grad is not None and x.grad.device == x.device and torch.isfinite(x.grad).all()
