"""Banks of rotated and scaled templates, drawn a chunk of transforms at a time (floor L6).

Rotations are in degrees, counter-clockwise as displayed with y pointing down (the convention of
``skimage.transform.rotate``); scales are factors. Every transform of a bank is drawn on one canvas whose centre is
the template's centre, so a position on the score map means the same object centre for every transform, and a
mask keeps only the canvas pixels that came from the template.

A :class:`TransformStream` draws any range of the bank on demand, so a search over many transforms holds one chunk
of transformed templates at a time; :func:`usable_scales` says which scales a template and image allow.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import SlidesimValueError
from .kernels.area_sums import fused_statistics_available

__all__ = [
    "TransformStream",
    "TransformedBank",
    "canvas_size",
    "drawing_bytes",
    "member_bytes",
    "transform_bank",
    "usable_scales",
]

_INSIDE = 1e-6  # source coordinates this far outside the template still count as inside (round-off)
_MIN_SIDE = 2.0  # taps: a scaled template narrower than this has no shape left to match (unless it came that way)
_F64 = 8  # bytes of the float64 in which transforms are drawn


@dataclass(frozen=True)
class TransformedBank:
    """Templates under every (scale, angle), on one canvas.

    Attributes:
        templates: [Bk, T·R, C, Hc, Wc]: template t under transform r at index t·R + r.
        mask: [Bk', T·R, C', Hc, Wc] weights: the template's own mask (or 1) where the canvas pixel came from the
            template, 0 elsewhere.
        angles: Degrees of transform r [R] (float64).
        scales: Factor of transform r [R] (float64).
    """

    templates: torch.Tensor
    mask: torch.Tensor
    angles: torch.Tensor
    scales: torch.Tensor

    @property
    def transforms(self) -> int:
        return len(self.angles)


@functools.lru_cache(maxsize=16)
def _extents(h: int, w: int, angles: tuple[float, ...]) -> tuple[float, float]:
    """The largest spans (rows, columns) between the first and last pixel centres of an h × w template under any of
    the ``angles``, at scale 1 (cached: a search asks for them at many scales)."""
    extent_h = extent_w = 0.0
    for angle in angles:
        c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        extent_h = max(extent_h, c * (h - 1) + s * (w - 1))
        extent_w = max(extent_w, s * (h - 1) + c * (w - 1))
    return extent_h, extent_w


def _canvas_side(side: int, extent: float, scale: float) -> int:
    """The canvas side, of the template side's parity, that holds a span of ``extent`` · ``scale`` around the centre."""
    need = max(side, 2 * math.ceil(scale * extent / 2 - 1e-9) + 1)
    grow = need - side
    return side + grow + grow % 2


def canvas_size(h: int, w: int, angles: Sequence[float], scales: Sequence[float]) -> tuple[int, int]:
    """The smallest canvas, of the template's parity, that holds the template under every angle and scale.

    Same parity keeps the identity transform on the pixel grid: its samples are the template's pixels exactly.
    """
    extent_h, extent_w = _extents(h, w, tuple(angles))
    largest = max(scales)  # the canvas grows with the scale, so the largest one sets it
    return _canvas_side(h, extent_h, largest), _canvas_side(w, extent_w, largest)


def _largest_fitting_scale(side: int, extent: float, room: int) -> float:
    """The largest scale whose canvas side (see :func:`_canvas_side`) is at most ``room``; inf when none bounds it."""
    if extent <= 0:
        return math.inf
    room -= (room - side) % 2  # the canvas keeps the template's parity
    half = (room - 1) // 2  # _canvas_side fits while ceil(scale · extent / 2 − 1e-9) <= half
    return 2 * (half + 1e-9) / extent


def usable_scales(
    template_size: tuple[int, int], angles: Sequence[float], room: tuple[int, int] | None
) -> tuple[float, float]:
    """(smallest, largest) scale factors a template can be searched at.

    Args:
        template_size: (h, w) of the template in taps.
        angles: The rotations searched with the scales (the canvas holds every one).
        room: The largest canvas (rows, columns) in taps that the image allows (mode "valid"), or None.

    Returns:
        The smallest scale keeps the template's smaller side at 2 taps or more (or at its own size when it is
        smaller than that); the largest keeps the canvas within ``room`` (inf without one).
    """
    h, w = template_size
    low = min(1.0, _MIN_SIDE / min(h, w))
    if room is None:
        return low, math.inf
    extent_h, extent_w = _extents(h, w, tuple(angles))
    return low, min(_largest_fitting_scale(h, extent_h, room[0]), _largest_fitting_scale(w, extent_w, room[1]))


def _blur(templates: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of [N, C, h, w] before shrinking, against aliasing (replicated borders)."""
    radius = _blur_radius(sigma)
    taps = torch.arange(-radius, radius + 1, dtype=templates.dtype, device=templates.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    N, C, h, w = templates.shape
    planes = F.pad(templates.reshape(N * C, 1, h, w), (radius,) * 4, mode="replicate")
    planes = F.conv2d(F.conv2d(planes, kernel.reshape(1, 1, -1, 1)), kernel.reshape(1, 1, 1, -1))
    return planes.reshape(N, C, h, w)


def _blur_radius(sigma: float) -> int:
    return max(1, math.ceil(3 * sigma))


def _blur_sigma(scale: float) -> float:
    """The low-pass that shrinking by ``scale`` < 1 needs (pixels of the template)."""
    return (1 / scale - 1) / 2


def _sample(plane: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of plane [N, C, h, w] at source coordinates rows, cols [A, Hc, Wc] (pixels) -> [N, A, C,
    Hc, Wc]."""
    N, C, h, w = plane.shape
    A, Hc, Wc = rows.shape
    gy = rows * (2 / (h - 1)) - 1 if h > 1 else torch.zeros_like(rows)
    gx = cols * (2 / (w - 1)) - 1 if w > 1 else torch.zeros_like(cols)
    # every (plane, angle) pair is one sample of the sampler's batch: planes repeated per angle, grids per plane
    grid = torch.stack([gx, gy], dim=-1)[None].expand(N, -1, -1, -1, -1).reshape(N * A, Hc, Wc, 2)
    source = plane[:, None].expand(-1, A, -1, -1, -1).reshape(N * A, C, h, w)
    drawn = F.grid_sample(source, grid.to(plane.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return drawn.reshape(N, A, C, Hc, Wc)


def member_bytes(bank_shape: Sequence[int], mask_planes: tuple[int, int], canvas: tuple[int, int], item: int) -> int:
    """Bytes that one more transform adds to a drawn range while it is drawn, converted and scored: its float64
    picture and weights, their stacked copies, the bank's dtype (``item`` bytes), the checks of the weights, and
    its share of the sampler's inputs (a run of angles is drawn in one call: source coordinates, sampling grids
    and a copy of the template per angle).

    Args:
        bank_shape: [Bk, T, C, h, w] of the canonical bank.
        mask_planes: (Bm, Cm) of the weights: images and channels they differ over.
        canvas: (Hc, Wc).
        item: Bytes per element of the bank's dtype.
    """
    Bk, _, C, h, w = bank_shape
    Bm, Cm = mask_planes
    planes = Bk * C + Bm * Cm
    grids = canvas[0] * canvas[1] * _F64 * (5 + 2 * max(Bk, Bm))  # rows, cols, inside, x, y; a grid per plane
    return planes * canvas[0] * canvas[1] * (2 * _F64 + 2 * item + 2) + grids + planes * h * w * _F64


def drawing_bytes(
    bank_shape: Sequence[int], mask_planes: tuple[int, int], canvas: tuple[int, int], smallest: float
) -> int:
    """Temporaries while a bank is drawn besides its members' own (:func:`member_bytes`): the canvas' offsets and
    the low-pass of a template before the ``smallest`` scale (arguments as for :func:`member_bytes`)."""
    Bk, _, C, h, w = bank_shape
    grids = (canvas[0] + canvas[1]) * _F64 * 2
    if smallest >= 1:
        return grids
    radius = _blur_radius(_blur_sigma(smallest))
    Bm, Cm = mask_planes
    return grids + (Bk * C + Bm * Cm) * (h + 2 * radius) * (w + 2 * radius) * _F64 * 3


class TransformStream:
    """Every template of a canonical bank under every (scale, angle), drawn for any range of the bank on demand.

    Template t under transform r sits at index t·R + r, with R = len(scales) · len(angles) transforms, scale-major.
    Drawing a range gives the same numbers as drawing the whole bank at once.

    Args:
        templates: [Bk, T, C, h, w] (canonical bank, float).
        mask: [Bm, Tm, Cm, h, w] weights or None.
        angles: Degrees, counter-clockwise as displayed.
        scales: Positive factors.
    """

    def __init__(
        self, templates: torch.Tensor, mask: torch.Tensor | None, angles: Sequence[float], scales: Sequence[float]
    ) -> None:
        self.source, self.user_mask = templates, mask
        self.angle_list, self.scale_list = [float(a) for a in angles], [float(s) for s in scales]
        T, h, w = templates.shape[1], *templates.shape[-2:]
        self.canvas = canvas_size(h, w, self.angle_list, self.scale_list)
        R = len(self.angle_list) * len(self.scale_list)
        self.n_templates, self.transforms, self.members = T, R, T * R
        self.angles = torch.tensor(self.angle_list * len(self.scale_list), dtype=torch.float64)
        self.scales = torch.tensor([s for s in self.scale_list for _ in self.angle_list], dtype=torch.float64)
        self._blurred: tuple[tuple[int, float], torch.Tensor] | None = None

    @property
    def mask_planes(self) -> tuple[int, int]:
        """(Bm, Cm) of the drawn masks: images and channels that the weights differ over."""
        if self.user_mask is None:
            return 1, 1
        return self.user_mask.shape[0], self.user_mask.shape[2]

    def member_bytes(self) -> int:
        """Bytes that one more transform adds to a drawn range (see :func:`member_bytes`)."""
        return member_bytes(self.source.shape, self.mask_planes, self.canvas, self.source.element_size())

    def drawing_bytes(self) -> int:
        """Temporaries while the bank is drawn (see :func:`drawing_bytes`)."""
        return drawing_bytes(self.source.shape, self.mask_planes, self.canvas, min(self.scale_list))

    def draw(self, j0: int, j1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Members j0..j1 of the bank -> (templates [Bk, j1 − j0, C, Hc, Wc] in the bank's dtype, weights
        [Bm, j1 − j0, Cm, Hc, Wc]).

        Raises:
            SlidesimValueError: A transform keeps no weight of the template (its mask, or a template so small
                that no canvas pixel falls on it).
        """
        pictures, masks = [], []
        j = j0
        while j < j1:
            # a run of members of one template at one scale differs only in angle: one sampler call draws it
            t, r = divmod(j, self.transforms)
            scale_index, first = divmod(r, len(self.angle_list))
            last = min(len(self.angle_list), first + j1 - j)
            picture, weight = self._members(t, scale_index, first, last, self.source.dtype)
            pictures.append(picture)
            masks.append(weight)
            j += last - first
        if len(pictures) == 1:  # one run: drawn in the bank's dtype already, no copy
            return pictures[0].contiguous(), masks[0].contiguous()
        return torch.cat(pictures, dim=1), torch.cat(masks, dim=1)

    def _members(
        self, t: int, scale_index: int, a0: int, a1: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Template t at scale ``scale_index`` under angles a0..a1: (pictures [Bk, A, C, Hc, Wc], weights
        [Bm, A, Cm, Hc, Wc]) in ``dtype`` (drawn in float64), A = a1 − a0."""
        scale = self.scale_list[scale_index]
        angles = self.angle_list[a0:a1]
        h, w = self.source.shape[-2:]
        Hc, Wc = self.canvas
        tracked = [x for x in (self.source, self.user_mask) if x is not None and x.requires_grad]
        if (
            self.source.device.type == "cpu"
            and fused_statistics_available()
            and not (tracked and torch.is_grad_enabled())
        ):
            picture, weight = self._members_in_one_pass(t, scale, angles, dtype)
        else:
            picture, weight = self._members_by_sampler(t, scale, angles)
            picture, weight = picture.to(dtype), weight.to(dtype)
        empty = (weight.sum(dim=(-1, -2, -3)) <= 0).any(dim=0)  # [A]
        if bool(empty.any()):
            angle = angles[int(empty.nonzero()[0])]
            what = f"{h}x{w} template {t}" + ("" if self.user_mask is None else " under its `mask`")
            raise SlidesimValueError(
                f"`scales` and `rotations` must leave every template some weight; the {what} keeps none on the "
                f"{Hc}x{Wc} canvas at scale {scale:g} and angle {angle:g}. Use a larger scale, or a mask with more "
                "weight."
            )
        return picture, weight

    def _members_in_one_pass(
        self, t: int, scale: float, angles: list[float], dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_members` by the numba drawing kernel (the sampler's numbers to float64 round-off, in one pass
        over the canvas instead of about ten; no gradient)."""
        from .kernels.numba_draw import draw_turned

        mask = None
        if self.user_mask is not None:
            Tm = self.user_mask.shape[1]
            mask = self.user_mask[:, t if Tm > 1 else 0].detach().to(torch.float64).contiguous().numpy()
        source = self._source(t, scale).detach().contiguous().numpy()
        numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        picture, weight = draw_turned(source, mask, angles, scale, self.canvas, numpy_dtype)
        return torch.from_numpy(picture), torch.from_numpy(weight)

    def _members_by_sampler(self, t: int, scale: float, angles: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_members` by torch's grid sampler (any device)."""
        h, w = self.source.shape[-2:]
        Hc, Wc = self.canvas
        dtype, device = torch.float64, self.source.device
        v = torch.arange(Hc, dtype=dtype, device=device)[:, None] - (Hc - 1) / 2  # canvas offsets from the centre
        u = torch.arange(Wc, dtype=dtype, device=device)[None, :] - (Wc - 1) / 2
        radians = [math.radians(a) for a in angles]
        c = torch.tensor([math.cos(x) for x in radians], dtype=dtype, device=device)[:, None, None]
        s = torch.tensor([math.sin(x) for x in radians], dtype=dtype, device=device)[:, None, None]
        # displayed counter-clockwise with y down: template offset (dy, dx) lands at canvas offset
        # (c·dy − s·dx, s·dy + c·dx) · scale; invert that map for each canvas pixel -> [A, Hc, Wc]
        rows = (c * v + s * u) / scale + (h - 1) / 2
        cols = (-s * v + c * u) / scale + (w - 1) / 2
        inside = (rows >= -_INSIDE) & (rows <= h - 1 + _INSIDE) & (cols >= -_INSIDE) & (cols <= w - 1 + _INSIDE)
        inside = inside.to(dtype)[None, :, None]  # [1, A, 1, Hc, Wc]
        picture = _sample(self._source(t, scale), rows, cols) * inside
        if self.user_mask is None:
            return picture, inside
        Tm = self.user_mask.shape[1]
        return picture, _sample(self.user_mask[:, t if Tm > 1 else 0].to(dtype), rows, cols) * inside

    def _source(self, t: int, scale: float) -> torch.Tensor:
        """Template t of every bank [Bk, C, h, w] in float64, low-passed before shrinking (the last one kept: a
        range of the bank meets each (template, scale) in one run)."""
        key = (t, scale)
        if self._blurred is not None and self._blurred[0] == key:
            return self._blurred[1]
        source = self.source[:, t].to(torch.float64)
        if scale < 1:
            source = _blur(source, _blur_sigma(scale))
        self._blurred = (key, source)
        return source


def transform_bank(
    templates: torch.Tensor, mask: torch.Tensor | None, angles: Sequence[float], scales: Sequence[float]
) -> TransformedBank:
    """Every template under every (scale, angle), with the masks of the pixels that came from it, all at once.

    Args:
        templates: [Bk, T, C, h, w] (canonical bank, float).
        mask: [Bm, Tm, Cm, h, w] weights or None.
        angles: Degrees, counter-clockwise as displayed.
        scales: Positive factors.

    Returns:
        A :class:`TransformedBank` with R = len(scales) · len(angles) transforms, scale-major.
    """
    stream = TransformStream(templates, mask, angles, scales)
    pictures, weights = stream.draw(0, stream.members)
    return TransformedBank(pictures, weights, stream.angles, stream.scales)
