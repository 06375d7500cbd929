"""The numba window scores against the reference's formula on gathered windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidesim.reference import score_windows

numba_rescore = pytest.importorskip("slidesim.kernels.numba_rescore")


def _reference(image, bank, mask, index, t0, stride, dilation, metric) -> np.ndarray:
    (sy, sx), (dy, dx) = stride, dilation
    C = image.shape[1]
    h, w = bank.shape[-2:]
    found = []
    for b, t, y, x in index.tolist():
        rows = y * sy + np.arange(h) * dy
        cols = x * sx + np.arange(w) * dx
        window = image[b][:, rows][:, :, cols].to(torch.float64)  # [C, h, w]
        template = bank[b if bank.shape[0] > 1 else 0, t0 + t]
        weights = mask[b if mask.shape[0] > 1 else 0, t0 + t if mask.shape[1] > 1 else 0].expand(C, h, w)
        score = score_windows(metric, window[None, :, None, None], template[None, :, None, None],
                              weights[None, :, None, None], None, True)  # fmt: skip
        found.append(float(score.reshape(-1)[0]))
    return np.array(found)


@pytest.mark.parametrize("metric", list(numba_rescore.METRIC_CODES))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize(("stride", "dilation", "masked"), [((1, 1), (1, 1), False), ((2, 3), (2, 1), True)])
def test_window_scores_agree_with_the_reference(metric, dtype, stride, dilation, masked) -> None:
    rng = np.random.default_rng(5)
    B, C, T, h, w = 2, 3, 4, 5, 4
    image = torch.from_numpy(rng.integers(0, 256, (B, C, 40, 44))).to(dtype)
    image[1, :, :12, :12] = 7  # flat windows, in every channel
    bank = torch.from_numpy(rng.integers(0, 256, (B, T, C, h, w))).to(torch.float64)
    bank[0, 1] = 3.0  # a flat template
    bank[0, 2] = 0.0  # a zero template
    bank[1, 3] = image[1, :, 20 : 20 + h * dilation[0] : dilation[0], 6 : 6 + w * dilation[1] : dilation[1]]
    mask = torch.ones(1, 1, 1, h, w, dtype=torch.float64)
    if masked:
        mask = torch.from_numpy(rng.random((1, T, C, h, w)))
        mask[..., 0, :] = 0.0
    t0 = 1
    index = torch.tensor(
        [[0, 0, 0, 0], [0, 1, 3, 2], [1, 0, 0, 0], [1, 2, 20 // stride[0], 6 // stride[1]], [0, 0, 9, 11],
         [1, 1, 1, 1], [1, 2, 2, 3]],
        dtype=torch.int64,
    )  # fmt: skip
    index[:, 1] = index[:, 1].clamp(max=T - 1 - t0)
    out = np.empty(len(index))
    numba_rescore.window_scores(
        image.numpy(), bank.numpy(), mask.numpy(), index.numpy(), t0, *stride, *dilation,
        numba_rescore.METRIC_CODES[metric], out,
    )  # fmt: skip
    want = _reference(image, bank, mask, index, t0, stride, dilation, metric)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-9 * max(1.0, float(np.abs(want).max())))
