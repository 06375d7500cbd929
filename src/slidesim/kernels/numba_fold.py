"""numba kernel (floor L2) that folds a chunk of a transformed bank's score maps into the best score and the index
of the transform that gave it, per template and position, in one pass.

The torch fold (:func:`slidesim.matching.best_of_bank` without numba) takes four passes per member: a comparison,
a select of the scores, a select of the indices, and the writes; a scale search of 9 members on a 1024² image
spent about 15 ms there, as long as two of its transforms.

Imported only when numba is installed.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._threads import numba_threads


def fold_best(
    scores: torch.Tensor, first: int, per_template: int, best: torch.Tensor, which: torch.Tensor, higher: bool
):
    """Fold scores [B, n, H', W'] of bank members first..first + n (template t under transform r at member
    t·per_template + r) into best [B, T, H', W'] and which [B, T, H', W'] int64, in place: a member's score
    replaces the best where it is strictly better (so ties keep the first transform, and NaN never wins).

    Args:
        scores: The chunk's maps, CPU, in ``best``'s dtype.
        first: Bank index of the chunk's first member.
        per_template: Transforms per template.
        best: Best scores so far, contiguous.
        which: Index of the transform of each best score, contiguous.
        higher: Whether higher scores are better.
    """
    numba_threads()
    _fold(scores.contiguous().numpy(), first, per_template, best.numpy(), which.numpy(), higher)


@numba.njit(parallel=True, cache=True)
def _fold(scores: np.ndarray, first: int, per_template: int, best: np.ndarray, which: np.ndarray, higher: bool):
    B, n, H, W = scores.shape
    for task in numba.prange(B * H):  # rows of every image, each read and written once per member
        b, y = task // H, task % H
        for k in range(n):
            t, r = (first + k) // per_template, (first + k) % per_template
            for x in range(W):  # branch-free, so that it vectorizes
                s = scores[b, k, y, x]
                old = best[b, t, y, x]
                better = s > old if higher else s < old
                best[b, t, y, x] = s if better else old
                which[b, t, y, x] = r if better else which[b, t, y, x]
