"""The reference against hand-computed cases and a plain per-window loop."""

from __future__ import annotations

import numpy as np
import pytest

import slidesim
from slidesim import reference


def test_hand_computed_2x2() -> None:
    image = np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 1.0]])
    template = np.array([[1.0, 2.0], [3.0, 5.0]])
    # windows: [[1,2],[3,4]] and [[2,0],[4,1]]
    assert reference.similarity(image, template, metric="sad").tolist() == [[1.0, 8.0]]
    assert reference.similarity(image, template, metric="mad").tolist() == [[0.25, 2.0]]
    assert reference.similarity(image, template, metric="l1_similarity").tolist() == [[0.75, -1.0]]
    assert reference.similarity(image, template, metric="ssd").tolist() == [[1.0, 22.0]]
    assert reference.similarity(image, template, metric="ccorr").tolist() == [[34.0, 19.0]]
    ncc = reference.similarity(image, template, metric="ncc")
    np.testing.assert_allclose(ncc, [[34 / np.sqrt(39 * 30), 19 / np.sqrt(39 * 21)]])
    # ccoeff: template mean 2.75, window means 2.5 and 1.75
    t = template - 2.75
    w1, w2 = np.array([[1, 2], [3, 4]]) - 2.5, np.array([[2, 0], [4, 1]]) - 1.75
    ccoeff = reference.similarity(image, template, metric="ccoeff")
    np.testing.assert_allclose(ccoeff, [[(t * w1).sum(), (t * w2).sum()]])
    zncc = reference.similarity(image, template, metric="zncc")
    expected = [(t * w).sum() / np.sqrt((t * t).sum() * (w * w).sum()) for w in (w1, w2)]
    np.testing.assert_allclose(zncc, [expected])
    ssd_normed = reference.similarity(image, template, metric="ssd_normed")
    np.testing.assert_allclose(ssd_normed, [[1 / np.sqrt(39 * 30), 22 / np.sqrt(39 * 21)]])


def test_hand_computed_mask_and_circular() -> None:
    image = np.array([[0.9, 0.1, 0.5]])
    template = np.array([[0.1, 0.9]])
    # hue-like channel with period 1: |0.9 - 0.1| = 0.8 the long way, 0.2 the short way
    sad = reference.similarity(image[None, None], template[None, None], metric="sad", circular={0: 1.0})
    np.testing.assert_allclose(sad[0, 0], [[0.4, 0.4]])
    weights = np.array([[2.0, 0.0]])
    sad = reference.similarity(image, template, metric="sad", mask=weights)
    np.testing.assert_allclose(sad, [[1.6, 0.0]])
    mad = reference.similarity(image, template, metric="mad", mask=weights)
    np.testing.assert_allclose(mad, [[0.8, 0.0]])
    ssd = reference.similarity(image, template, metric="ssd", mask=weights)  # OpenCV: Σ (M (I - T))²
    np.testing.assert_allclose(ssd, [[(2 * 0.8) ** 2, 0.0]])


def test_black_template_on_black_region_scores_one() -> None:
    image = np.zeros((5, 5), dtype=np.float32)
    image[0, 0] = 1.0
    template = np.zeros((2, 2), dtype=np.float32)
    l1 = reference.similarity(image, template, metric="l1_similarity")
    assert l1[3, 3] == 1.0 and l1[0, 0] == 0.75


def test_same_and_full_geometry() -> None:
    image = np.arange(20, dtype=np.float64).reshape(4, 5)
    template = np.zeros((3, 2))
    template[1, 0] = 1.0  # picks the pixel under the anchor row (h - 1) // 2 = 1, column (w - 1) // 2 = 0
    same = reference.similarity(image, template, metric="ccorr", mode="same")
    np.testing.assert_array_equal(same, image)
    full = reference.similarity(image, template, metric="ccorr", mode="full")
    assert full.shape == (6, 6)
    np.testing.assert_array_equal(full[1:5, 1:6], image)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize(("H", "W", "h", "w"), [(11, 13, 3, 4), (10, 9, 4, 4), (7, 17, 5, 2)])
def test_l1_similarity_against_per_window_loop(stride, H, W, h, w) -> None:
    rng = np.random.default_rng(H * W + stride)
    image = rng.random((3, H, W))
    template = rng.random((3, h, w))
    rows, cols = range(0, H - h + 1, stride), range(0, W - w + 1, stride)
    loop = np.array([[1 - np.abs(image[:, y : y + h, x : x + w] - template).mean() for x in cols] for y in rows])
    for method in ("reference", "direct"):
        got = slidesim.similarity(image[None], template[None], metric="l1_similarity", stride=stride, method=method)
        np.testing.assert_allclose(got[0, 0], loop, rtol=1e-12)
