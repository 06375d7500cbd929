"""Pictures of what match() found (floor L7): score maps with a colour bar, and matches drawn as (rotated) boxes on
the image.

matplotlib is optional (``pip install 'slidesim[cli]'``) and imported on first use, with the non-interactive Agg
backend so that pictures are written on machines without a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import SlidesimValueError

__all__ = ["box_corners", "draw_heatmap", "draw_overlay"]

_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:
        raise SlidesimValueError("drawing pictures needs matplotlib: pip install 'slidesim[cli]'") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def box_corners(y: float, x: float, h: int, w: int, angle: float, scale: float) -> np.ndarray:
    """Corners [4, 2] as (x, y) of an h × w template centred at (y, x), turned counter-clockwise as displayed by
    ``angle`` degrees and scaled by ``scale``."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    half_h, half_w = scale * h / 2, scale * w / 2
    corners = []
    for dy, dx in ((-half_h, -half_w), (-half_h, half_w), (half_h, half_w), (half_h, -half_w)):
        # y points down: a counter-clockwise turn as displayed maps (dy, dx) to (c·dy − s·dx, s·dy + c·dx)
        corners.append((x + s * dy + c * dx, y + c * dy - s * dx))
    return np.array(corners)


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[C, H, W] → an array imshow can show, scaled to [0, 1], and its colour map."""
    low, high = float(np.nanmin(image)), float(np.nanmax(image))
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    if image.shape[0] == 3:
        return np.moveaxis(scaled, 0, -1), None
    return scaled[0], "gray"


def draw_overlay(
    path: str | Path,
    image: np.ndarray,
    rows: Sequence[dict],
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
) -> None:
    """Write a PNG of image [C, H, W] with every match drawn as a box of its template's size, angle and scale.

    Args:
        path: Output file.
        image: The image the matches were found in.
        rows: Matches as :meth:`slidesim.Matches.rows` gives them (for this image).
        template_sizes: (h, w) per template index.
        labels: A name per template index.
    """
    plt = _pyplot()
    H, W = image.shape[-2:]
    figure, axes = plt.subplots(figsize=(8, 8 * H / W), dpi=100)
    picture, cmap = _display(image)
    axes.imshow(picture, cmap=cmap, interpolation="nearest")
    for row in rows:
        t = int(row["template"])
        colour = _COLOURS[t % len(_COLOURS)]
        h, w = template_sizes[t]
        corners = box_corners(row["y"], row["x"], h, w, row["angle"], row["scale"])
        axes.add_patch(plt.Polygon(corners, closed=True, fill=False, edgecolor=colour, linewidth=2))
        axes.plot([row["x"]], [row["y"]], "+", color=colour, markersize=8)
        text = f"{labels[t]} {row['score']:.3f}"
        if row["angle"] or row["scale"] != 1:
            text += f" ({row['angle']:g}°, ×{row['scale']:g})"
        axes.text(corners[:, 0].min(), corners[:, 1].min() - 3, text, color=colour, fontsize=9, va="bottom")
    axes.set_xlim(-0.5, W - 0.5)
    axes.set_ylim(H - 0.5, -0.5)
    axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def draw_heatmap(path: str | Path, maps: Sequence[np.ndarray], labels: Sequence[str], metric: str) -> None:
    """Write a PNG of score maps (one [H', W'] per template, sizes may differ) side by side, each with a colour
    bar."""
    plt = _pyplot()
    T = len(maps)
    columns = min(T, 3)
    rows = math.ceil(T / columns)
    aspect = max(m.shape[0] / m.shape[1] for m in maps)
    figure, grid = plt.subplots(rows, columns, figsize=(5 * columns, 5 * rows * aspect + 0.6), squeeze=False, dpi=100)
    for index, axes in enumerate(grid.flat):
        if index >= T:
            axes.set_axis_off()
            continue
        shown = axes.imshow(maps[index], cmap="viridis", interpolation="nearest")
        axes.set_title(f"{labels[index]}: best {metric} per position", fontsize=10)
        axes.set_axis_off()
        figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
