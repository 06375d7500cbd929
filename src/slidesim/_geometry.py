"""Where the windows are (floor L1): the geometry of one call, and the padding of "same" and "full" modes.

:class:`Geometry` is all that the sliding reductions of :mod:`slidesim.kernels` need to know about a call.

torch's own reflect and circular padding refuse pads wider than the image; template matching routinely needs
them (a template larger than the image in "full" mode). The non-constant modes are therefore built as index maps
with :func:`numpy.pad` applied to ``arange`` and gathered with ``index_select``, which works for any width and keeps
autograd intact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NUMPY_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
"""slidesim's padding names -> numpy.pad's modes (the non-constant paddings are built from numpy index maps)."""


@dataclass(frozen=True)
class Geometry:
    """Where the windows are: stride, dilation and output size of one call, and the template's size."""

    stride: tuple[int, int]
    dilation: tuple[int, int]
    out_height: int
    out_width: int
    template_size: tuple[int, int]


@dataclass(frozen=True)
class Border:
    """Where the images lie in their padded planes, and what surrounds them.

    Attributes:
        top, bottom, left, right: Padding rows and columns on each side.
        value: The constant padding's value, or None for the paddings that copy pixels (reflect, replicate,
            circular), whose values are the image's own.
    """

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0
    value: float | None = None

    @property
    def padded(self) -> bool:
        """Whether there is any padding."""
        return self.top + self.bottom + self.left + self.right > 0

    def inner(self, plane: torch.Tensor) -> torch.Tensor:
        """The image part [..., H, W] of a padded plane [..., Hp, Wp] (a view)."""
        Hp, Wp = plane.shape[-2:]
        return plane[..., self.top : Hp - self.bottom, self.left : Wp - self.right]

    def zero_padding(self, plane: torch.Tensor) -> torch.Tensor:
        """A copy of plane [..., Hp, Wp] with 0 in the padding."""
        copy = torch.zeros_like(plane)
        self.inner(copy).copy_(self.inner(plane))
        return copy

    def taps_inside(self, geom: Geometry, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """The template taps of each window that read the image (not its padding), for images of ``size``: a
        window at output (y, x) reads the image with taps rows[0][y]:rows[1][y] × cols[0][x]:cols[1][x].

        Returns:
            (first row [H'], end row [H'], first column [W'], end column [W']), int64; first == end where a
            window reads no image row (column).
        """
        per_axis = []
        for out, stride, dilation, taps, before, length in zip(
            (geom.out_height, geom.out_width), geom.stride, geom.dilation, geom.template_size,
            (self.top, self.left), size, strict=True,
        ):  # fmt: skip
            start = torch.arange(out, dtype=torch.int64) * stride  # padded position of each window's first tap
            first = (-((start - before) // dilation)).clamp(0, taps)  # ceil((before − start) / dilation)
            end = ((before + length - 1 - start) // dilation + 1).clamp(0, taps)
            per_axis += [first, torch.maximum(first, end)]
        return tuple(per_axis)


def pad_amounts(mode: str, size: int, taps: int, dilation: int) -> tuple[int, int]:
    """Pad before and after one axis for a mode.

    Args:
        mode: "valid", "same" or "full".
        size: Length of the image axis.
        taps: Template length along the axis.
        dilation: Spacing between template taps.

    Returns:
        ``(before, after)``. "same" anchors the template at index ``(taps - 1) // 2``.
    """
    del size  # the amounts depend on the template only; kept for a uniform call site
    span = dilation * (taps - 1)
    if mode == "valid":
        return 0, 0
    if mode == "same":
        before = dilation * ((taps - 1) // 2)
        return before, span - before
    return span, span


def pad_image(image: torch.Tensor, pads: tuple[int, int, int, int], padding: str, value: float) -> torch.Tensor:
    """Pad the last two axes of ``image``.

    Args:
        image: Tensor [..., H, W].
        pads: (top, bottom, left, right).
        padding: "constant", "reflect", "replicate" or "circular".
        value: Fill value for "constant".

    Returns:
        Tensor [..., H + top + bottom, W + left + right]; ``image`` itself when all pads are zero.
    """
    top, bottom, left, right = pads
    if not any(pads):
        return image
    if padding == "constant":
        return F.pad(image, (left, right, top, bottom), mode="constant", value=value)
    mode = NUMPY_PAD_MODES[padding]
    rows = np.pad(np.arange(image.shape[-2]), (top, bottom), mode=mode)
    cols = np.pad(np.arange(image.shape[-1]), (left, right), mode=mode)
    out = image.index_select(-2, torch.as_tensor(rows, device=image.device))
    return out.index_select(-1, torch.as_tensor(cols, device=image.device))
