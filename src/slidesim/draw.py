"""Pictures of what match() found (floor L7): the image with its matches drawn as turned boxes, the score maps on
the image's own pixel grid with the matches marked, and both side by side.

Pictures are drawn at the image's own resolution (``max_size`` caps the longer side), so a picture pixel is an image
pixel and a box, a label or a peak marker sits where the match is. They are rendered on matplotlib's Agg canvas
(no display and no pyplot state needed; ``pip install 'slidesim[cli]'``) and written by Pillow in the format that
the file's extension names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_option, check_pair
from ._geometry import pad_amounts
from .banks import canvas_size
from .errors import SlidesimTypeError, SlidesimValueError
from .metrics import resolve_metric

__all__ = [
    "PEAK_COLOUR",
    "PICTURE_FORMATS",
    "align_map",
    "box_corners",
    "draw_figure",
    "draw_heatmap",
    "draw_overlay",
    "picture_format",
    "picture_size",
    "place_labels",
    "render_heatmap",
    "render_overlay",
]

PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
"""File extension (lowercase) -> the Pillow format a picture is written in."""

PEAK_COLOUR = (255, 0, 255)
"""The heatmap's peak markers are magenta, a colour that the colour map (viridis) never takes, so a marker can be
told from the scores around it (and found again in the written file)."""

_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
_DPI = 72  # one point is one pixel: font sizes and line widths below are in picture pixels
_NO_WINDOW = "#808080"  # heatmap pixels where no window is centred (the border of mode "valid")
_BAR_WIDTH = 92  # the colour bar's strip beside a heatmap: bar, tick labels and its title
_GAP = 8  # white pixels between the pictures of one file

Rows = Sequence[Mapping[str, Any]]
"""Matches as :meth:`slidesim.Matches.rows` gives them: dicts with template, y, x, score, angle and scale."""


# --- files and sizes ---------------------------------------------------------------------------------------------


def picture_format(path: str | Path, name: str = "path") -> str:
    """The Pillow format ("PNG", "JPEG" or "TIFF") that a picture written to ``path`` takes from its extension.

    Raises:
        SlidesimValueError: The extension is none of .png, .jpg, .jpeg, .tif, .tiff; ``name`` is the argument (or
            command-line option) named in the message.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in PICTURE_FORMATS:
        raise SlidesimValueError(
            f"`{name}` must name a .png, .jpg, .jpeg, .tif or .tiff file (the picture's format follows its "
            f"extension); got {str(path)!r}. Give the file one of these extensions."
        )
    return PICTURE_FORMATS[suffix]


def picture_size(height: int, width: int, max_size: int | None = None) -> tuple[int, int]:
    """(rows, columns) of the picture of a ``height`` × ``width`` image: its own size, or shrunk with its aspect kept
    so that the longer side is ``max_size`` pixels when it is longer.

    Raises:
        SlidesimValueError: ``max_size`` is not a whole number of pixels >= 16.
    """
    if max_size is None:
        return height, width
    if not isinstance(max_size, (int, np.integer)) or isinstance(max_size, bool) or max_size < 16:
        raise SlidesimValueError(
            f"`max_size` must be a whole number of pixels, 16 or more, for the picture's longer side; got "
            f"{max_size!r}. Leave it out (None) to draw at the image's own size."
        )
    factor = min(1.0, max_size / max(height, width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def _save(path: str | Path, pixels: np.ndarray) -> None:
    """Write RGB pixels [H, W, 3] uint8 in the format of ``path``'s extension."""
    from PIL import Image

    fmt = picture_format(path)
    extra = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(pixels).save(path, format=fmt, **extra)


# --- geometry ----------------------------------------------------------------------------------------------------


def box_corners(y: float, x: float, h: int, w: int, angle: float, scale: float) -> np.ndarray:
    """Corners [4, 2] as (x, y) of an h × w template centred at (y, x), turned counter-clockwise as displayed by
    ``angle`` degrees and scaled by ``scale``; the box covers the template's pixels (h · scale rows tall)."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    half_h, half_w = scale * h / 2, scale * w / 2
    corners = []
    for dy, dx in ((-half_h, -half_w), (-half_h, half_w), (half_h, half_w), (half_h, -half_w)):
        # y points down: a counter-clockwise turn as displayed maps (dy, dx) to (c·dy − s·dx, s·dy + c·dx)
        corners.append((x + s * dy + c * dx, y + c * dy - s * dx))
    return np.array(corners)


def _origin(size: int, taps: int, mode: str, dilation: int) -> float:
    """Image position of the template centre at score-map index 0 along one axis (as match() places its peaks)."""
    before, _ = pad_amounts(mode, size, taps, dilation)
    return dilation * (taps - 1) / 2 - before


def align_map(
    score_map: np.ndarray,
    image_size: tuple[int, int],
    template_size: tuple[int, int],
    *,
    mode: str = "valid",
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    rotations: Sequence[float] | None = None,
    scales: Sequence[float] | None = None,
) -> np.ndarray:
    """A score map [H', W'] moved onto the image's pixel grid [H, W]: each pixel holds the score of the window whose
    template centre lies on it, as mode "same" gives it; NaN where no window is centred (mode "valid"'s border).

    Args:
        score_map: The map [H', W'] of one image and template (``Matches.maps[b, t]``).
        image_size: (H, W) of the image.
        template_size: (h, w) of the untransformed template.
        mode, stride, dilation, rotations, scales: The options the map was scored with (rotated and scaled banks
            are scored on a larger canvas, centred on the same point).

    Returns:
        float64 [H, W]. With an even template side the centre falls between two pixels; the pixel below or to the
        right of it holds the score, as in mode "same".
    """
    H, W = image_size
    h, w = template_size
    mode = check_option("mode", mode, ("valid", "same", "full"))
    (sy, sx), (dy, dx) = check_pair("stride", stride), check_pair("dilation", dilation)
    if rotations is not None or scales is not None:
        h, w = canvas_size(h, w, list(rotations or [0.0]), list(scales or [1.0]))
    rows = _nearest_windows(H, _origin(H, h, mode, dy), sy, score_map.shape[0])
    columns = _nearest_windows(W, _origin(W, w, mode, dx), sx, score_map.shape[1])
    aligned = np.full((H, W), np.nan)
    inside_rows, inside_columns = rows >= 0, columns >= 0
    values = np.asarray(score_map, dtype=np.float64)[np.ix_(rows[inside_rows], columns[inside_columns])]
    aligned[np.ix_(inside_rows, inside_columns)] = values
    return aligned


def _nearest_windows(size: int, origin: float, stride: int, count: int) -> np.ndarray:
    """Per image pixel along one axis, the map index whose template centre is nearest to it (ties to the earlier
    index, so that a centre half a pixel above a pixel lands on it as in mode "same"), or −1 when that centre is a
    stride or more away (no window there)."""
    pixels = np.arange(size)
    index = np.floor((pixels - origin) / stride + 0.5).astype(np.int64)
    index[(index < 0) | (index >= count)] = -1
    return index


# --- label placement ---------------------------------------------------------------------------------------------

Rect = tuple[float, float, float, float]
"""(left, top, right, bottom) in picture pixels, y down."""


def _overlap(a: Rect, b: Rect) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def _outside(rect: Rect, width: float, height: float) -> float:
    """Area of ``rect`` outside the picture."""
    area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return area - _overlap(rect, (0.0, 0.0, width, height))


def _candidates(box: Rect, size: tuple[float, float], gap: float) -> list[tuple[float, float]]:
    """Top-left corners to try for a label of ``size`` (width, height) beside ``box``, nearest first: above and
    below it (left- and right-aligned), beside it, inside its top-left corner, then ever further above and below."""
    left, top, right, bottom = box
    tw, th = size
    above, below = top - th - gap, bottom + gap
    near = [
        (left, above),
        (left, below),
        (right - tw, above),
        (right - tw, below),
        (right + gap, top),
        (left - tw - gap, top),
        (right + gap, bottom - th),
        (left - tw - gap, bottom - th),
        (left + gap, top + gap),
    ]
    far = []
    for step in range(1, 8):
        far += [(left, above - step * (th + gap)), (left, below + step * (th + gap))]
        far += [(right + gap + step * (tw + gap), top), (left - tw - gap - step * (tw + gap), top)]
    return near + far


def place_labels(
    boxes: Sequence[Rect], sizes: Sequence[tuple[float, float]], width: float, height: float, gap: float = 2.0
) -> list[tuple[float, float]]:
    """Top-left corners (x, y) for labels that overlap neither each other nor the other boxes, inside the picture.

    Labels are placed in order, each at the first free spot of :func:`_candidates` around its box; where none is
    free, at the spot that covers the least (earlier labels and the picture's edge count far more than boxes).

    Args:
        boxes: Per label, the bounds of what it names (left, top, right, bottom), picture pixels, y down.
        sizes: Per label, its (width, height) in pixels.
        width, height: The picture's size.
        gap: Pixels between a label and its box.
    """
    placed: list[Rect] = []
    corners = []
    for index, (box, (tw, th)) in enumerate(zip(boxes, sizes, strict=True)):
        others = [other for j, other in enumerate(boxes) if j != index]
        best, best_cost = None, math.inf
        for x, y in _candidates(box, (tw, th), gap):
            rect = (x, y, x + tw, y + th)
            cost = 100 * _outside(rect, width, height) + 100 * sum(_overlap(rect, p) for p in placed)
            cost += sum(_overlap(rect, o) for o in others)
            if cost < best_cost:
                best, best_cost = (x, y), cost
            if cost == 0:
                break
        x = min(max(best[0], 0.0), max(0.0, width - tw))  # a label that fits nowhere still stays in the picture
        y = min(max(best[1], 0.0), max(0.0, height - th))
        placed.append((x, y, x + tw, y + th))
        corners.append((x, y))
    return corners


# --- rendering ---------------------------------------------------------------------------------------------------


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), imported on first use: matplotlib is an optional dependency."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise SlidesimValueError("drawing pictures needs matplotlib: pip install 'slidesim[cli]'") from error
    return Figure, FigureCanvasAgg


class _Canvas:
    """A figure exactly ``width`` × ``height`` pixels, with an axes showing image pixels on part of it."""

    def __init__(self, width: int, height: int) -> None:
        Figure, FigureCanvasAgg = _matplotlib()
        self.width, self.height = width, height
        self.figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
        FigureCanvasAgg(self.figure)
        self.renderer = self.figure.canvas.get_renderer()

    def image_axes(self, image_size: tuple[int, int], picture: tuple[int, int]) -> Any:
        """Axes on the top-left ``picture`` (rows, columns) pixels whose data coordinates are image pixels: pixel
        (y, x) of the image is centred at data point (x, y)."""
        (H, W), (Hp, Wp) = image_size, picture
        axes = self.figure.add_axes((0, 1 - Hp / self.height, Wp / self.width, Hp / self.height))
        axes.set_xlim(-0.5, W - 0.5)
        axes.set_ylim(H - 0.5, -0.5)
        axes.set_axis_off()
        return axes

    def pixels(self) -> np.ndarray:
        """The rendered picture [height, width, 3] uint8."""
        self.figure.canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()

    def to_picture(self, axes: Any, x: float, y: float) -> tuple[float, float]:
        """Data point (x, y) -> picture pixels (x, y down)."""
        px, py = axes.transData.transform((x, y))
        return float(px), float(self.height - py)

    def text_size(self, text: str, size: float) -> tuple[float, float]:
        """(width, height) in pixels that ``text`` takes at font ``size``."""
        probe = self.figure.text(0, 0, text, fontsize=size)
        extent = probe.get_window_extent(self.renderer)
        probe.remove()
        return extent.width, extent.height

    def label(self, x: float, y: float, text: str, size: float, fill: str, pad: float) -> None:
        """A filled, outlined label box with its top-left corner at picture pixel (x, y): text that stays readable
        on any background, black or white by the fill's lightness."""
        from matplotlib.colors import to_rgb
        from matplotlib.patches import Rectangle
        from matplotlib.transforms import IdentityTransform

        tw, th = self.text_size(text, size)
        self.figure.add_artist(
            Rectangle(
                (x, self.height - y - th - 2 * pad),
                tw + 2 * pad,
                th + 2 * pad,
                facecolor=fill,
                edgecolor="black",
                linewidth=1,
                alpha=0.92,
                transform=IdentityTransform(),
            )
        )
        red, green, blue = to_rgb(fill)
        ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.55 else "white"
        self.figure.text(
            x + pad,
            self.height - y - pad - th,
            text,
            fontsize=size,
            color=ink,
            transform=IdentityTransform(),
            ha="left",
            va="bottom",
        )


def _font_size(picture: tuple[int, int]) -> float:
    """Label font size in pixels: larger on large pictures, never below a readable 10 px."""
    return float(min(15, max(10, round(max(picture) / 100))))


def _display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """[C, H, W] -> an array imshow can show in [0, 1], and its colour map. Images read from files are already in
    [0, 1] (and shown as they are); others are stretched from their lowest to their highest value."""
    image = np.asarray(image, dtype=np.float64)
    finite = image[np.isfinite(image)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if low < 0 or high > 1:
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    image = np.nan_to_num(np.clip(image, 0, 1))
    if image.shape[0] == 3:
        return np.moveaxis(image, 0, -1), None
    return image[0], "gray"


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or min(image.shape) < 1:
        raise SlidesimValueError(
            f"`image` must be one image [C, H, W] (or [H, W]); got an array of shape {tuple(image.shape)}. Pass "
            "one image of the batch, e.g. images[0]."
        )
    return image


def _show(axes: Any, picture: np.ndarray, cmap: Any, shrunk: bool, **options: Any) -> Any:
    """imshow on image pixel coordinates; a shrunk picture is resampled with antialiasing (nearest-neighbour
    sampling would drop thin lines and text of screenshots)."""
    H, W = picture.shape[:2]
    interpolation = "antialiased" if shrunk else "nearest"
    return axes.imshow(
        picture, cmap=cmap, interpolation=interpolation, extent=(-0.5, W - 0.5, H - 0.5, -0.5), aspect="auto", **options
    )


def _label_text(label: str, row: Mapping[str, Any]) -> str:
    text = f"{label} {row['score']:.3f}"
    if row["angle"] or row["scale"] != 1:
        text += f" ({row['angle']:g}°, ×{row['scale']:g})"
    return text


def render_overlay(
    image: np.ndarray,
    rows: Rows,
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
    *,
    max_size: int | None = None,
) -> np.ndarray:
    """The image [C, H, W] with every match drawn as a box of its template's size, turned by its angle and scaled by
    its scale, its centre marked and a label (name and score, and the angle and scale when turned) beside it.

    Boxes have a dark outline and labels are filled boxes in the template's colour, so both stay visible on any
    background; labels are placed where they overlap no other label nor match (:func:`place_labels`).

    Args:
        image: The image the matches were found in, [C, H, W] (C = 1 or 3) or [H, W].
        rows: Its matches, as :meth:`slidesim.Matches.rows` gives them (rows of other images are drawn too: pass
            only this image's).
        template_sizes: (h, w) per template index.
        labels: A name per template index.
        max_size: Longest side of the picture in pixels; None draws at the image's own size.

    Returns:
        RGB pixels [H, W, 3] uint8 (smaller with ``max_size``).
    """
    from matplotlib import patheffects

    image = _check_image(image)
    H, W = image.shape[-2:]
    Hp, Wp = picture_size(H, W, max_size)
    canvas = _Canvas(Wp, Hp)
    axes = canvas.image_axes((H, W), (Hp, Wp))
    picture, cmap = _display(image)
    _show(axes, picture, cmap, (Hp, Wp) != (H, W))
    font = _font_size((Hp, Wp))
    outline = [patheffects.withStroke(linewidth=4, foreground="black")]
    thin = [patheffects.withStroke(linewidth=3, foreground="black")]  # the centre mark hides little of the match
    boxes, texts, colours = [], [], []
    for row in rows:
        t = int(row["template"])
        colour = _COLOURS[t % len(_COLOURS)]
        h, w = template_sizes[t]
        corners = box_corners(row["y"], row["x"], h, w, row["angle"], row["scale"])
        axes.add_patch(_polygon(corners, colour, outline))
        axes.plot([row["x"]], [row["y"]], "+", color=colour, markersize=6, markeredgewidth=1.5, path_effects=thin)
        on_picture = np.array([canvas.to_picture(axes, cx, cy) for cx, cy in corners])
        boxes.append((*on_picture.min(axis=0), *on_picture.max(axis=0)))
        texts.append(_label_text(labels[t], row))
        colours.append(colour)
    pad = 2.0
    sizes = [(lambda s: (s[0] + 2 * pad, s[1] + 2 * pad))(canvas.text_size(text, font)) for text in texts]
    for (x, y), text, colour, box, size in zip(
        place_labels(boxes, sizes, Wp, Hp, gap=3.0), texts, colours, boxes, sizes, strict=True
    ):
        _leader(canvas, (x, y, x + size[0], y + size[1]), box, colour)
        canvas.label(x, y, text, font, colour, pad)
    return canvas.pixels()


def _polygon(corners: np.ndarray, colour: str, outline: list) -> Any:
    from matplotlib.patches import Polygon

    return Polygon(corners, closed=True, fill=False, edgecolor=colour, linewidth=2, path_effects=outline)


def _leader(canvas: _Canvas, label: Rect, box: Rect, colour: str) -> None:
    """A thin line from a label to its box when the label had to move away from it (more than a few pixels)."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import IdentityTransform

    # the nearest points of the two rectangles
    lx = min(max((box[0] + box[2]) / 2, label[0]), label[2])
    ly = min(max((box[1] + box[3]) / 2, label[1]), label[3])
    bx, by = min(max(lx, box[0]), box[2]), min(max(ly, box[1]), box[3])
    if math.hypot(lx - bx, ly - by) <= 6:
        return
    line = Line2D(
        [lx, bx], [canvas.height - ly, canvas.height - by], color=colour, linewidth=1.5, transform=IdentityTransform()
    )
    canvas.figure.add_artist(line)


def render_heatmap(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    rows: Rows,
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
    metric: str,
    *,
    max_size: int | None = None,
    **geometry: Any,
) -> np.ndarray:
    """The score map of each template on the image's pixel grid (:func:`align_map`), one below the other, each with
    its matches marked by magenta rings (:data:`PEAK_COLOUR`) and a colour bar on its right.

    The colour scale always shows the best scores bright: for the metrics that are minimized (sad, mad, ssd,
    ssd_normed) the colour map is reversed and the colour bar says so.

    Args:
        image: The image [C, H, W] (or [H, W]) the maps were scored on; only its size is used.
        maps: A score map [H', W'] per template index (``Matches.maps[b]``).
        rows: The matches of this image, as :meth:`slidesim.Matches.rows` gives them.
        template_sizes: (h, w) per template index.
        labels: A name per template index.
        metric: The metric that scored the maps.
        max_size: Longest side of each map's picture in pixels; None draws at the image's own size.
        **geometry: mode, stride, dilation, rotations and scales the maps were scored with (:func:`align_map`);
            rotations and scales may also be a list with one sequence (or None) per template.

    Returns:
        RGB pixels uint8: per template a block of the picture's rows, the map's picture (image pixel (y, x) at
        picture pixel (y, x) at the image's own size) followed by a colour bar strip; blocks are separated by white
        rows.
    """
    return _stack(_heatmap_blocks(image, maps, rows, template_sizes, labels, metric, max_size, geometry), axis=0)


def _heatmap_blocks(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    rows: Rows,
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
    metric: str,
    max_size: int | None,
    geometry: Mapping[str, Any],
) -> list[np.ndarray]:
    """Per template, its heatmap's picture (:func:`_heatmap_block`)."""
    unknown = sorted(set(geometry) - {"mode", "stride", "dilation", "rotations", "scales"})
    if unknown:
        raise SlidesimTypeError(
            f"`{unknown[0]}` is not an option of a heatmap; got {unknown[0]}={geometry[unknown[0]]!r}. Pass only the "
            "options the maps were scored with that move its windows: mode, stride, dilation, rotations, scales."
        )
    if not len(maps) == len(template_sizes) == len(labels):
        raise SlidesimValueError(
            f"`maps`, `template_sizes` and `labels` must hold one entry per template; got {len(maps)}, "
            f"{len(template_sizes)} and {len(labels)}. Pass Matches.maps[b] with every template's size and name."
        )
    image = _check_image(image)
    H, W = image.shape[-2:]
    higher = resolve_metric(metric).higher_is_better
    blocks = []
    for t, score_map in enumerate(maps):
        options = {name: _of_template(name, value, t, len(maps)) for name, value in geometry.items()}
        aligned = align_map(np.asarray(score_map), (H, W), tuple(template_sizes[t]), **options)
        peaks = [row for row in rows if int(row["template"]) == t]
        blocks.append(_heatmap_block(aligned, peaks, labels[t], metric, higher, max_size))
    return blocks


def _of_template(name: str, value: Any, t: int, templates: int) -> Any:
    """Template t's value of a heatmap option: rotations and scales may be given per template (a list holding a
    sequence or None for each), as the command line gives them where some transforms did not fit every template."""
    if name not in ("rotations", "scales") or value is None or len(value) == 0:
        return value
    per_template = all(v is None or isinstance(v, (list, tuple, np.ndarray)) for v in value)
    if not per_template:
        return value
    if len(value) != templates:
        raise SlidesimValueError(
            f"`{name}` given per template must hold one entry per template; got {len(value)} for {templates} "
            "templates. Pass one sequence (or None) per template, or one sequence for all."
        )
    return value[t]


def _heatmap_block(
    aligned: np.ndarray, peaks: Rows, label: str, metric: str, higher: bool, max_size: int | None
) -> np.ndarray:
    """One template's heatmap [Hp, Wp + bar, 3]: the aligned map, its peaks and its colour bar."""
    from matplotlib import colormaps, patheffects

    H, W = aligned.shape
    Hp, Wp = picture_size(H, W, max_size)
    canvas = _Canvas(Wp + _BAR_WIDTH, Hp)
    axes = canvas.image_axes((H, W), (Hp, Wp))
    cmap = colormaps["viridis" if higher else "viridis_r"].with_extremes(bad=_NO_WINDOW)
    finite = aligned[np.isfinite(aligned)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    shown = _show(axes, np.ma.masked_invalid(aligned), cmap, (Hp, Wp) != (H, W), vmin=low, vmax=high)
    ring = max(9.0, _font_size((Hp, Wp)))
    outline = [patheffects.withStroke(linewidth=5, foreground="black")]
    for row in peaks:
        axes.plot(
            [row["x"]],
            [row["y"]],
            "o",
            markersize=ring,
            markerfacecolor="none",
            markeredgecolor=np.array(PEAK_COLOUR) / 255,
            markeredgewidth=2.5,
            path_effects=outline,
        )
    font = _font_size((Hp, Wp))
    canvas.label(4, 4, f"{label}: {metric} per template centre", font, "#202020", 2.0)
    _colour_bar(canvas, shown, Wp, Hp, metric, higher)
    return canvas.pixels()


def _colour_bar(canvas: _Canvas, shown: Any, left: int, height: int, metric: str, higher: bool) -> None:
    """The colour bar in the strip right of a map, best scores at its top whichever way the metric points."""
    margin = min(12, height // 8)
    bar = canvas.figure.add_axes(
        ((left + 8) / canvas.width, margin / height, 14 / canvas.width, (height - 2 * margin) / height)
    )
    colour_bar = canvas.figure.colorbar(shown, cax=bar)
    colour_bar.ax.tick_params(labelsize=9)
    if not higher:
        colour_bar.ax.invert_yaxis()  # the reversed colour map: the low (best) scores bright, at the top
    direction = "higher is better" if higher else "lower is better (reversed: best bright)"
    colour_bar.set_label(f"{metric}, {direction}", fontsize=10)


def _stack(blocks: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Pictures one below the other (axis 0) or side by side (axis 1), top-left aligned, white gaps between."""
    across = 1 - axis
    extent = max(block.shape[across] for block in blocks)
    padded = []
    for index, block in enumerate(blocks):
        widths = [(0, 0), (0, 0), (0, 0)]
        widths[across] = (0, extent - block.shape[across])
        if index:
            widths[axis] = (_GAP, 0)
        padded.append(np.pad(block, widths, constant_values=255))
    return np.concatenate(padded, axis=axis)


def draw_overlay(
    path: str | Path,
    image: np.ndarray,
    rows: Rows,
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
    *,
    max_size: int | None = None,
) -> None:
    """Write :func:`render_overlay`'s picture to ``path`` (PNG, JPEG or TIFF, as its extension says).

    Raises:
        SlidesimValueError: ``path`` has another extension (checked before anything is drawn).
    """
    picture_format(path)
    _save(path, render_overlay(image, rows, template_sizes, labels, max_size=max_size))


def draw_heatmap(
    path: str | Path,
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    rows: Rows,
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
    metric: str,
    *,
    max_size: int | None = None,
    **geometry: Any,
) -> None:
    """Write :func:`render_heatmap`'s picture to ``path`` (PNG, JPEG or TIFF, as its extension says).

    Raises:
        SlidesimValueError: ``path`` has another extension (checked before anything is drawn).
    """
    picture_format(path)
    pixels = render_heatmap(image, maps, rows, template_sizes, labels, metric, max_size=max_size, **geometry)
    _save(path, pixels)


def draw_figure(
    path: str | Path,
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    rows: Rows,
    template_sizes: Sequence[tuple[int, int]],
    labels: Sequence[str],
    metric: str,
    *,
    max_size: int | None = None,
    **geometry: Any,
) -> None:
    """Write the overlay and the heatmaps side by side to ``path`` (PNG, JPEG or TIFF, as its extension says): the
    overlay at the top left, the first template's heatmap on its right, the other templates' heatmaps two to a row
    below them, all on the same pixel scale.

    Raises:
        SlidesimValueError: ``path`` has another extension (checked before anything is drawn).
    """
    picture_format(path)
    image = _check_image(image)
    pictures = [render_overlay(image, rows, template_sizes, labels, max_size=max_size)]
    pictures += _heatmap_blocks(image, maps, rows, template_sizes, labels, metric, max_size, geometry)
    columns = 2  # the overlay beside the first heatmap; more templates continue row by row
    grid = [_stack(pictures[i : i + columns], axis=1) for i in range(0, len(pictures), columns)]
    _save(path, _stack(grid, axis=0))
