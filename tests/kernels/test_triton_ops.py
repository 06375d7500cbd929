"""The Triton engine's kernels and operators beyond the shared engine matrix.

Without a GPU they run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1); the CUDA tests
run the compiled kernels where a GPU exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.library import opcheck

import slidesim
from slidesim.errors import EngineUnavailableError
from slidesim.kernels import triton_env

pytest.importorskip("triton")
from slidesim.kernels import triton_ops  # after the skip: importing it imports triton

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _device_ok(device: str) -> None:
    if device == "cpu" and not triton_env.interpreting():
        pytest.skip("CPU tensors need TRITON_INTERPRET=1")


def _op(image, templates, weights=None, periods=None, power=1, stride=(1, 1), dilation=(1, 1)):
    h, w = templates.shape[-2:]
    Ho = (image.shape[-2] - dilation[0] * (h - 1) - 1) // stride[0] + 1
    Wo = (image.shape[-1] - dilation[1] * (w - 1) - 1) // stride[1] + 1
    return torch.ops.slidesim.triton_distance(
        image, templates, weights, periods, power, list(stride), list(dilation), Ho, Wo
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_operands_accumulate_in_float32(device, dtype) -> None:
    _device_ok(device)
    rng = np.random.default_rng(3)
    # values on a 1/16 grid are exact in float16 and bfloat16, so only the accumulation can differ
    image = torch.from_numpy(rng.integers(0, 64, (2, 3, 11, 10)) / 16).to(device, dtype)
    bank = torch.from_numpy(rng.integers(0, 64, (1, 5, 3, 4, 3)) / 16).to(device, dtype)
    for power in (1, 2):
        got = _op(image, bank, power=power)
        want = slidesim.reference.similarity(
            image.double().cpu(), bank[0].double().cpu(), metric="sad" if power == 1 else "ssd"
        )
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_banks_and_maps_larger_than_one_program(device) -> None:
    """40 templates span two template blocks of 32, a 23×21 map spans several position blocks of 128."""
    _device_ok(device)
    rng = np.random.default_rng(4)
    images = torch.from_numpy(rng.random((2, 2, 27, 24))).float().to(device).requires_grad_()
    bank = torch.from_numpy(rng.random((40, 2, 5, 4))).float().to(device).requires_grad_()
    mask = torch.from_numpy(rng.random((40, 1, 5, 4)) * (rng.random((40, 1, 5, 4)) > 0.2)).float().to(device)
    mask[:, :, 2, 2] = 1.0
    got = slidesim.similarity(images, bank, metric="ssd", mask=mask, method="triton")
    want = slidesim.similarity(images, bank, metric="ssd", mask=mask, method="direct")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    grad = torch.rand_like(got)
    got_grads = torch.autograd.grad(got, (images, bank), grad)
    want_grads = torch.autograd.grad(want, (images, bank), grad)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_reaches_only_its_windows_and_never_through_a_zero_weight(device) -> None:
    _device_ok(device)
    image = torch.rand(1, 1, 9, 9, device=device)
    image[0, 0, 4, 4] = float("nan")
    template = torch.rand(1, 1, 3, 3, device=device)
    scores = slidesim.similarity(image, template, metric="sad", method="triton")[0, 0]
    contains = torch.zeros(7, 7, dtype=torch.bool, device=device)
    contains[2:5, 2:5] = True
    assert bool(scores[contains].isnan().all()) and bool(scores[~contains].isfinite().all())
    mask = torch.ones(3, 3, device=device)
    mask[1, 1] = 0.0  # the NaN sits under this tap in window (3, 3)
    masked = slidesim.similarity(image, template, metric="sad", mask=mask, method="triton")[0, 0]
    assert bool(masked[3, 3].isfinite())
    assert bool(masked[2, 2].isnan())


def test_gradient_of_a_nan_pixel_is_nan_where_it_is_read() -> None:
    _device_ok("cpu")
    image = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    image[0, 0, 2, 2] = float("nan")
    image.requires_grad_()
    template = torch.rand(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    for method in ("triton", "numba"):
        scores = slidesim.similarity(image, template, metric="sad", method=method)
        grad_image = torch.autograd.grad(scores.nansum(), (image, template))[0]
        assert bool(grad_image[0, 0, 2, 2].isnan())
        assert bool(grad_image[0, 0, 0, 5].isfinite())


def test_operators_pass_opcheck() -> None:
    """Schema, fake (shape-only) implementation, autograd registration and AOT tracing of both operators."""
    _device_ok("cpu")
    image = torch.rand(2, 2, 9, 8, requires_grad=True)
    bank = torch.rand(1, 3, 2, 3, 3, requires_grad=True)
    weights = torch.rand(1, 3, 1, 3, 3)
    periods = torch.tensor([0.0, 1.0])
    opcheck(torch.ops.slidesim.triton_distance.default, (image, bank, weights, periods, 1, [1, 2], [2, 1], 5, 3))
    grad = torch.rand(2, 3, 5, 3)
    opcheck(
        torch.ops.slidesim.triton_distance_backward.default,
        (grad, image.detach(), bank.detach(), weights, periods, 2, [1, 2], [2, 1], True, True),
    )


def test_auto_never_sends_cpu_tensors_to_the_interpreter() -> None:
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    plan = slidesim.plan(image, image[:5, :5], metric="sad")
    assert plan.engine != "triton"
    assert "triton" in repr(plan)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(EngineUnavailableError, match=r"`method`='triton' cannot run this problem: .*CUDA tensors"):
        slidesim.similarity(np.zeros((8, 8), np.float32), np.ones((3, 3), np.float32), metric="sad", method="triton")


def test_block_sizes() -> None:
    assert [triton_ops._block_t(n) for n in (1, 3, 32, 33, 1000)] == [1, 4, 32, 32, 32]


@CUDA
def test_auto_picks_triton_for_distance_metrics_on_cuda() -> None:
    image = torch.rand(1, 3, 256, 256, device="cuda")
    bank = torch.rand(8, 3, 16, 16, device="cuda")
    assert slidesim.plan(image, bank, metric="sad").engine == "triton"


@CUDA
def test_compiled_graph_calls_the_triton_kernel() -> None:
    image = torch.rand(1, 3, 64, 64, device="cuda")
    bank = torch.rand(1, 4, 3, 8, 8, device="cuda")

    def run(x, t):
        return torch.ops.slidesim.triton_distance(x, t, None, None, 1, [1, 1], [1, 1], 57, 57).mean(dim=(-1, -2))

    compiled = torch.compile(run, fullgraph=True)
    torch.testing.assert_close(compiled(image, bank), run(image, bank))
