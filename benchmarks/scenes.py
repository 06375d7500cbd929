"""Real-looking uint8 scenes and the templates cut from them, for benchmarks/real_images.py.

Three kinds of picture that users match templates in:

* a rendered 1920×1080 desktop screenshot: a menu bar, a side panel with a gradient, windows with title bars,
  text, rows of identical buttons, check boxes and a toolbar of icons (many exact repeats and flat areas);
* photographs shipped with scikit-image (camera, astronaut, coffee, coins, brick, text);
* a scanned page: paragraphs of text on a slightly uneven paper tone, blurred and with sensor noise.

Every scene comes as uint8 grey [H, W] and, where it has colour, as uint8 RGB [H, W, 3]; :func:`to_bgr` and
:func:`to_planes` give OpenCV's and slidesim's layouts. Everything is drawn from fixed seeds: the same call returns
the same pixels (for one Pillow version: its font rasterizer draws the text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "MATCH_TEMPLATES",
    "TEMPLATE_SIZES",
    "Scene",
    "Template",
    "cut_templates",
    "document",
    "grey_of",
    "photographs",
    "scenes",
    "screenshot",
    "to_bgr",
    "to_planes",
]

TEMPLATE_SIZES: tuple[tuple[int, int], ...] = ((8, 8), (16, 16), (32, 32), (64, 64), (128, 128), (24, 80))
"""(height, width) of the templates cut from every scene: squares from 8² to 128² and one wide strip (a word, a
button)."""

SCREEN_SIZE = (1080, 1920)
PAGE_SIZE = (1100, 850)  # a letter page at 100 dpi
PAGE_FIRST_HEADING = (120, 80)  # (row, column) of the first "Section 1" heading; every heading starts in column 80
WINDOW_BUTTONS = ("OK", "Cancel", "Apply", "Help")


@dataclass(frozen=True)
class Scene:
    """One picture.

    Attributes:
        name: Short name (used in case names).
        grey: [H, W] uint8.
        rgb: [H, W, 3] uint8 RGB, or None for grey-only pictures.
    """

    name: str
    grey: np.ndarray
    rgb: np.ndarray | None = None


@dataclass(frozen=True)
class Template:
    """A template cut from a scene.

    Attributes:
        top: Row of its top-left corner in the scene.
        left: Column of its top-left corner in the scene.
        height: Rows.
        width: Columns.
    """

    top: int
    left: int
    height: int
    width: int

    def cut(self, picture: np.ndarray) -> np.ndarray:
        """The template's pixels from ``picture`` ([H, W] or [H, W, C]), as a contiguous copy."""
        return np.ascontiguousarray(picture[self.top : self.top + self.height, self.left : self.left + self.width])

    @property
    def label(self) -> str:
        return f"{self.height}²" if self.height == self.width else f"{self.height}×{self.width}"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (a scalable one from Pillow 10.1; the fixed bitmap font before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


_PROSE = (
    "the of and to in is that for it as with was on be by this are at from or an which have not they but all "
    "image template match score window pixel search method value result table figure report system level time "
    "sample measure engine shift noise light region border scale angle model field order point state group"
)
VOCABULARY = tuple(_PROSE.split())


def _words(rng: np.random.Generator, count: int) -> str:
    """``count`` words drawn from a small vocabulary, short words more often (as in prose)."""
    weights = np.linspace(3.0, 0.5, len(VOCABULARY))
    weights /= weights.sum()
    return " ".join(rng.choice(VOCABULARY, size=count, p=weights))


def _icon(draw: ImageDraw.ImageDraw, x: int, y: int, kind: int) -> None:
    """A 24×24 toolbar icon; the same ``kind`` draws the same pixels wherever it goes."""
    palette = [(220, 60, 50), (40, 140, 60), (30, 100, 200), (230, 160, 20), (120, 70, 160)]
    colour = palette[kind % len(palette)]
    draw.rounded_rectangle([x, y, x + 23, y + 23], radius=4, fill=(250, 250, 250), outline=(150, 150, 150))
    if kind % 3 == 0:
        draw.ellipse([x + 5, y + 5, x + 18, y + 18], fill=colour)
    elif kind % 3 == 1:
        draw.polygon([(x + 12, y + 4), (x + 20, y + 19), (x + 4, y + 19)], fill=colour)
    else:
        draw.rectangle([x + 6, y + 6, x + 17, y + 17], fill=colour)
        draw.line([x + 6, y + 12, x + 17, y + 12], fill=(255, 255, 255), width=2)


def _window(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0: int, y0: int, index: int) -> None:
    """A 500×460 window: title bar, text, check boxes, a progress bar and a row of buttons."""
    body, small = _font(13), _font(12)
    draw.rectangle([x0 + 4, y0 + 4, x0 + 504, y0 + 464], fill=(200, 200, 204))  # shadow
    draw.rectangle([x0, y0, x0 + 500, y0 + 460], fill=(255, 255, 255), outline=(180, 180, 180))
    draw.rectangle([x0, y0, x0 + 500, y0 + 26], fill=(0, 120, 215))
    draw.text((x0 + 10, y0 + 6), f"Document {index + 1} - Editor", fill=(255, 255, 255), font=body)
    for b, glyph in enumerate("_#x"):  # window controls, identical in every window
        draw.text((x0 + 450 + b * 16, y0 + 5), glyph, fill=(255, 255, 255), font=body)
    for row in range(16):
        draw.text((x0 + 14, y0 + 40 + row * 18), _words(rng, 9), fill=(30, 30, 30), font=body)
    for c in range(3):
        cx, cy = x0 + 14 + c * 150, y0 + 340
        draw.rectangle([cx, cy, cx + 13, cy + 13], fill=(255, 255, 255), outline=(90, 90, 90))
        if (index + c) % 2 == 0:
            draw.line([cx + 3, cy + 7, cx + 6, cy + 10, cx + 11, cy + 3], fill=(0, 120, 215), width=2)
        draw.text((cx + 20, cy), f"Option {c + 1}", fill=(30, 30, 30), font=small)
    progress = int(rng.integers(40, 440))
    draw.rectangle([x0 + 14, y0 + 370, x0 + 454, y0 + 382], fill=(230, 230, 230), outline=(170, 170, 170))
    draw.rectangle([x0 + 15, y0 + 371, x0 + 15 + progress, y0 + 381], fill=(60, 170, 90))
    for b, label in enumerate(WINDOW_BUTTONS):
        bx, by = x0 + 20 + b * 120, y0 + 410
        draw.rounded_rectangle([bx, by, bx + 90, by + 30], radius=3, fill=(225, 225, 225), outline=(120, 120, 120))
        width = draw.textlength(label, font=body)
        draw.text((bx + 45 - width / 2, by + 8), label, fill=(0, 0, 0), font=body)


def screenshot(seed: int = 0) -> np.ndarray:
    """A rendered 1920×1080 desktop.

    Args:
        seed: Seed of the words and the progress bars.

    Returns:
        [1080, 1920, 3] uint8 RGB. Six windows, each with the same four buttons (OK, Cancel, Apply, Help) at the
        same place relative to the window, a toolbar of repeated icons and a side panel with a vertical gradient.
    """
    rng = np.random.default_rng(seed)
    height, width = SCREEN_SIZE
    image = Image.new("RGB", (width, height), (236, 236, 236))
    draw = ImageDraw.Draw(image)
    menu = _font(13)
    draw.rectangle([0, 0, width, 30], fill=(45, 45, 48))
    for i, name in enumerate(("File", "Edit", "View", "Insert", "Format", "Tools", "Window", "Help")):
        draw.text((12 + i * 72, 8), name, fill=(225, 225, 225), font=menu)
    draw.rectangle([0, 31, width, 62], fill=(246, 246, 246))
    for i in range(40):  # a toolbar: ten kinds of icon, each repeated
        _icon(draw, 8 + i * 30, 35, i % 10)
    for y in range(63, height - 40):  # side panel: a vertical gradient (no two rows alike)
        shade = int(58 + 42 * (y - 63) / (height - 103))
        draw.line([(0, y), (260, y)], fill=(shade, shade, shade + 12))
    for i in range(28):
        draw.text((18, 76 + i * 34), f"{_words(rng, 1).title()} {i + 1}", fill=(232, 232, 232), font=menu)
    for w in range(6):
        _window(draw, rng, 300 + (w % 3) * 540, 80 + (w // 3) * 480, w)
    draw.rectangle([0, height - 40, width, height], fill=(32, 32, 36))  # taskbar
    for i in range(12):
        _icon(draw, 60 + i * 40, height - 32, i % 5)
    draw.text((width - 80, height - 28), "12:34", fill=(240, 240, 240), font=menu)
    return np.asarray(image)


def document(seed: int = 0) -> np.ndarray:
    """A scanned-looking page: paragraphs of dark text on an uneven paper tone, blurred, with noise.

    Args:
        seed: Seed of the words, the paper's shading and the noise.

    Returns:
        [1100, 850] uint8 grey (a letter page at 100 dpi). Every paragraph starts with a heading "Section N" in
        column 80, so the word "Section" appears many times, each copy with its own noise.
    """
    rng = np.random.default_rng(seed)
    height, width = PAGE_SIZE
    page = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(page)
    draw.text((80, 60), "Quarterly report on template matching", fill=20, font=_font(24))
    body, heading = _font(14), _font(16)
    y, section = PAGE_FIRST_HEADING[0], 1
    while y < height - 150:
        draw.text((PAGE_FIRST_HEADING[1], y), f"Section {section}", fill=15, font=heading)
        y, section = y + 26, section + 1
        lines = int(rng.integers(3, 7))
        for line in range(lines):
            count = int(rng.integers(5, 10)) if line == lines - 1 else 11
            draw.text((80, y), _words(rng, count), fill=25, font=body)
            y += 22
        y += 16  # paragraph gap
    draw.text((width // 2 - 10, height - 50), "- 1 -", fill=25, font=body)
    page = page.filter(ImageFilter.GaussianBlur(0.7))
    rows, cols = np.mgrid[0:height, 0:width]
    tone = 236 + 8 * np.sin(rows / 170.0 + 0.4) * np.cos(cols / 230.0)  # paper that is not evenly white
    ink = np.asarray(page, dtype=np.float64) / 255.0
    scanned = tone * ink + rng.normal(0.0, 3.0, size=(height, width))
    return np.clip(np.rint(scanned), 0, 255).astype(np.uint8)


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 RGB to [H, W] uint8 luma (ITU-R BT.601 weights, rounded)."""
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB to OpenCV's contiguous [H, W, 3] BGR."""
    return np.ascontiguousarray(rgb[..., ::-1])


def to_planes(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB to slidesim's contiguous [1, 3, H, W]."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])


def photographs() -> list[Scene]:
    """camera, astronaut, coffee, coins, brick and text from ``skimage.data`` (files shipped with the package)."""
    from skimage import data

    found = []
    for name in ("camera", "astronaut", "coffee", "coins", "brick", "text"):
        picture = np.ascontiguousarray(getattr(data, name)())
        if picture.ndim == 3:
            found.append(Scene(name, grey_of(picture), picture))
        else:
            found.append(Scene(name, picture))
    return found


def scenes() -> list[Scene]:
    """Every scene of the suite: the screenshot, the photographs, the scanned page."""
    desktop = screenshot()
    return [Scene("screenshot", grey_of(desktop), desktop), *photographs(), Scene("document", document())]


def cut_templates(
    grey: np.ndarray, seed: int, sizes: tuple[tuple[int, int], ...] = TEMPLATE_SIZES, min_std: float = 12.0
) -> list[Template]:
    """One template per size, at random places with detail in them.

    A template that is nearly flat (a patch of background) is not one anybody searches for, and its normalized
    scores are undefined, so places whose grey standard deviation is below ``min_std`` are drawn again.

    Args:
        grey: [H, W] uint8 scene.
        seed: Seed of the places.
        sizes: (height, width) of each template; sizes that do not fit the scene are left out.
        min_std: Least grey standard deviation of a template.

    Returns:
        The templates, in the order of ``sizes``.
    """
    rng = np.random.default_rng(seed)
    H, W = grey.shape
    found = []
    for h, w in sizes:
        if h > H or w > W:
            continue
        best: Template | None = None
        best_std = -1.0
        for _ in range(200):
            candidate = Template(int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w)
            spread = float(candidate.cut(grey).std())
            if spread > best_std:
                best, best_std = candidate, spread
            if spread >= min_std:
                break
        assert best is not None
        found.append(best)
    return found


MATCH_TEMPLATES: dict[str, tuple[str, Template]] = {
    # scene -> (what it shows and how many copies a 0.95 zncc threshold finds in grey, where it is)
    "screenshot": ("OK button, 6 copies", Template(486, 316, 38, 98)),
    "screenshot icon": ("round icon, 16 in 4 colours", Template(35, 8, 24, 24)),
    "document": ('"Section", 6 noisy copies', Template(118, 78, 22, 58)),
}
"""Hand-picked templates with repeated copies in their scene, for the thresholded match cases."""
