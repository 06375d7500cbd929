"""The numba fold of a transformed bank's score maps against the torch fold of ``matching._fold_scores``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidesim import matching

pytest.importorskip("numba")


@pytest.mark.parametrize("higher", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_matches_the_torch_fold(higher: bool, dtype, monkeypatch) -> None:
    """Chunks of 2 templates × 3 transforms folded in uneven chunks: the same best scores and transform indices as
    the torch fold, ties keeping the first transform and NaN never winning."""
    from slidesim.kernels.numba_fold import fold_best

    rng = np.random.default_rng(3)
    B, T, R, H, W = 2, 2, 3, 5, 37
    scores = torch.from_numpy(rng.integers(0, 4, (B, T * R, H, W)).astype(np.float64)).to(dtype)  # many ties
    scores[0, 1, 2, :9] = torch.nan
    scores[1, :, 0, 0] = torch.nan  # every member NaN at one place: the best stays the worst value
    worst = -torch.inf if higher else torch.inf
    found = {}
    for name in ("numba", "torch"):
        best = torch.full((B, T, H, W), worst, dtype=dtype)
        which = torch.zeros(B, T, H, W, dtype=torch.int64)
        for j0, j1 in ((0, 1), (1, 4), (4, 6)):
            if name == "numba":
                fold_best(scores[:, j0:j1], j0, R, best, which, higher)
            else:
                monkeypatch.setattr(matching, "fused_statistics_available", lambda: False)
                matching._fold_scores(scores[:, j0:j1], j0, j1, R, best, which, higher)
        found[name] = (best, which)
    assert torch.equal(found["numba"][0], found["torch"][0]) and torch.equal(found["numba"][1], found["torch"][1])
    assert found["numba"][1].unique().tolist() == [0, 1, 2]
    assert float(found["numba"][0][1, 0, 0, 0]) == worst
