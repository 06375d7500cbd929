"""The numba engine's kernel choices: each path (one thread for small outputs, threads for large ones; register
tiles of one to five templates and the groups a bank splits into; one band of output rows or many; unit and larger
strides; float32 and float64 vectors) against the float64 reference.

The engine picks a kernel by the amount of work and sizes bands by the row width, so both thresholds are moved to
force each path on small shapes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import slidesim
from slidesim.kernels import numba_ops

from ..conftest import tolerance

pytest.importorskip("numba")


@pytest.fixture(params=["one thread", "threads"])
def parallel_work(request, monkeypatch) -> str:
    monkeypatch.setattr(numba_ops, "_PARALLEL_WORK", 10**12 if request.param == "one thread" else 0)
    return request.param


@pytest.fixture(params=["one band", "bands of one row"])
def band_elements(request, monkeypatch) -> str:
    monkeypatch.setattr(numba_ops, "_BAND_ELEMENTS", 4096 if request.param == "one band" else 1)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["sad", "ssd", "ccorr"])  # ccorr: the product tiles, four templates a group
@pytest.mark.parametrize("n_templates", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize(
    ("size", "tsize", "stride", "dilation"),
    [
        ((17, 23), (5, 7), 1, 1),
        ((17, 23), (5, 7), 2, 1),
        ((19, 16), (4, 3), (3, 2), (2, 3)),
        ((12, 30), (1, 9), (1, 4), 1),
        ((9, 9), (9, 9), 1, 1),
    ],
)
def test_paths_match_reference(
    parallel_work, band_elements, dtype, metric, n_templates, size, tsize, stride, dilation
) -> None:
    rng = np.random.default_rng(7)
    images = torch.from_numpy(rng.random((2, 3, *size))).to(dtype)
    bank = torch.from_numpy(rng.random((n_templates, 3, *tsize))).to(dtype)
    options = {"metric": metric, "stride": stride, "dilation": dilation}
    got = slidesim.similarity(images, bank, method="numba", **options)
    want = slidesim.reference.similarity(images, bank, **options)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **tolerance(dtype, float(want.abs().max())))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("metric", ["mad", "zncc"])
def test_per_image_banks_on_each_path(parallel_work, band_elements, stride, metric) -> None:
    rng = np.random.default_rng(8)
    images = torch.from_numpy(rng.random((3, 2, 15, 14))).double()
    banks = torch.from_numpy(rng.random((3, 5, 2, 4, 5))).double()
    got = slidesim.similarity(images, banks, metric=metric, stride=stride, method="numba")
    want = slidesim.reference.similarity(images, banks, metric=metric, stride=stride)
    torch.testing.assert_close(got, want, **tolerance(torch.float64))


def test_nan_reaches_only_its_windows(parallel_work, band_elements) -> None:
    images = torch.rand(1, 1, 12, 13)
    images[0, 0, 5, 6] = float("nan")
    bank = torch.rand(2, 1, 3, 4)
    got = slidesim.similarity(images, bank, metric="sad", stride=2, method="numba")
    want = slidesim.reference.similarity(images, bank, metric="sad", stride=2)
    assert torch.equal(got.isnan(), want.isnan())
    assert got.isnan().any()
    torch.testing.assert_close(got.nan_to_num().double(), want.nan_to_num(), rtol=2e-4, atol=1e-4)


def test_threaded_kernel_runs_on_threads_after_a_serial_call() -> None:
    """The serial and threaded tiled kernels must not share compiled code through numba's disk cache.

    Run twice in fresh processes (the second loads both kernels from the cache): after a small call (one thread)
    and a large one, numba's threading layer must have started, which only a threaded kernel does.
    """
    script = """
import torch, numba, slidesim
slidesim.similarity(torch.rand(1, 1, 20, 20), torch.rand(1, 1, 3, 3), metric="sad", method="numba")
slidesim.similarity(torch.rand(1, 1, 600, 600), torch.rand(1, 1, 16, 16), metric="sad", method="numba")
print(numba.threading_layer())
"""
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()


MASKS = ["shared binary", "shared weights", "per-template binary", "per-template weights", "per-image binary"]


def _mask(kind: str, rng: np.random.Generator, n_images: int, n_templates: int, size: tuple[int, int]) -> torch.Tensor:
    shape = {
        "shared binary": size,
        "shared weights": size,
        "per-template binary": (n_templates, 1, *size),
        "per-template weights": (n_templates, 3, *size),
        "per-image binary": (n_images, n_templates, 1, *size),  # with a per-image bank
    }[kind]
    values = rng.random(shape)
    return torch.from_numpy(values if kind.endswith("weights") else (values > 0.4) * 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("metric", ["sad", "ssd"])
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("n_templates", [1, 3, 4, 6])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), ((3, 2), (2, 3))])
def test_masks_run_in_tiles_and_match_reference(
    parallel_work, band_elements, monkeypatch, dtype, metric, kind, n_templates, stride, dilation
) -> None:
    rng = np.random.default_rng(9)
    images = torch.from_numpy(rng.random((2, 3, 19, 23))).to(dtype)
    banks = (2, n_templates) if kind == "per-image binary" else (n_templates,)
    bank = torch.from_numpy(rng.random((*banks, 3, 4, 5))).to(dtype)
    mask = _mask(kind, rng, 2, n_templates, (4, 5)).to(dtype)
    options = {"metric": metric, "stride": stride, "dilation": dilation, "mask": mask}

    def no_general(*args):
        raise AssertionError("finite images with a mask must run in the register tiles")

    monkeypatch.setattr(numba_ops._kernels(), "distance_general", no_general)
    got = slidesim.similarity(images, bank, method="numba", **options)
    want = slidesim.reference.similarity(images, bank, **options)
    torch.testing.assert_close(got.double(), want, **tolerance(dtype, float(want.abs().max())))


@pytest.mark.parametrize("pixel", ["nan", "inf", "overflowing difference"])
@pytest.mark.parametrize("kind", MASKS)
def test_non_finite_difference_under_a_zero_weight_is_skipped(parallel_work, kind, pixel) -> None:
    """A zero weight drops its tap whatever the difference under it. Shared masks drop their zero taps before the
    tiles run; per-template and per-image masks, whose zeros differ between templates, go to the general kernel
    when a difference is not finite (in the tiles, 0 · NaN and 0 · inf would be NaN)."""
    rng = np.random.default_rng(10)
    images = torch.from_numpy(rng.random((2, 3, 12, 13))).float()
    banks = (2, 3) if kind == "per-image binary" else (3,)
    bank = torch.from_numpy(rng.random((*banks, 3, 4, 5))).float()
    mask = _mask(kind, rng, 2, 3, (4, 5)).float()
    shared = kind.startswith("shared")
    mask[..., 0, 0] = 0.0 if shared else 1.0
    if kind.startswith("per-template"):
        mask[0, ..., 0, 0] = 0.0  # template 0 only
    if kind.startswith("per-image"):
        mask[:, 0, ..., 0, 0] = 0.0
    # only output (0, 0) reads pixel (0, 0), through tap (0, 0)
    images[:, :, 0, 0] = {"nan": float("nan"), "inf": float("inf"), "overflowing difference": 3e38}[pixel]
    if pixel == "overflowing difference":  # 3e38 − (−3e38) overflows; every other difference is finite
        bank[..., 0, :, 0, 0] = -3e38
    got = slidesim.similarity(images, bank, metric="sad", mask=mask, method="numba")
    clean = slidesim.similarity(images.nan_to_num(0.0, 0.0), bank, metric="sad", mask=mask, method="numba")
    skipped = got if shared else got[:, :1]
    assert skipped.isfinite().all()
    torch.testing.assert_close(skipped, clean if shared else clean[:, :1])
    if pixel == "nan" and not shared:
        assert got[:, 1:, 0, 0].isnan().all() and not got[:, 1:, 1:, 1:].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_templates", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("weighted", [False, True])
def test_tiles_never_read_the_padding_into_an_output(band_elements, dtype, n_templates, weighted) -> None:
    """The last tile of a band computes past the band's last output, into the planes' padding: with the padding
    NaN, a kept output that read it would be NaN."""
    rng = np.random.default_rng(11)
    for size, tsize, stride in [((13, 17), (3, 4), (1, 1)), ((20, 11), (5, 2), (2, 3)), ((9, 9), (9, 9), (1, 1))]:
        images = rng.random((2, 2, *size)).astype(np.float32 if dtype == torch.float32 else np.float64)
        bank = rng.random((1, n_templates, 2, *tsize)).astype(images.dtype)
        scale = rng.random((1, n_templates, 2 * tsize[0] * tsize[1])).astype(images.dtype) if weighted else None
        kernels = numba_ops._kernels()
        planes, length, Hq, Wq = numba_ops._phase_planes(images, stride)
        planes[2 * length :] = np.nan
        offsets = numba_ops._tap_offsets(2, *tsize, *stride, 1, 1, Hq, Wq)
        group = kernels.MAX_WEIGHTED_GROUP if weighted else kernels.MAX_GROUP
        values = numba_ops._grouped(bank.reshape(1, n_templates, -1), group)
        weights = numba_ops._grouped(scale, group) if weighted else values[:1]
        Ho, Wo = (size[0] - tsize[0]) // stride[0] + 1, (size[1] - tsize[1]) // stride[1] + 1
        out = np.empty((2, n_templates, Ho, Wo), dtype=images.dtype)
        band = max(1, numba_ops._BAND_ELEMENTS // Wq)
        kernels.distance_tiles_serial(planes, length, values, weights, offsets, 1, int(weighted), group, Wq, band, out)
        mask = torch.from_numpy(scale.reshape(n_templates, 2, *tsize)) if weighted else None
        want = slidesim.reference.similarity(
            torch.from_numpy(images), torch.from_numpy(bank[0]), metric="sad", stride=stride, mask=mask
        )
        assert np.isfinite(out).all()
        torch.testing.assert_close(torch.from_numpy(out).double(), want, **tolerance(dtype, float(want.max())))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_templates", [1, 2, 3, 4, 5, 7])
def test_product_tiles_never_read_the_padding_into_an_output(band_elements, dtype, n_templates) -> None:
    """As above, for the correlations' product tiles (their widths differ from the distances')."""
    rng = np.random.default_rng(12)
    for size, tsize, stride in [((13, 17), (3, 4), (1, 1)), ((20, 11), (5, 2), (2, 3)), ((9, 9), (9, 9), (1, 1))]:
        images = rng.random((2, 2, *size)).astype(np.float32 if dtype == torch.float32 else np.float64)
        bank = rng.random((1, n_templates, 2, *tsize)).astype(images.dtype)
        kernels = numba_ops._kernels()
        planes, length, Hq, Wq = numba_ops._phase_planes(images, stride)
        planes[2 * length :] = np.nan
        offsets = numba_ops._tap_offsets(2, *tsize, *stride, 1, 1, Hq, Wq)
        group = kernels.MAX_PRODUCT_GROUP
        values = numba_ops._grouped(bank.reshape(1, n_templates, -1), group)
        Ho, Wo = (size[0] - tsize[0]) // stride[0] + 1, (size[1] - tsize[1]) // stride[1] + 1
        out = np.empty((2, n_templates, Ho, Wo), dtype=images.dtype)
        band = max(1, numba_ops._BAND_ELEMENTS // Wq)
        kernels.correlate_tiles_serial(planes, length, values, offsets, group, Wq, band, out)
        want = slidesim.reference.similarity(
            torch.from_numpy(images), torch.from_numpy(bank[0]), metric="ccorr", stride=stride
        )
        assert np.isfinite(out).all()
        torch.testing.assert_close(torch.from_numpy(out).double(), want, **tolerance(dtype, float(want.max())))
