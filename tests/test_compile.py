"""torch.compile(fullgraph=True) over functions that call slidesim.similarity, and the registered operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.library import opcheck

import slidesim
from slidesim import _compiled  # noqa: F401  (registers torch.ops.slidesim.similarity)
from slidesim.kernels import numba_ops  # noqa: F401  (registers torch.ops.slidesim.numba_distance)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = [
    ("sad", {}),  # the numba kernels
    ("mad", {"stride": 2, "circular": {0: 1.0}}),
    ("ssd", {"mask": "weights", "mode": "same", "padding": "reflect"}),
    ("zncc", {}),  # fft: its spectrum products use lazily conjugated views
    ("zncc", {"method": "conv", "channels": "separate"}),
    ("ccoeff", {"dilation": 2, "per_image": True}),
]


def _inputs(device: str, per_image: bool, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.random((2, 2, 19, 17))).to(device, dtype).requires_grad_()
    shape = (2, 3, 2, 5, 4) if per_image else (3, 2, 5, 4)
    bank = torch.from_numpy(rng.random(shape)).to(device, dtype).requires_grad_()
    return images, bank


def _check(device: str, metric: str, options: dict) -> None:
    options = dict(options)
    images, bank = _inputs(device, options.pop("per_image", False))
    if options.get("mask") == "weights":
        options["mask"] = torch.from_numpy(np.random.default_rng(6).random((5, 4)) + 0.1).to(device)

    def loss(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scores = slidesim.similarity(x, t, metric=metric, **options)
        return (scores * torch.linspace(0, 1, scores.shape[-1], device=x.device, dtype=x.dtype)).sum()

    compiled = torch.compile(loss, fullgraph=True)
    got, want = compiled(images, bank), loss(images, bank)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got_grads = torch.autograd.grad(got, (images, bank))
    want_grads = torch.autograd.grad(want, (images, bank))
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("metric", "options"), CASES)
def test_fullgraph_matches_eager_on_cpu(metric, options) -> None:
    _check("cpu", metric, options)


@CUDA
@pytest.mark.parametrize(("metric", "options"), CASES)
def test_fullgraph_matches_eager_on_cuda(metric, options) -> None:
    _check("cuda", metric, options)


def test_fullgraph_two_dimensional_float32_and_uint8() -> None:
    image = torch.rand(30, 28)
    template = image[4:11, 6:12].clone()
    run = torch.compile(lambda x, t: slidesim.similarity(x, t, metric="l1_similarity"), fullgraph=True)
    scores = run(image, template)
    assert scores.shape == (24, 23) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, slidesim.similarity(image, template, metric="l1_similarity"))
    as_bytes = (image * 255).to(torch.uint8)
    scores = run(as_bytes, as_bytes[4:11, 6:12])
    assert scores.dtype == torch.float32 and float(scores[4, 6]) == 1.0


def test_similarity_operator_passes_opcheck() -> None:
    images, bank = _inputs("cpu", per_image=False)
    mask = torch.rand(5, 4, dtype=torch.float64)
    for args in (
        ("sad", [1, 1], [1, 1], "valid", "constant", 0.0, "joint", [0.0, 1.0], "auto", 0, False),
        ("zncc", [2, 1], [1, 1], "same", "reflect", 0.0, "separate", [], "auto", 0, False),
    ):
        opcheck(torch.ops.slidesim.similarity.default, (images, bank, mask if args[0] == "sad" else None, *args))
    last = ("zncc", [1, 1], [1, 1], "valid", "constant", 0.0, "separate", [], "auto", 0, True)
    images, bank = (x.detach().movedim(1, -1).contiguous().requires_grad_() for x in (images, bank))
    opcheck(torch.ops.slidesim.similarity.default, (images, bank, None, *last))


def test_numba_operators_pass_opcheck() -> None:
    image = torch.rand(2, 2, 9, 8, requires_grad=True)
    bank = torch.rand(1, 3, 2, 3, 3, requires_grad=True)
    weights = torch.rand(1, 3, 1, 3, 3)
    opcheck(torch.ops.slidesim.numba_distance.default, (image, bank, weights, [0.0, 1.0], 1, [1, 2], [2, 1], 5, 3))
    grad = torch.rand(2, 3, 5, 3)
    opcheck(
        torch.ops.slidesim.numba_distance_backward.default,
        (grad, image.detach(), bank.detach(), weights, [], 2, [1, 2], [2, 1]),
    )


def test_bad_options_fail_while_tracing_with_the_usual_message() -> None:
    run = torch.compile(lambda x, t: slidesim.similarity(x, t, metric="nope"), fullgraph=True)
    with pytest.raises(Exception, match=r"`metric` must be one of"):
        run(torch.rand(9, 9), torch.rand(3, 3))


def test_fullgraph_channels_last_matches_eager() -> None:
    rng = np.random.default_rng(9)
    images = torch.from_numpy(rng.random((2, 19, 17, 2))).requires_grad_()  # [B, H, W, C]
    bank = torch.from_numpy(rng.random((3, 5, 4, 2))).requires_grad_()  # [T, h, w, C]

    def loss(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scores = slidesim.similarity(x, t, metric="zncc", channels="separate", channels_last=True)
        return (scores * torch.linspace(0, 1, scores.shape[-1], dtype=x.dtype)).sum()

    got, want = torch.compile(loss, fullgraph=True)(images, bank), loss(images, bank)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(torch.autograd.grad(got, (images, bank)), torch.autograd.grad(want, (images, bank)), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    one = torch.compile(lambda x, t: slidesim.similarity(x, t, channels_last=True), fullgraph=True)
    scores = one(images[0].detach(), bank[0].detach())
    assert scores.shape == (15, 14)
    torch.testing.assert_close(scores, slidesim.similarity(images[0].detach(), bank[0].detach(), channels_last=True))
