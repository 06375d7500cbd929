"""The correlation scorer: the precision of the cross term chosen before correlating, and ssd through a
correlation on the engines that transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim.engines import fft
from slidesim.scoring import rescoring


def _sparse_noise_screen(rng: np.random.Generator) -> np.ndarray:
    """A uint8 'screen': a light and a dark flat area with sparse one- and two-step pixels (most windows nearly
    flat, against an image of high contrast) and a textured strip."""
    image = np.full((240, 320), 250, np.int64)
    image[:, 160:] = 5
    image += (rng.random(image.shape) < 0.004) * rng.integers(1, 3, image.shape)
    image[100:110, :] = rng.integers(0, 256, (10, 320))
    return image.astype(np.uint8)


def _spy_on_transforms(monkeypatch) -> list[torch.dtype]:
    """The dtype of each cross-term transform of the FFT engine, in order: the image's, or the kernel's where the
    image is centred and widened as it is read."""
    dtypes: list[torch.dtype] = []
    correlate = fft.fft_correlate

    def spy(image, kernel, *args, shift=None, **kwargs):
        dtypes.append(image.dtype if shift is None else kernel.dtype)
        return correlate(image, kernel, *args, shift=shift, **kwargs)

    monkeypatch.setattr(fft, "fft_correlate", spy)
    return dtypes


def test_the_float64_transform_runs_once_where_rescoring_would_need_it(monkeypatch) -> None:
    """Where a float32 cross term would leave so many near-flat windows to the exact rescoring that it would run
    a float64 transform anyway, the FFT engine correlates in float64 from the start: one transform, not two."""
    dtypes = _spy_on_transforms(monkeypatch)
    monkeypatch.setattr(rescoring.Rescorer, "_float64_cross", lambda *a: pytest.fail("a second transform ran"))
    image = _sparse_noise_screen(np.random.default_rng(2))
    template = image[95:119, 40:80].copy()
    scores = slidesim.similarity(image, template, metric="zncc", method="fft")
    expected = slidesim.reference.similarity(image.astype(np.float64), template.astype(np.float64), metric="zncc")
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-6)
    assert dtypes == [torch.float64]


def test_colour_is_correlated_in_one_transform_without_a_centred_copy(monkeypatch) -> None:
    """Three channels of a large uint8 image (above the size from which centred copies are made a channel at a
    time) go through one float64 correlation, centred as the transforms read them: one inverse transform per
    tile for all channels, not one per channel."""
    dtypes = _spy_on_transforms(monkeypatch)
    rng = np.random.default_rng(3)
    planes = np.stack([_sparse_noise_screen(rng) for _ in range(3)])
    image = np.tile(planes, (1, 3, 3))[None]  # [1, 3, 720, 960]: 5.3 MB a channel in float64
    template = image[:, :, 95:119, 40:80].copy()
    scores = slidesim.similarity(image, template, metric="zncc", method="fft")
    assert dtypes == [torch.float64]
    corner = image[:, :, :200, :300].astype(np.float64)  # the float64 oracle on the whole image would take GBs
    expected = slidesim.reference.similarity(corner, template.astype(np.float64), metric="zncc")
    np.testing.assert_allclose(scores[..., : expected.shape[-2], : expected.shape[-1]], expected, rtol=1e-6, atol=1e-6)


def test_textured_images_keep_the_float32_transform(monkeypatch) -> None:
    """Photograph-like data leave few windows to rescore: the cross term stays in float32."""
    dtypes = _spy_on_transforms(monkeypatch)
    rng = np.random.default_rng(4)
    image = rng.random((120, 150)).astype(np.float32)
    slidesim.similarity(image, image[10:30, 20:44], metric="zncc", method="fft")
    assert dtypes == [torch.float32]


def _cases(rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    screen = np.stack([_sparse_noise_screen(rng), _sparse_noise_screen(rng)])[None]  # [1, 2, 160, 220]
    bank = np.stack([screen[0, :, 95:119, 40:80], screen[0, :, 20:44, 20:60], screen[0, :, 0:24, 150:190]])
    photo = rng.random((2, 3, 70, 90)).astype(np.float32)
    photo_bank = np.stack([photo[0, :, 10:26, 5:29], photo[1, :, 30:46, 50:74]])
    return [("uint8", screen, bank), ("float32", photo, photo_bank), ("bright float64", photo + 1e4, photo_bank + 1e4)]


@pytest.mark.parametrize("metric", ["ssd", "ssd_normed"])
@pytest.mark.parametrize(("mode", "stride", "masked"), [("valid", 1, False), ("same", 2, True), ("full", 1, False)])
def test_ssd_through_a_correlation_is_exact_where_it_matters(metric: str, mode: str, stride: int, masked) -> None:
    """ssd on the FFT engine: integer data exactly, exact matches exactly 0, every other window within the
    compute dtype's relative round-off (1e-9 in float64)."""
    for name, images, bank in _cases(np.random.default_rng(6)):
        mask = None
        if masked:
            mask = (np.random.default_rng(1).random(bank.shape[-2:]) > 0.3).astype(np.float32)
        options = {"metric": metric, "mode": mode, "stride": stride, "mask": mask}
        got = slidesim.similarity(images, bank, method="fft", **options)
        want = slidesim.reference.similarity(images.astype(np.float64), bank.astype(np.float64), **options)
        if name == "uint8" and metric == "ssd":
            np.testing.assert_array_equal(got, want.astype(np.float32))  # integers, rounded once to float32
        rtol = 1e-9 if images.dtype == np.float64 else 4 * np.finfo(np.float32).eps
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * (want.max() if metric == "ssd_normed" else 0))
        assert ((got == 0) == (want == 0)).all()
        assert (want == 0).any() or mode != "valid"


def test_the_planner_takes_large_ssd_templates_to_the_transform() -> None:
    image = np.random.default_rng(3).integers(0, 256, (600, 800)).astype(np.uint8)
    assert slidesim.plan(image, image[100:164, 200:264], metric="ssd").engine == "fft"
    assert slidesim.plan(image, image[100:104, 200:204], metric="ssd").engine != "fft"
