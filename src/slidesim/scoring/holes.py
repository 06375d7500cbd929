"""NaN pixels as holes (floor L3), for engines whose sums would spread them (the FFT, conv and numba correlation
engines).

An FFT, a summed-area table or a running sum carries a NaN into every output it touches, far beyond the windows
that hold it. Such engines score a copy of the padded images whose NaN pixels are filled with their channel's mean
of finite pixels (the centred value there is 0, so no rounding bound grows); :func:`mark_holes` then gives NaN to
exactly the windows that hold a NaN under a positive mask weight, which are the windows that
:mod:`slidesim.reference` scores NaN. Finding them costs a box sum of the NaN map (a summed-area table) and, with
a mask, a conv2d of the NaN map with the masks' support (whole counts, exact far below 2²⁴). Infinities are not
holes: the reference scores their windows ±inf or NaN depending on the arithmetic, so images with ±inf stay with
the tap-by-tap engines.

Example:
    >>> import torch, slidesim
    >>> image = torch.rand(1, 1, 64, 64)
    >>> image[0, 0, 30, 30] = float("nan")
    >>> scores = slidesim.similarity(image, image[:, :, 8:16, 8:16], method="fft")
    >>> int(scores.isnan().sum())  # the 8 × 8 windows over (30, 30)
    64
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._geometry import Border, Geometry
from ..kernels.boxes import box_sums

_COUNT_BYTES = 64 * 2**20  # float32 hole counts of masked windows, at a time


def finite_channel_mean(image: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per (image, channel) mean of the finite pixels, [B, C, 1, 1] in ``dtype`` (default: the image's), detached:
    the centring shift, and the value that fills holes.

    One channel at a time, so that the temporaries stay one plane large. Integer images (8- and 16-bit, as a
    call stores them) are summed as their conversion to ``dtype`` would be, one plane at a time: the same shift,
    to the last bit, as from converted images.
    """
    data = image.detach()
    dtype = data.dtype if dtype is None else dtype
    means = torch.zeros(data.shape[0], data.shape[1], 1, 1, dtype=torch.float64, device=data.device)
    for c in range(data.shape[1]):
        plane = data[:, c] if data.is_floating_point() else data[:, c].to(dtype)
        total = plane.sum(dim=(-1, -2))  # any shift near the mean centres well enough: the compute dtype will do
        if bool(torch.isfinite(total).all()):  # a finite sum means finite pixels
            means[:, c, 0, 0] = total.to(torch.float64) / (plane.shape[-1] * plane.shape[-2])
            continue
        finite = torch.isfinite(plane)
        total = torch.where(finite, plane, 0).sum(dim=(-1, -2), dtype=torch.float64)
        means[:, c, 0, 0] = total / finite.sum(dim=(-1, -2)).clamp_min(1)
    return means.to(dtype)


def fill_holes(image: torch.Tensor, border: Border) -> tuple[torch.Tensor, torch.Tensor]:
    """(NaN map [B, C, Hp, Wp] of the padded images, the images with their NaN pixels filled by their channel's
    mean of finite pixels inside ``border``: the centring shift, where the centred value is 0 and no rounding
    bound grows)."""
    holes = torch.isnan(image.detach())
    return holes, torch.where(holes, finite_channel_mean(border.inner(image)), image)


def mark_infinite_means(
    scores: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None, geom: Geometry
) -> torch.Tensor:
    """ccoeff ``scores`` [B, T, H', W'] with NaN where a window of image [B, C, Hp, Wp] holds ±inf under a positive
    weight of mask [Bm, Tm, Cm, h, w] (None: every tap).

    Σ W (T − m_T)(I − m_I) needs the window mean m_I, which is infinite there, so the reference scores NaN; the
    engines fold m_I into a kernel that sums to zero, which would give ±inf instead.
    """
    infinite = torch.isinf(image.detach())
    if not bool(infinite.any()):
        return scores
    return mark_holes(scores, infinite, mask, geom, separate=False)


def mark_holes(
    scores: torch.Tensor, holes: torch.Tensor, mask: torch.Tensor | None, geom: Geometry, separate: bool
) -> torch.Tensor:
    """``scores`` with NaN where a window holds a hole under a positive weight.

    Args:
        scores: [B, T, H', W'] (channels joint or mean), or [B, T, C, H', W'] when ``separate``.
        holes: [B, C, Hp, Wp] bool, the NaN pixels of the padded images.
        mask: [Bm, Tm, Cm, h, w] weights of templates t0:t1 of ``scores`` (None: every tap counts).
        geom: Where the windows are.
        separate: Whether each channel has its own scores (then only its own holes count).
    """
    support = mask > 0 if mask is not None else None
    if separate:
        per_channel = [_holed_windows(holes[:, c : c + 1], _channel(support, c), geom) for c in range(holes.shape[1])]
        spoiled = torch.stack(torch.broadcast_tensors(*per_channel), dim=2)  # [B, 1|Tm, H', W'] each
    else:  # a joint score, or a mean of per-channel scores, is NaN when any channel's window holds a hole
        spoiled = _holed_windows(holes, support, geom)
    if scores.requires_grad:
        return scores.masked_fill(spoiled, float("nan"))
    return scores.masked_fill_(spoiled, float("nan"))  # in place: a fresh output-sized map is slow to fault in


def _channel(support: torch.Tensor | None, c: int) -> torch.Tensor | None:
    if support is None or support.shape[2] == 1:
        return support
    return support[:, :, c : c + 1]


def _holed_windows(holes: torch.Tensor, support: torch.Tensor | None, geom: Geometry) -> torch.Tensor:
    """Windows that hold a hole under their support: holes [B, C, Hp, Wp] bool, support [Bm, Tm, 1|C, h, w] bool
    (None: every tap), Bm ∈ {1, B} -> [B, 1|Tm, H', W'] bool."""
    any_channel = holes.any(dim=1, keepdim=True).to(torch.float64)
    # summed-area box sums: O(H·W) whatever the template size, unlike max_pool2d
    near = box_sums(any_channel, geom.template_size, geom, (geom.out_height, geom.out_width)) > 0.5  # whole counts
    if support is None:
        return near
    B, C = holes.shape[:2]
    Bm, Tm = support.shape[:2]
    spoiled = torch.zeros(B, Tm, geom.out_height, geom.out_width, dtype=torch.bool, device=holes.device)
    rows, cols = near.any(dim=(0, 1, 3)).nonzero()[:, 0], near.any(dim=(0, 1, 2)).nonzero()[:, 0]
    if len(rows) == 0:
        return spoiled
    # count only over the outputs' bounding box of windows near a hole: a few holes cost a small conv2d
    (y0, y1), (x0, x1) = (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)
    (sy, sx), (dy, dx), (h, w) = geom.stride, geom.dilation, geom.template_size
    region = holes[:, :, y0 * sy : (y1 - 1) * sy + dy * (h - 1) + 1, x0 * sx : (x1 - 1) * sx + dx * (w - 1) + 1]
    weights = support.expand(Bm, Tm, C, -1, -1).to(torch.float32)
    chunk = max(1, _COUNT_BYTES // (4 * (y1 - y0) * (x1 - x0)))
    for b in range(B):
        plane = region[b : b + 1].to(torch.float32)
        kernel = weights[b if Bm > 1 else 0]
        for t0 in range(0, Tm, chunk):
            count = F.conv2d(plane, kernel[t0 : t0 + chunk], stride=geom.stride, dilation=geom.dilation)
            spoiled[b : b + 1, t0 : t0 + chunk, y0:y1, x0:x1] = count > 0.5  # whole counts: rounding stays far below
    return spoiled
