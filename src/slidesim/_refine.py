"""Sub-pixel positions refined on the image data.

A quadratic fitted to the score map is biased wherever the score surface is not quadratic, and on anisotropic
textures the best integer position can even be the wrong pixel. Instead, each peak's window is resampled from the
image (bicubic) at shifted positions and scored against the template with the metric itself; a coarse-to-fine
search over shifts in [−1, 1] px followed by a parabola through the finest grid gives the position.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ._padding import pad_image

_STEPS = (0.5, 0.125, 1 / 32)  # grid spacings of the search, px: each grid spans ±2 steps around the best so far
_GRID = torch.arange(-2, 3, dtype=torch.float64)


def _windows(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bicubic samples of image [C, Hp, Wp] at rows [N, h] × cols [N, w] (pixels) -> [N, C, h, w]."""
    C, Hp, Wp = image.shape
    N, h = rows.shape
    w = cols.shape[1]
    gy = (rows * (2 / max(Hp - 1, 1)) - 1)[:, :, None].expand(N, h, w)
    gx = (cols * (2 / max(Wp - 1, 1)) - 1)[:, None, :].expand(N, h, w)
    grid = torch.stack([gx, gy], dim=-1).reshape(1, N * h, w, 2)
    sampled = F.grid_sample(image[None], grid, mode="bicubic", padding_mode="border", align_corners=True)
    return sampled.reshape(C, N, h, w).permute(1, 0, 2, 3)


def refine_on_data(
    image: torch.Tensor,
    template: torch.Tensor,
    mask: torch.Tensor | None,
    centre: tuple[float, float],
    dilation: tuple[int, int],
    higher: bool,
    options: dict[str, Any],
) -> tuple[float, float, float]:
    """(y, x, score) of the best sub-pixel template centre within one pixel of ``centre``.

    Args:
        image: One image [C, H, W].
        template: Its template [C, h, w] (transformed, for banks of rotations and scales).
        mask: The template's weights [1 or C, h, w], or None.
        centre: Integer peak (y, x) of the template centre in image pixels.
        dilation: Tap spacing (y, x).
        higher: Whether higher scores are better.
        options: Metric options passed to :func:`slidesim.similarity` (metric, channels, circular, padding...).
    """
    from ._similarity import similarity

    h, w = template.shape[-2:]
    span_y, span_x = dilation[0] * (h - 1), dilation[1] * (w - 1)
    margin_y, margin_x = span_y // 2 + 4, span_x // 2 + 4
    padding = options.get("padding", "constant")
    if options.get("mode", "valid") == "valid":
        padding = "replicate"  # only shifts within a pixel of the border sample the padding
    padded = pad_image(
        image.to(torch.float64), (margin_y, margin_y, margin_x, margin_x), padding, options.get("pad_value", 0.0)
    )
    taps_y = torch.arange(h, dtype=torch.float64) * dilation[0] - span_y / 2 + margin_y
    taps_x = torch.arange(w, dtype=torch.float64) * dilation[1] - span_x / 2 + margin_x
    template64 = template.to(torch.float64)[None]
    mask64 = None if mask is None else mask.to(torch.float64)
    metric_options = {key: options[key] for key in ("metric", "channels", "circular") if key in options}
    sign = 1.0 if higher else -1.0

    def scores(dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        rows = centre[0] + dy[:, None] + taps_y[None]
        cols = centre[1] + dx[:, None] + taps_x[None]
        windows = _windows(padded, rows, cols)
        result = similarity(windows, template64, mask=mask64, method="reference", **metric_options)
        return sign * result.reshape(-1)

    best_y, best_x = 0.0, 0.0
    best = float(scores(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))[0])
    for step in _STEPS:
        dy = (best_y + step * _GRID)[:, None].expand(5, 5).reshape(-1)
        dx = (best_x + step * _GRID)[None, :].expand(5, 5).reshape(-1)
        keep = (dy.abs() <= 1) & (dx.abs() <= 1)
        values = torch.full((25,), -torch.inf, dtype=torch.float64)
        values[keep] = scores(dy[keep], dx[keep])
        values = torch.where(torch.isfinite(values), values, -torch.inf)
        index = int(values.argmax())
        if float(values[index]) > best:
            best, best_y, best_x = float(values[index]), float(dy[index]), float(dx[index])
        grid = values.reshape(5, 5)
        if step == _STEPS[-1]:
            row, col = index // 5, index % 5
            best_y += step * _vertex(grid[max(row - 1, 0) : row + 2, col], row)
            best_x += step * _vertex(grid[row, max(col - 1, 0) : col + 2], col)
    return centre[0] + best_y, centre[1] + best_x, sign * best


def _vertex(values: torch.Tensor, index: int) -> float:
    """Offset of the vertex of a parabola through three equally spaced values around ``index`` (0 at edges)."""
    if values.numel() != 3 or index in (0, 4) or not bool(torch.isfinite(values).all()):
        return 0.0
    left, centre, right = (float(v) for v in values)
    curvature = left + right - 2 * centre
    if curvature >= 0:
        return 0.0
    return max(-0.5, min(0.5, (left - right) / (2 * curvature)))
