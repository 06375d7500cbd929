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
