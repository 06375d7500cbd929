"""The metric table's names: OpenCV's method constants resolve to the metric with OpenCV's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim.metrics import resolve_metric

# cv2's values, written out so the mapping is checked without OpenCV installed
OPENCV_CONSTANTS = {
    "TM_SQDIFF": 0,
    "TM_SQDIFF_NORMED": 1,
    "TM_CCORR": 2,
    "TM_CCORR_NORMED": 3,
    "TM_CCOEFF": 4,
    "TM_CCOEFF_NORMED": 5,
}


@pytest.mark.parametrize(("name", "number"), list(OPENCV_CONSTANTS.items()))
def test_opencv_method_constants_name_the_metric_with_opencvs_numbers(name, number) -> None:
    spec = resolve_metric(number)
    assert spec.opencv == name
    assert spec is resolve_metric(name)
    assert resolve_metric(np.int64(number)) is spec  # an integer read from an array or a config
    cv2 = pytest.importorskip("cv2")
    assert getattr(cv2, name) == number


def test_the_public_calls_take_opencv_constants() -> None:
    rng = np.random.default_rng(3)
    image = rng.random((40, 50)).astype(np.float32)
    template = image[10:19, 20:31].copy()
    for name, number in OPENCV_CONSTANTS.items():
        np.testing.assert_array_equal(
            slidesim.similarity(image, template, metric=number), slidesim.similarity(image, template, metric=name)
        )
    found = slidesim.match(image, template, metric=OPENCV_CONSTANTS["TM_SQDIFF"])  # minimized, as its name
    assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (14.0, 25.0)
    scores = slidesim.similarity(image, template, metric=0)
    assert int(slidesim.find_peaks(scores, metric=0, subpixel=False).x[0]) == 20
    assert "zncc" in slidesim.explain(image, template, metric=5)
    compiled = torch.compile(lambda i, t: slidesim.similarity(i, t, metric=5), fullgraph=True)
    torch.testing.assert_close(
        compiled(torch.from_numpy(image), torch.from_numpy(template)),
        slidesim.similarity(torch.from_numpy(image), torch.from_numpy(template), metric="zncc"),
    )


@pytest.mark.parametrize(
    ("metric", "error", "text"),
    [
        (6, slidesim.SlidesimValueError, r"OpenCV's method constants 0 \(cv2.TM_SQDIFF\).*got 6"),
        (-1, slidesim.SlidesimValueError, "got -1"),
        (True, slidesim.SlidesimTypeError, "got bool"),
        (5.0, slidesim.SlidesimTypeError, "or an OpenCV method constant such as cv2.TM_CCOEFF_NORMED; got float"),
    ],
)
def test_other_numbers_are_refused_with_the_constants(metric, error, text) -> None:
    with pytest.raises(error, match=text):
        resolve_metric(metric)
