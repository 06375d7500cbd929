"""Colour helpers for matching on hue, which is an angle and must be compared the short way round (floor L7)."""

from __future__ import annotations

import numpy as np
import torch

from ._types import ArrayLike
from .errors import SlidesimTypeError, SlidesimValueError

__all__ = ["HUE_PERIOD", "rgb_to_hsv"]

HUE_PERIOD = 1.0
"""Period of the hue channel returned by :func:`rgb_to_hsv`: pass ``circular={0: HUE_PERIOD}``."""


def rgb_to_hsv(rgb: ArrayLike) -> ArrayLike:
    """Convert RGB images to HSV with hue in [0, 1), saturation and value in [0, 1].

    Args:
        rgb: [..., 3, H, W] (channels first, as slidesim's layouts). Floats are read as [0, 1]; uint8 as [0, 255].

    Returns:
        [..., 3, H, W] with channels (hue, saturation, value); float32 (float64 for float64 input), numpy for numpy
        input. Grey pixels have hue 0 and saturation 0.

    Raises:
        SlidesimValueError: If the channel axis (third from last) does not have 3 entries.
        SlidesimTypeError: If ``rgb`` is not a numpy array or a torch tensor.

    Examples:
        >>> import numpy as np
        >>> red = np.zeros((3, 1, 1), dtype=np.float32); red[0] = 1.0
        >>> rgb_to_hsv(red)[:, 0, 0].tolist()
        [0.0, 1.0, 1.0]
        >>> import slidesim
        >>> image = rgb_to_hsv(np.random.default_rng(0).random((1, 3, 16, 16)))
        >>> scores = slidesim.similarity(image, image[:, :, 2:6, 3:7], metric="mad", circular={0: HUE_PERIOD})
        >>> float(scores[0, 0, 2, 3])
        0.0
    """
    is_numpy = isinstance(rgb, np.ndarray)
    if not is_numpy and not isinstance(rgb, torch.Tensor):
        raise SlidesimTypeError(f"`rgb` must be a numpy array or a torch tensor; got {type(rgb).__name__}.")
    x = torch.from_numpy(np.ascontiguousarray(rgb)) if is_numpy else rgb
    if x.ndim < 3 or x.shape[-3] != 3:
        raise SlidesimValueError(f"`rgb` must be [..., 3, H, W] with channels first; got shape {tuple(x.shape)}.")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif not x.is_floating_point():
        raise SlidesimTypeError(f"`rgb` must be uint8 or floating point; got {x.dtype}.")
    elif x.dtype != torch.float64:
        x = x.to(torch.float32)
    r, g, b = x.unbind(dim=-3)
    value = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), 0.0)
    hsv = torch.stack([hue, saturation, value], dim=-3)
    return hsv.numpy() if is_numpy else hsv
