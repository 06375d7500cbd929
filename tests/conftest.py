"""Shared test helpers: engines under test, tolerances by dtype, random problems."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; it must be chosen before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist runs one worker per core (-n auto in pyproject.toml): torch's own thread pool in each would
# oversubscribe the cores, and its spinning threads slow thousands of small calls many times over. numba keeps its
# threads, so the threaded kernels still run on threads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

from slidesim import engines
from slidesim._validate import DEFAULT_OPTIONS, canonicalize
from slidesim.metrics import METRICS

TESTED_ENGINES = [name for name in engines.ENGINES if name != "reference"]
"""Every engine is compared with the reference: a new engine joins the matrix by registering."""


def engines_for(metric: str, gradient: bool = False, **extra: object) -> list[str]:
    """The tested engines that can run ``metric`` (with the ``extra`` options, and a gradient when asked) on CPU
    tensors (an uninstalled optional engine fails loudly)."""
    options = {**DEFAULT_OPTIONS, "metric": metric, **extra}
    problem = canonicalize(torch.zeros(4, 4, requires_grad=gradient), torch.zeros(2, 2), **options).problem
    names = []
    for name in TESTED_ENGINES:
        engine = engines.load(name)
        if engine.ineligible_reason(problem) is None:
            names.append(name)
    return names


ENGINE_METRICS = [(engine, metric) for metric in METRICS for engine in engines_for(metric)]
"""Every (engine, metric) pair the engines claim to support."""

GRADIENT_ENGINE_METRICS = [(engine, metric) for metric in METRICS for engine in engines_for(metric, gradient=True)]
"""Every (engine, metric) pair the engines claim to differentiate."""


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """assert_close tolerances for scores computed from inputs of ``dtype``."""
    if dtype == torch.float64:
        return {"rtol": 1e-9, "atol": 1e-9 * scale}
    return {"rtol": 2e-4, "atol": 2e-4 * scale}


def correlation_case(size: tuple[int, int], tsize: tuple[int, int], per_image: bool) -> tuple[torch.Tensor, ...]:
    """A float32 image batch [2, 3, *size] and a bank [2 if per_image else 1, 5, 3, *tsize] of normal values,
    seeded by the sizes."""
    rng = np.random.default_rng(sum(size) + sum(tsize))
    image = torch.from_numpy(rng.standard_normal((2, 3, *size))).float()
    kernel = torch.from_numpy(rng.standard_normal((2 if per_image else 1, 5, 3, *tsize))).float()
    return image, kernel


def conv2d_bank(image: torch.Tensor, kernel: torch.Tensor, stride, dilation) -> torch.Tensor:
    """Σ_c Σ_taps kernel · image by F.conv2d: image [B, C, H, W], kernel [Bk, T, C, h, w] -> [B, T, H', W'] (grouped
    per image when Bk = B)."""
    if kernel.shape[0] == 1:
        return F.conv2d(image, kernel[0], stride=stride, dilation=dilation)
    B, C, H, W = image.shape
    out = F.conv2d(image.reshape(1, B * C, H, W), kernel.flatten(0, 1), stride=stride, dilation=dilation, groups=B)
    return out.reshape(B, kernel.shape[1], *out.shape[-2:])


def random_problem(
    rng: np.random.Generator,
    *,
    batch: int = 2,
    channels: int = 2,
    size: tuple[int, int] = (13, 11),
    n_templates: int = 3,
    tsize: tuple[int, int] = (4, 3),
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [B, C, H, W] and a bank [T, C, h, w]; templates are partly cut from the images so peaks exist."""
    images = torch.from_numpy(rng.random((batch, channels, *size))).to(dtype)
    bank = torch.from_numpy(rng.random((n_templates, channels, *tsize))).to(dtype)
    h, w = tsize
    if size[0] >= h and size[1] >= w:
        bank[0] = images[0, :, :h, :w]
    return images, bank


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def cut_out() -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """A cut-out as image editors export it, and a scene that holds it: (scene [120, 160, 3] uint8, template
    [31, 31, 4] uint8 RGBA, the template's true centre (y, x) in the scene).

    The template's opaque part is a disc (its rim half transparent). Its transparent pixels still hold what the disc
    was cut from: the scene around (35, 35), which the scene shows without the disc. The scene holds the disc
    composited over other content around (75, 105): matched with its transparent pixels, the template finds the
    place it was cut from.
    """
    rng = np.random.default_rng(3)
    coarse = rng.random((12, 16, 3))
    scene = np.kron(coarse, np.ones((10, 10, 1))) * 0.7 + 0.3 * rng.random((120, 160, 3))
    scene = np.round(255 * scene / scene.max()).astype(np.uint8)
    radius = np.hypot(*(np.mgrid[:31, :31] - 15))
    alpha = np.where(radius <= 9, 255, np.where(radius <= 10, 128, 0)).astype(np.uint8)
    disc = np.round(255 * rng.random((31, 31, 3))).astype(np.uint8)
    colour = np.where(alpha[..., None] > 0, disc, scene[20:51, 20:51])
    weight = alpha[..., None] / 255.0
    spot = scene[60:91, 90:121].astype(np.float64)
    scene[60:91, 90:121] = np.round(weight * disc + (1 - weight) * spot).astype(np.uint8)
    return scene, np.concatenate([colour, alpha[..., None]], axis=-1), (75.0, 105.0)


def python_calls(function) -> int:
    """Python-level calls and generator resumptions made while ``function`` runs: a count of interpreted work that
    does not depend on the machine's speed."""
    count = 0

    def profile(frame, event, arg) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        function()
    finally:
        sys.setprofile(None)
    return count
