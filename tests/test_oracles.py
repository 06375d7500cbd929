"""slidesim against other libraries: cv2.matchTemplate, skimage.feature.match_template, torch conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import slidesim

from .conftest import ENGINE_METRICS, TESTED_ENGINES, engines_for

cv2 = pytest.importorskip("cv2")
skimage_feature = pytest.importorskip("skimage.feature")

OPENCV_METHODS = {
    "ssd": "TM_SQDIFF",
    "ssd_normed": "TM_SQDIFF_NORMED",
    "ccorr": "TM_CCORR",
    "ncc": "TM_CCORR_NORMED",
    "ccoeff": "TM_CCOEFF",
    "zncc": "TM_CCOEFF_NORMED",
}
OPENCV_PAIRS = [
    *((e, m) for e, m in ENGINE_METRICS if m in OPENCV_METHODS),
    *(("reference", m) for m in OPENCV_METHODS),
]


def _opencv(image_hwc: np.ndarray, template_hwc: np.ndarray, method: str, mask=None) -> np.ndarray:
    return cv2.matchTemplate(image_hwc, template_hwc, getattr(cv2, method), mask=mask)


def _chw(array_hwc: np.ndarray) -> np.ndarray:
    return array_hwc.transpose(2, 0, 1)[None] if array_hwc.ndim == 3 else array_hwc


@pytest.mark.parametrize(("engine", "metric"), OPENCV_PAIRS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_opencv(engine, metric, channels, dtype, masked) -> None:
    rng = np.random.default_rng(7)
    shape = (23, 21, channels) if channels > 1 else (23, 21)
    if dtype == np.uint8:
        image = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        image = (rng.random(shape) * 4 - 1).astype(np.float32)
    template = image[5:11, 7:12].copy()
    template = template + (
        rng.integers(0, 3, template.shape) if dtype == np.uint8 else rng.random(template.shape) * 0.1
    )
    template = template.astype(dtype)
    mask = None
    if masked:
        mask = rng.random(template.shape[:2]).astype(np.float32) + 0.05
        if dtype == np.uint8:
            mask = (mask > 0.4).astype(np.uint8)
    want = _opencv(image, template, OPENCV_METHODS[metric], mask)
    ours_image = _chw(image) if channels > 1 else image
    ours_template = _chw(template) if channels > 1 else template
    got = slidesim.similarity(ours_image, ours_template, metric=OPENCV_METHODS[metric], mask=mask, method=engine)
    got = got[0, 0] if channels > 1 else got
    scale = max(1.0, float(np.abs(want).max()))
    finite = np.isfinite(want)
    if metric == "ssd_normed" and masked:
        # OpenCV caps TM_SQDIFF_NORMED at 1 on its unmasked path only; slidesim caps on both.
        assert np.all(got[finite & (want >= 1)] == 1.0)
        finite &= want < 1
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("engine", [*TESTED_ENGINES, "reference"])
def test_opencv_masked_three_channel_mask(engine) -> None:
    rng = np.random.default_rng(8)
    image = rng.random((19, 20, 3)).astype(np.float32)
    template = image[4:9, 6:12].copy()
    mask = (rng.random(template.shape) + 0.1).astype(np.float32)
    for metric, method in OPENCV_METHODS.items():
        if (engine, metric) not in OPENCV_PAIRS:
            continue
        want = _opencv(image, template, method, mask)
        got = slidesim.similarity(
            _chw(image), _chw(template), metric=metric, mask=mask.transpose(2, 0, 1), method=engine
        )
        if metric == "ssd_normed":
            want = np.minimum(want, 1.0)  # see test_matches_opencv
        np.testing.assert_allclose(got[0, 0], want, rtol=1e-4, atol=2e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("engine", [*engines_for("zncc"), "reference"])
@pytest.mark.parametrize("tsize", [(5, 7), (4, 6), (6, 5)])
def test_matches_skimage(engine, tsize) -> None:
    rng = np.random.default_rng(9)
    image = rng.random((30, 27))
    template = image[8 : 8 + tsize[0], 5 : 5 + tsize[1]] + rng.random(tsize) * 0.2
    want = skimage_feature.match_template(image, template, pad_input=False)
    got = slidesim.similarity(image, template, metric="zncc", method=engine)
    np.testing.assert_allclose(got, want, atol=1e-9)

    # pad_input=True pads with zeros and centres windows; skimage anchors the template at h // 2 while slidesim
    # anchors at (h - 1) // 2, so even-sized templates are shifted by one pixel along that axis.
    want = skimage_feature.match_template(image, template, pad_input=True)
    got = slidesim.similarity(image, template, metric="zncc", mode="full", method=engine)
    off_y, off_x = tsize[0] // 2, tsize[1] // 2
    # full-mode output (y, x) starts at image row y - (h - 1); skimage's (y, x) starts at y - h // 2.
    start_y, start_x = tsize[0] - 1 - off_y, tsize[1] - 1 - off_x
    expected = got[start_y : start_y + image.shape[0], start_x : start_x + image.shape[1]]
    np.testing.assert_allclose(expected, want, atol=1e-9)
    same = slidesim.similarity(image, template, metric="zncc", mode="same", method=engine)
    shift_y, shift_x = off_y - (tsize[0] - 1) // 2, off_x - (tsize[1] - 1) // 2
    np.testing.assert_allclose(
        same[: image.shape[0] - shift_y, : image.shape[1] - shift_x], want[shift_y:, shift_x:], atol=1e-9
    )


@pytest.mark.parametrize("engine", [*engines_for("ccorr"), "reference"])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), ((1, 3), (2, 1))])
def test_ccorr_matches_conv2d_with_many_kernels(engine, stride, dilation) -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 17, 19, dtype=torch.float64)
    kernels = torch.randn(12, 3, 3, 4, dtype=torch.float64)
    want = F.conv2d(images, kernels, stride=stride, dilation=dilation)
    got = slidesim.similarity(images, kernels, metric="ccorr", stride=stride, dilation=dilation, method=engine)
    torch.testing.assert_close(got, want)
    per_image = torch.randn(2, 5, 3, 3, 4, dtype=torch.float64)
    grouped = F.conv2d(images.reshape(1, 6, 17, 19), per_image.reshape(10, 3, 3, 4), groups=2)
    got = slidesim.similarity(images, per_image, metric="ccorr", method=engine)
    torch.testing.assert_close(got, grouped.reshape(2, 5, *grouped.shape[-2:]))
    separate = slidesim.similarity(
        images, kernels, metric="ccorr", channels="separate", stride=stride, dilation=dilation, method=engine
    )
    depthwise = torch.stack(
        [F.conv2d(images[:, c : c + 1], kernels[:, c : c + 1], stride=stride, dilation=dilation) for c in range(3)],
        dim=2,
    )
    torch.testing.assert_close(separate, depthwise)
