"""Float64 brute force of every metric (floor L2): the specification of slidesim and the oracle of its tests.

Every window is materialized ([B, C, H', W', h, w] per template) and each metric is written as its textbook
formula, so the code reads like the table in :mod:`slidesim.metrics`. Memory grows as output × template size:
use it on small problems and to check other engines, not for production.

Examples:
    >>> import numpy as np
    >>> from slidesim import reference
    >>> image = np.zeros((6, 6)); image[2:4, 2:4] = 1.0
    >>> float(reference.similarity(image, image[1:5, 1:5], metric="l1_similarity").max())
    1.0
"""

from __future__ import annotations

import torch

from ._geometry import pad_amounts, pad_image
from ._validate import Canonical, canonicalize, finalize, with_defaults

__all__ = ["all_equal", "compute", "score_windows", "similarity"]


def _windows(padded: torch.Tensor, h: int, w: int, stride: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """All windows of a [B, C, Hp, Wp] tensor as [B, C, H', W', h, w]."""
    span_h, span_w = dilation[0] * (h - 1) + 1, dilation[1] * (w - 1) + 1
    win = padded.unfold(2, span_h, stride[0]).unfold(3, span_w, stride[1])
    return win[..., :: dilation[0], :: dilation[1]]


def all_equal(values: torch.Tensor, support: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """True where every supported value along dims is equal (empty support counts as flat)."""
    big = torch.finfo(values.dtype).max
    hi = torch.where(support, values, torch.full_like(values, -big)).amax(dim=dims)
    lo = torch.where(support, values, torch.full_like(values, big)).amin(dim=dims)
    return hi <= lo  # equal values, or an empty support (hi = −max < lo = +max)


def score_windows(
    metric: str, P: torch.Tensor, T: torch.Tensor, M: torch.Tensor, periods: torch.Tensor | None, joint: bool
) -> torch.Tensor:
    """The textbook formula of ``metric``: windows P [B, C, H', W', h, w] against one template T
    [Bt, C, 1, 1, h, w] with mask M (same rank), per-channel periods [C] (inf: linear) or None; channels summed
    when ``joint`` -> [B, H', W'] (or [B, C, H', W'])."""
    hw = (-2, -1)
    reduce = (1, -2, -1) if joint else hw

    def total(x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=reduce)

    M = M.expand(-1, P.shape[1], -1, -1, -1, -1)
    support = M > 0
    # A zero weight takes its pixel out of the window: even a NaN or inf there must not reach the score (0 · NaN
    # would be NaN), so excluded pixels and template values are replaced before any product.
    # Missing data outranks the degenerate-template rules: a window holding NaN or ±inf under a positive weight
    # scores NaN in the normalized metrics and ccoeff even where the template is flat or zero (an all-inf window
    # would otherwise count as flat, and 0 · inf hides nothing but reads as a number).
    spoiled = (support & ~torch.isfinite(P)).any(dim=reduce)
    P = torch.where(support, P, 0.0)
    T = torch.where(support, T, 0.0)
    if metric in ("sad", "mad", "l1_similarity", "ssd", "ssd_normed"):
        e = P - T
        if periods is not None:
            p = periods.view(1, -1, 1, 1, 1, 1)
            wrapped = torch.remainder(e + p / 2, p) - p / 2
            e = torch.where(torch.isfinite(p), wrapped, e)
        if metric in ("sad", "mad", "l1_similarity"):
            sad = total(M * e.abs())
            n = total(M.expand_as(P))
            return {"sad": sad, "mad": sad / n, "l1_similarity": 1 - sad / n}[metric]
        ssd = total((M * e) ** 2)
        if metric == "ssd":
            return ssd
        den = torch.sqrt(total((M * T) ** 2) * total((M * P) ** 2))
        # Zero energies are the documented degenerate cases; a NaN window stays NaN (hence not `den > 0`).
        out = torch.where(den <= 0, torch.ones_like(ssd), ssd / torch.where(den > 0, den, 1.0)).clamp(max=1.0)
        return torch.where(spoiled, torch.nan, torch.where(ssd == 0, torch.zeros_like(ssd), out))
    if metric in ("ccorr", "ncc"):
        cross = total(M * M * T * P)
        if metric == "ccorr":
            return cross
        den = torch.sqrt(total((M * T) ** 2) * total((M * P) ** 2))
        ncc = torch.where(den <= 0, 0.0, cross / torch.where(den > 0, den, 1.0)).clamp(-1, 1)
        return torch.where(spoiled, torch.nan, ncc)
    # ccoeff / zncc: per-channel means weighted by M, cross and variances weighted by M².
    m_sum = M.sum(dim=hw, keepdim=True)
    safe = torch.where(m_sum > 0, m_sum, 1.0)
    Tc = M * (T - (M * T).sum(dim=hw, keepdim=True) / safe)
    Pc = M * (P - (M * P).sum(dim=hw, keepdim=True) / safe)
    ccoeff = total(Tc * Pc)
    if metric == "ccoeff":
        return torch.where(spoiled, torch.nan, ccoeff)
    flat = all_equal(P, support, hw) | all_equal(T.expand_as(P), support, hw)  # per channel: [B, C, H', W']
    if joint:
        flat = flat.all(dim=1)
    den = torch.sqrt(total(Tc * Tc) * total(Pc * Pc))
    ok = ~flat & ~(den <= 0)
    return torch.where(spoiled, torch.nan, torch.where(ok, ccoeff / torch.where(ok, den, 1.0), 0.0).clamp(-1, 1))


def compute(canon: Canonical) -> torch.Tensor:
    """Scores of a validated problem in float64: [B, T, H', W'], or [B, T, C, H', W'] for channels="separate"."""
    images = canon.image_source.to(torch.float64)  # narrow images convert exactly, without a float32 step
    bank = canon.templates.to(torch.float64)
    _, T, _C, h, w = bank.shape
    H, W = images.shape[-2:]
    (top, bottom), (left, right) = (
        pad_amounts(canon.mode, H, h, canon.dilation[0]),
        pad_amounts(canon.mode, W, w, canon.dilation[1]),
    )
    padded = pad_image(images, (top, bottom, left, right), canon.padding, canon.pad_value)
    P = _windows(padded, h, w, canon.stride, canon.dilation)
    mask = canon.mask.to(torch.float64) if canon.mask is not None else torch.ones(1, 1, 1, h, w, dtype=torch.float64)
    periods = None
    if canon.periods is not None:
        periods = torch.tensor([p if p is not None else float("inf") for p in canon.periods], dtype=torch.float64)
    joint = canon.channels_mode == "joint"
    scores = []
    for t in range(T):
        Tt = bank[:, t, :, None, None]
        Mt = mask[:, min(t, mask.shape[1] - 1), :, None, None]
        scores.append(score_windows(canon.spec.name, P, Tt, Mt, periods, joint))
    out = torch.stack(scores, dim=1)
    if canon.channels_mode == "mean":
        out = out.mean(dim=2)
    return out


def similarity(images, templates, **options) -> object:
    """Float64 brute-force :func:`slidesim.similarity`: same arguments, same layouts, float64 results.

    Args:
        images: As for :func:`slidesim.similarity`.
        templates: As for :func:`slidesim.similarity`.
        **options: Keyword options of :func:`slidesim.similarity` (``method`` and ``memory_limit`` are ignored;
            ``channels_last=True`` takes [H, W, C] and [B, H, W, C] arrays and lays out the scores as
            :func:`slidesim.similarity` does).

    Returns:
        Scores in float64, numpy for numpy input and torch otherwise.
    """
    canon = canonicalize(images, templates, **with_defaults(options))
    return finalize(compute(canon), canon, torch.float64)
