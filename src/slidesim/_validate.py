"""The boundary (floor L1): user arguments in, canonical tensors and a Problem out; results back out.

The only place that reads the arguments of :func:`slidesim.similarity`. It also holds their defaults
(:data:`DEFAULT_OPTIONS`), the keyword options that rebuild a validated call (:func:`options_of`, so
:func:`slidesim.match`, :mod:`slidesim.dask` and the compiled operator re-issue calls without threading each
option by hand), and the conversion of scores back to the caller's array type (:func:`finalize`).

Canonical layout:
    images     [B, C, H, W]        compute dtype (float32, or float64 for float64 / 32-bit integer input)
    image_source [B, C, H, W]      the same images as stored: 8- and 16-bit integer images (uint8, int8, uint16,
                                   int16) stay in their own dtype (narrow, a quarter or half of float32), and
                                   ``images`` is their conversion, made on first use and kept; other images are in
                                   the compute dtype and ``images`` is ``image_source``
    templates  [Bk, T, C, h, w]    Bk = 1 (one bank for every image) or B (a bank per image)
    mask       [Bm, Tm, Cm, h, w]  or None; Bm ∈ {1, Bk}, Tm ∈ {1, T}, Cm ∈ {1, C}; non-negative weights

With ``channels_last=True`` the caller's arrays hold their channels on the last axis (images [H, W, C] or
[B, H, W, C], templates [h, w, C], [T, h, w, C] or [B, T, h, w, C], masks [..., h, w, 1|C]): they are moved to the
canonical layout here, in the one copy that makes the compute-dtype tensors contiguous, and :func:`finalize` gives
per-channel scores their channel axis last.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ._checks import (
    check_bool,
    check_dtype,
    check_option,
    check_pair,
    check_sample_depths,
    sample_dtype,
    to_tensor,
)
from ._geometry import Border, Geometry, pad_amounts, pad_image
from ._types import CHANNELS_MODES, MODES, PADDINGS, ArrayLike
from .errors import SlidesimTypeError, SlidesimValueError
from .metrics import MetricSpec, resolve_metric

DEFAULT_MEMORY_LIMIT = 512 * 2**20

DEFAULT_OPTIONS: dict[str, Any] = {
    "metric": "zncc",
    "stride": 1,
    "dilation": 1,
    "mode": "valid",
    "padding": "constant",
    "pad_value": 0.0,
    "mask": None,
    "channels": "joint",
    "circular": None,
    "method": "auto",
    "memory_limit": None,
    "channels_last": False,
}
"""Every keyword option of :func:`slidesim.similarity` with its default (read-only: copy before changing)."""

NonFinite = Literal["none", "nan", "inf"]

_WIDE_DTYPES = {torch.float64, torch.int32, torch.int64}
NARROW_DTYPES = (torch.uint8, torch.int8, torch.uint16, torch.int16)
"""Image dtypes kept as they are in :attr:`Canonical.image_source` (converted to the compute dtype only where read)."""


@dataclass(frozen=True)
class Problem:
    """Shapes and options of one call: hashable, free of data, the key for planning.

    Attributes mirror the canonical layout in this module's docstring; ``out_height`` and ``out_width`` are the
    spatial size of the score map, ``mask_kind`` is "none", "shared" or "per_template", and ``nonfinite`` says
    what the images hold besides finite pixels: "none", "nan" (NaN but no ±inf) or "inf" (±inf, perhaps NaN).
    """

    batch: int
    channels: int
    height: int
    width: int
    n_templates: int
    template_height: int
    template_width: int
    per_image_bank: bool
    metric: str
    mode: str
    padding: str
    stride: tuple[int, int]
    dilation: tuple[int, int]
    channels_mode: str
    mask_kind: str
    circular: tuple[tuple[int, float], ...]
    input_dtype: str
    compute_dtype: str
    device: str
    out_height: int
    out_width: int
    requires_grad: bool
    nonfinite: NonFinite = "none"

    @property
    def finite(self) -> bool:
        """Whether every image pixel is finite."""
        return self.nonfinite == "none"


@dataclass
class Canonical:
    """Validated tensors and options for one call (see the module docstring for layouts).

    Attributes:
        image_source: Images [B, C, H, W] as stored: 8- and 16-bit integers narrow (:data:`NARROW_DTYPES`), any
            other dtype already converted to the compute dtype (``out_dtype``).
    """

    image_source: torch.Tensor
    templates: torch.Tensor
    mask: torch.Tensor | None
    spec: MetricSpec
    stride: tuple[int, int]
    dilation: tuple[int, int]
    mode: str
    padding: str
    pad_value: float
    channels_mode: str
    periods: tuple[float | None, ...] | None
    method: str
    memory_limit: int
    numpy_out: bool
    two_d: bool
    out_dtype: torch.dtype
    problem: Problem
    channels_last: bool = False
    unbatched: bool = False
    """Channels last, one [H, W, C] image and one [h, w, C] template: scores without batch and template axes."""
    converted: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """The conversion of narrow images to the compute dtype, once something asked for :attr:`images`."""
    whole_pixels: bool | None = field(default=None, repr=False, compare=False)
    """Whether every pixel is an integer of at most 16 bits, once :func:`integer_valued` has looked."""

    @property
    def narrow(self) -> bool:
        """Whether the images are stored narrow (8- or 16-bit integers), not in the compute dtype."""
        return self.image_source.dtype != self.out_dtype

    @property
    def images(self) -> torch.Tensor:
        """Images [B, C, H, W] in the compute dtype: narrow ones converted on first use and kept for the call."""
        if not self.narrow:
            return self.image_source
        if self.converted is None:
            self.converted = self.image_source.to(self.out_dtype)
        return self.converted

    @property
    def image_shape(self) -> torch.Size:
        """[B, C, H, W] of the images, without converting narrow ones."""
        return self.image_source.shape


_CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA: a last axis of this length looks like colour channels


def channels_first_order(ndim: int) -> tuple[int, ...]:
    """The axis order that moves the last axis of a channels-last array ([..., h, w, C], ``ndim`` ≥ 3) before its
    two spatial axes ([..., C, h, w])."""
    return (*range(ndim - 3), ndim - 1, ndim - 3, ndim - 2)


def channels_first(array: Any) -> Any:
    """A channels-last array ([..., h, w, C]: numpy, torch or dask) as a view in the channels-first layout
    ([..., C, h, w]); arrays of fewer than 3 axes (no channel axis) as they are."""
    if array.ndim < 3:
        return array
    order = channels_first_order(array.ndim)
    return array.permute(order) if isinstance(array, torch.Tensor) else array.transpose(order)


def _moved(name: str, ndim: int, numpy_in: bool, add_axis: bool = False) -> str:
    """The code that moves the last axis of a channels-last argument before its spatial axes, for the advice of
    layout errors: ``images.transpose(2, 0, 1)[None]`` for a numpy [H, W, C] image."""
    method = "transpose" if numpy_in else "permute"
    order = ", ".join(map(str, channels_first_order(ndim)))
    return f"{name}.{method}({order})" + ("[None]" if add_axis else "")


def _three_d_images_advice(shape: tuple[int, ...], numpy_in: bool) -> str:
    """How to pass a 3-D array of images: channels last when its last axis looks like colour channels, else the
    missing axis."""
    if shape[-1] in _CHANNEL_COUNTS:
        return (
            f"Its last axis of {shape[-1]} looks like colour channels ([H, W, C], as OpenCV, Pillow and "
            "scikit-image hold images): pass channels_last=True to score it as it is (templates then [h, w, C] or "
            f"[T, h, w, C]), or move the channels first: {_moved('images', 3, numpy_in, add_axis=True)} is "
            "[1, C, H, W]. If it is one [C, H, W] image, add the batch axis: images[None]."
        )
    return (
        "A 3-D array is ambiguous ([C, H, W] or [B, H, W]): add the missing axis explicitly: images[None] for one "
        "[C, H, W] image, images[:, None] for a batch of [B, H, W] grey images, or channels_last=True if its last "
        f"axis holds {shape[-1]} channels ([H, W, C])."
    )


def _looks_channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a channels-first image or template looks channels-last instead: a last axis of 1, 3 or 4 and
    another length where the channels would be ([1, 480, 640, 3])."""
    return len(shape) >= 3 and shape[-1] in _CHANNEL_COUNTS and shape[-3] not in _CHANNEL_COUNTS


def _channels_advice(images: tuple[int, ...], templates: tuple[int, ...], numpy_in: tuple[bool, bool]) -> str:
    """How to fix images [B, C, H, W] and templates whose channel counts differ, when one of them (or both) looks
    channels-last; empty otherwise."""
    image_last, template_last = _looks_channels_last(images), _looks_channels_last(templates)
    if image_last and template_last and images[-1] == templates[-1]:
        return (
            f" Both look channels-last ([B, H, W, C] and [..., h, w, C], {images[-1]} channels): pass "
            "channels_last=True."
        )
    if image_last and templates[-3] == images[-1]:
        move = _moved("images", 4, numpy_in[0])
        return f" `images` look channels-last ([B, H, W, C]): move their channels first with {move}."
    if template_last and templates[-1] == images[-3]:
        return (
            " `templates` look channels-last ([..., h, w, C]): move their channels first with "
            f"{_moved('templates', len(templates), numpy_in[1])}."
        )
    return ""


def _channel_count_advice(
    image_channels: int, template_channels: int, channels_last: bool, numpy_in: tuple[bool, bool]
) -> str:
    """How to bring images and templates that are laid out right but hold different channel counts (a grey
    template on colour images, RGBA against RGB) to one count, as code for the arrays given; empty otherwise."""
    axis = -1 if channels_last else -3

    def grey(name: str, from_numpy: bool) -> str:
        call = f"mean(axis={axis}, keepdims=True)" if from_numpy else f"mean(dim={axis}, keepdim=True)"
        return f"{name}.{call}"

    def first_three(name: str) -> str:
        return f"{name}[..., :3]" if channels_last else f"{name}[..., :3, :, :]"

    if template_channels == 1 and image_channels > 1:
        return f" To compare in grey, average the images' channels: {grey('images', numpy_in[0])}."
    if image_channels == 1 and template_channels > 1:
        return f" To compare in grey, average the templates' channels: {grey('templates', numpy_in[1])}."
    if (image_channels, template_channels) == (4, 3):
        return f" To drop the images' fourth (alpha) channel: {first_three('images')}."
    if (image_channels, template_channels) == (3, 4):
        return (
            f" To drop the templates' fourth (alpha) channel: {first_three('templates')} (pass the alpha as `mask` "
            "to keep it as weights)."
        )
    return ""


def _channels_first_advice(images: tuple[int, ...], templates: tuple[int, ...]) -> str:
    """With channels_last=True: how to fix images and templates whose channel counts differ because they are laid
    out channels first ([B, C, H, W] and [T, C, h, w]); empty otherwise."""
    if len(images) == 4 and images[1] in _CHANNEL_COUNTS and len(templates) >= 4 and templates[-3] == images[1]:
        return (
            f" They look channels-first ([B, C, H, W] and [T, C, h, w], {images[1]} channels): pass "
            "channels_last=False."
        )
    return ""


def _canonical_images_templates(
    images: torch.Tensor, templates: torch.Tensor, channels_last: bool, numpy_in: tuple[bool, bool]
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(images [B, C, H, W], bank [Bk, T, C, h, w], whether the call is 2-D) from the caller's arrays, which are
    channels last when ``channels_last``; ``numpy_in`` says which came from numpy (for the advice in errors)."""
    image_shape, template_shape = tuple(images.shape), tuple(templates.shape)
    if images.ndim == 2:
        if templates.ndim != 2:
            banks = (
                "pass images as [H, W, C] or [B, H, W, C] and templates as [h, w, C] or [T, h, w, C] "
                "(images[..., None] adds a channel axis of 1)"
                if channels_last
                else "pass images as [B, C, H, W] and templates as [T, C, h, w]"
            )
            raise SlidesimValueError(
                "`templates` must be 2-D [h, w] when `images` is 2-D [H, W]; "
                f"got templates of shape {template_shape}. For channels and banks, {banks}."
            )
        return images[None, None], templates[None, None, None], True
    if channels_last:
        return _channels_last_images_templates(images, templates, numpy_in)
    if images.ndim != 4:
        advice = _three_d_images_advice(image_shape, numpy_in[0]) if images.ndim == 3 else ""
        raise SlidesimValueError(
            f"`images` must be [B, C, H, W] (or [H, W] with a 2-D template); got shape {image_shape}. {advice}".rstrip()
        )
    if templates.ndim == 4:
        bank = templates[None]
    elif templates.ndim == 5:
        if templates.shape[0] != images.shape[0]:
            raise SlidesimValueError(
                "`templates` given as per-image banks [B, T, C, h, w] must have B equal to the number of images "
                f"({images.shape[0]}); got shape {template_shape}."
            )
        bank = templates
    else:
        raise SlidesimValueError(
            "`templates` must be [T, C, h, w], or [B, T, C, h, w] for a bank per image, when `images` is "
            f"[B, C, H, W]; got shape {template_shape}.{_template_rank_advice(image_shape, template_shape, numpy_in)}"
        )
    if bank.shape[2] != images.shape[1]:
        raise SlidesimValueError(
            f"`templates` must have as many channels as `images` ({images.shape[1]}); got shape "
            f"{template_shape} against images of shape {image_shape}."
            + (
                _channels_advice(image_shape, template_shape, numpy_in)
                or _channel_count_advice(images.shape[1], bank.shape[2], False, numpy_in)
            )
        )
    return images, bank, False


def _template_rank_advice(images: tuple[int, ...], templates: tuple[int, ...], numpy_in: tuple[bool, bool]) -> str:
    """How to pass a template of the wrong rank beside images [B, C, H, W]; empty when there is no clear fix."""
    if len(templates) != 3:
        return ""
    if _looks_channels_last(images) and templates[-1] == images[-1]:
        return (
            f" `images` and `templates` look channels-last ([B, H, W, C] and [h, w, C], {images[-1]} channels): "
            "pass channels_last=True."
        )
    if templates[0] == images[1]:
        return " For one template [C, h, w], add the template axis: templates[None]."
    if templates[-1] == images[1]:
        return (
            " `templates` look channels-last ([h, w, C]): move their channels first with "
            f"{_moved('templates', 3, numpy_in[1], add_axis=True)}."
        )
    return ""


def _channels_last_images_templates(
    images: torch.Tensor, templates: torch.Tensor, numpy_in: tuple[bool, bool]
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(images [B, C, H, W], bank [Bk, T, C, h, w], False) as views of images [H, W, C] or [B, H, W, C] and
    templates [h, w, C], [T, h, w, C] or [B, T, h, w, C]."""
    image_shape, template_shape = tuple(images.shape), tuple(templates.shape)
    if images.ndim not in (3, 4):
        raise SlidesimValueError(
            "`images` must be [H, W, C] or [B, H, W, C] with channels_last=True (or [H, W] with a 2-D template); "
            f"got shape {image_shape}."
        )
    if templates.ndim not in (3, 4, 5):
        raise SlidesimValueError(
            "`templates` must be [h, w, C] or [T, h, w, C], or [B, T, h, w, C] for a bank per image, with "
            f"channels_last=True; got shape {template_shape}."
        )
    image_4d = channels_first(images if images.ndim == 4 else images[None])
    bank = channels_first(templates)
    bank = bank[None, None] if templates.ndim == 3 else (bank[None] if templates.ndim == 4 else bank)
    if templates.ndim == 5 and templates.shape[0] != image_4d.shape[0]:
        raise SlidesimValueError(
            "`templates` given as per-image banks [B, T, h, w, C] must have B equal to the number of images "
            f"({image_4d.shape[0]}); got shape {template_shape} against images of shape {image_shape}."
        )
    if templates.shape[-1] != images.shape[-1]:
        raise SlidesimValueError(
            f"`templates` must have as many channels (the last axis, with channels_last=True) as `images` "
            f"({images.shape[-1]}); got shape {template_shape} against images of shape {image_shape}."
            + (
                _channels_first_advice(image_shape, template_shape)
                or _channel_count_advice(images.shape[-1], templates.shape[-1], True, numpy_in)
            )
        )
    return image_4d, bank, False


def _mask_layout_advice(shape: tuple[int, ...], bank: torch.Tensor, channels_last: bool, numpy_in: bool) -> str:
    """How to fix a mask of the wrong layout: channels last in a channels-first call, or the reverse; empty when
    it is not that."""
    _, _, C, h, w = bank.shape
    if len(shape) < 3:
        return ""
    if not channels_last and shape[-3:-1] == (h, w) and shape[-1] in (1, C):
        move = _moved("mask", len(shape), numpy_in)
        return f" It looks channels-last ([..., h, w, C]): move its channels first with {move}."
    if channels_last and shape[-2:] == (h, w) and shape[-3] in (1, C):
        method = "transpose" if numpy_in else "permute"
        n = len(shape)
        order = ", ".join(map(str, (*range(n - 3), n - 2, n - 1, n - 3)))
        return f" It looks channels-first ([..., C, h, w]): move its channels last with mask.{method}({order})."
    return ""


def _canonical_mask(
    mask: object, bank: torch.Tensor, device: torch.device, dtype: torch.dtype, channels_last: bool
) -> torch.Tensor | None:
    """Return the mask as [Bm, Tm, Cm, h, w] weights in dtype (bool and integer masks become 0/1); with
    ``channels_last`` the caller's mask holds its channels on the last axis."""
    if mask is None:
        return None
    tensor, numpy_in = to_tensor("mask", mask, device)
    if tensor.device != device:
        raise SlidesimValueError(f"`mask` must be on the templates' device {device}; got {tensor.device}.")
    if tensor.dtype.is_complex:
        raise SlidesimTypeError(f"`mask` must be real (bool, integer or float); got {tensor.dtype}.")
    Bk, T, C, h, w = bank.shape
    sizes = f"h, w = {h}, {w}, C = {C}, T = {T}"
    shape = tuple(tensor.shape)
    if channels_last:
        expected = f"[h, w], [h, w, 1|C], [T, h, w, 1|C] or [B, T, h, w, 1|C] with channels_last=True, {sizes}"
        spatial = shape[-3:-1] if tensor.ndim >= 3 else shape
    else:
        expected = f"[h, w], [C, h, w], [T, 1|C, h, w] or [B, T, 1|C, h, w] with {sizes}"
        spatial = shape[-2:]
    if tensor.ndim < 2 or tensor.ndim > 5 or spatial != (h, w):
        advice = _mask_layout_advice(shape, bank, channels_last, numpy_in)
        raise SlidesimValueError(f"`mask` must be {expected}; got shape {shape}.{advice}")
    if channels_last:
        tensor = channels_first(tensor)
    if tensor.ndim == 2:
        tensor = tensor[None, None, None]
    elif tensor.ndim == 3:
        tensor = tensor[None, None]
    elif tensor.ndim == 4:
        tensor = tensor[None]
    elif Bk == 1 and tensor.shape[0] != 1:
        raise SlidesimValueError(f"`mask` may only be 5-D with per-image template banks; expected {expected}.")
    Bm, Tm, Cm = tensor.shape[:3]
    if Bm not in (1, Bk) or Tm not in (1, T) or Cm not in (1, C):
        raise SlidesimValueError(f"`mask` must be {expected}; got shape {shape}.")
    weights = tensor.to(dtype)
    if not has_data(weights):  # shapes only (torch.compile's fake tensors): the values are checked when it runs
        return weights if tensor.dtype.is_floating_point else (weights != 0).to(dtype)
    if bool(torch.isnan(weights).any()) or bool(torch.isinf(weights).any()):
        raise SlidesimValueError("`mask` must be finite; it contains NaN or inf.")
    if bool((weights < 0).any()):
        raise SlidesimValueError(f"`mask` weights must be non-negative; got a minimum of {weights.min().item():g}.")
    if not tensor.dtype.is_floating_point:
        weights = (weights != 0).to(dtype)  # 8-bit masks are binary, as in OpenCV
    totals = weights.sum(dim=(-1, -2)).sum(dim=-1)
    if bool((totals <= 0).any()):
        raise SlidesimValueError("`mask` must have a positive total weight for every template; one is all zero.")
    return weights


def _canonical_circular(circular: object, spec: MetricSpec, channels: int) -> tuple[float | None, ...] | None:
    if circular is None:
        return None
    if not isinstance(circular, dict):
        raise SlidesimTypeError(f"`circular` must be a dict {{channel index: period}}; got {type(circular).__name__}.")
    if not spec.circular_ok:
        raise SlidesimValueError(
            f"`circular` applies to the distance metrics sad, mad, l1_similarity and ssd; got metric {spec.name!r}."
        )
    periods: list[float | None] = [None] * channels
    for key, period in circular.items():
        if not isinstance(key, numbers.Integral) or isinstance(key, bool) or not 0 <= int(key) < channels:
            raise SlidesimValueError(f"`circular` keys must be channel indices in [0, {channels}); got {key!r}.")
        if not isinstance(period, numbers.Real) or isinstance(period, bool) or not math.isfinite(period) or period <= 0:
            raise SlidesimValueError(
                f"`circular` periods must be finite positive numbers; got {period!r} for channel {key}."
            )
        periods[int(key)] = float(period)
    return tuple(periods) if any(p is not None for p in periods) else None


def canonicalize(
    images: object,
    templates: object,
    *,
    metric: object,
    stride: object,
    dilation: object,
    mode: object,
    padding: object,
    pad_value: object,
    mask: object,
    channels: object,
    circular: object,
    method: object,
    memory_limit: object,
    channels_last: object,
) -> Canonical:
    """Check every argument of :func:`slidesim.similarity` and return canonical tensors and the Problem.

    Raises:
        SlidesimTypeError: Wrong types or dtypes (complex, bool, object arrays...), or 8- and 16-bit integer
            images and templates together (their values are on different scales).
        SlidesimValueError: Wrong ranks, shapes, sizes, option names or values.
    """
    spec = resolve_metric(metric)
    mode_s = check_option("mode", mode, MODES)
    padding_s = check_option("padding", padding, PADDINGS)
    channels_s = check_option("channels", channels, CHANNELS_MODES)
    stride_p = check_pair("stride", stride)
    dilation_p = check_pair("dilation", dilation)
    last = check_bool("channels_last", channels_last)
    if not isinstance(method, str):
        raise SlidesimTypeError(f"`method` must be a string such as 'auto'; got {type(method).__name__}.")
    if not isinstance(pad_value, numbers.Real) or isinstance(pad_value, bool) or not math.isfinite(pad_value):
        raise SlidesimTypeError(f"`pad_value` must be a finite real number; got {pad_value!r}.")
    if memory_limit is None:
        limit = DEFAULT_MEMORY_LIMIT
    elif isinstance(memory_limit, numbers.Integral) and not isinstance(memory_limit, bool):
        limit = int(memory_limit)
        if limit <= 0:
            raise SlidesimValueError(f"`memory_limit` must be a positive number of bytes; got {memory_limit}.")
    else:
        raise SlidesimTypeError(f"`memory_limit` must be an int number of bytes or None; got {memory_limit!r}.")

    device = None
    for value in (images, templates):
        if isinstance(value, torch.Tensor):
            if device is not None and value.device != device:
                raise SlidesimValueError(
                    f"`images` and `templates` must be on the same device; got {images.device} and "  # type: ignore[union-attr]
                    f"{templates.device}."  # type: ignore[union-attr]
                )
            device = value.device
    check_sample_depths(images, templates)  # before numpy uint16 becomes float32 and its depth is lost
    image_t, numpy_out = to_tensor("images", images, device, keep_uint16=True)
    template_t, template_numpy = to_tensor("templates", templates, device)
    check_dtype("images", image_t)
    check_dtype("templates", template_t)
    # the images' own dtype (numpy uint16 images stay uint16 on the CPU; elsewhere they arrive as float32)
    input_dtype = sample_dtype(images) or str(image_t.dtype).replace("torch.", "")
    wide = image_t.dtype in _WIDE_DTYPES or template_t.dtype in _WIDE_DTYPES
    compute_dtype = torch.float64 if wide else torch.float32
    requires_grad = image_t.requires_grad or template_t.requires_grad

    image_4d, bank, two_d = _canonical_images_templates(image_t, template_t, last, (numpy_out, template_numpy))
    B, C, H, W = image_4d.shape
    _, T, _, h, w = bank.shape
    span_h, span_w = dilation_p[0] * (h - 1) + 1, dilation_p[1] * (w - 1) + 1
    if mode_s == "valid" and (span_h > H or span_w > W):
        raise SlidesimValueError(
            f"`templates` spatial extent {span_h}x{span_w} (size {h}x{w}, dilation {dilation_p}) is larger than "
            f"the image {H}x{W} in mode 'valid'; use mode='same' or 'full', or a smaller template."
        )
    pads_h, pads_w = pad_amounts(mode_s, H, h, dilation_p[0]), pad_amounts(mode_s, W, w, dilation_p[1])
    reach_h, reach_w = H + sum(pads_h) - span_h, W + sum(pads_w) - span_w  # how far a window can move
    if (sum(pads_h) > H or sum(pads_w) > W) and B * C * (H + sum(pads_h)) * (W + sum(pads_w)) * 8 > limit:
        # padding larger than the image itself: windows that see (almost) only padding, in planes that could
        # exhaust memory (a dilation of 10**6 in mode 'full' asks for terabytes)
        need = B * C * (H + sum(pads_h)) * (W + sum(pads_w)) * 8
        raise SlidesimValueError(
            f"`dilation` {dilation_p} with templates of size {h}x{w} in mode {mode_s!r} pads the {H}x{W} images to "
            f"{H + sum(pads_h)}x{W + sum(pads_w)}, which needs {need} bytes, over `memory_limit` {limit}; use a "
            "smaller dilation or template, or mode='valid'."
        )
    # A stride past the last window gives one output along its axis; the same stride at the window's reach gives
    # the same result without asking kernels for steps of astronomical size.
    stride_p = (min(stride_p[0], reach_h + 1), min(stride_p[1], reach_w + 1))
    out_h = reach_h // stride_p[0] + 1
    out_w = reach_w // stride_p[1] + 1

    # Channels-last views become contiguous in the copy to the compute dtype (one copy at most): every engine then
    # reads the memory layout, and so gives the numbers, of the channels-first call. 8- and 16-bit integer images
    # stay narrow (their copy, if any, in their own dtype): converted only where and when a reader needs floats.
    layout = torch.contiguous_format if last else torch.preserve_format
    bank_c = bank.to(compute_dtype, memory_format=layout)
    mask_c = _canonical_mask(mask, bank_c, bank_c.device, compute_dtype, last)
    if mask_c is not None and last:
        mask_c = mask_c.contiguous()
    if mask_c is not None and channels_s != "joint" and has_data(mask_c):
        per_channel = mask_c.sum(dim=(-1, -2))
        if bool((per_channel <= 0).any()):
            raise SlidesimValueError(
                f"`mask` must have positive weight in every channel with channels={channels_s!r}; "
                "one channel is all zero."
            )
    if mask_c is not None and not all_finite(bank_c):
        # A zero weight takes its template value out of the window: a NaN or inf there must not reach any score
        # through a product with that zero. (A per-image mask comes only with a per-image bank: no shape grows.)
        bank_c = torch.where(mask_c > 0, bank_c, 0.0)
    periods = _canonical_circular(circular, spec, C)
    if keep_narrow(image_4d, periods):
        images_c = image_4d.contiguous() if last else image_4d
    else:
        images_c = _within_period(image_4d.to(compute_dtype, memory_format=layout), periods)
    bank_c = _within_period(bank_c, periods)
    kind = "none" if mask_c is None else ("per_template" if mask_c.shape[1] > 1 else "shared")
    finite = all_finite(images_c)
    problem = Problem(
        batch=B,
        channels=C,
        height=H,
        width=W,
        n_templates=T,
        template_height=h,
        template_width=w,
        per_image_bank=bank.shape[0] > 1 or template_t.ndim == 5,
        metric=spec.name,
        mode=mode_s,
        padding=padding_s,
        stride=stride_p,
        dilation=dilation_p,
        channels_mode=channels_s,
        mask_kind=kind,
        circular=tuple((i, p) for i, p in enumerate(periods or ()) if p is not None),
        input_dtype=input_dtype,
        compute_dtype=str(compute_dtype).replace("torch.", ""),
        device=str(images_c.device),
        out_height=out_h,
        out_width=out_w,
        requires_grad=requires_grad,
        nonfinite="none" if finite else ("inf" if bool(torch.isinf(images_c).any()) else "nan"),
    )
    return Canonical(
        image_source=images_c,
        templates=bank_c,
        mask=mask_c,
        spec=spec,
        stride=stride_p,
        dilation=dilation_p,
        mode=mode_s,
        padding=padding_s,
        pad_value=float(pad_value),
        channels_mode=channels_s,
        periods=periods,
        method=method.lower(),
        memory_limit=limit,
        numpy_out=numpy_out,
        two_d=two_d,
        out_dtype=compute_dtype,
        problem=problem,
        channels_last=last,
        unbatched=last and image_t.ndim == 3 and template_t.ndim == 3,
    )


def keep_narrow(images: torch.Tensor, periods: tuple[float | None, ...] | None) -> bool:
    """Whether images [B, C, H, W] stay in their own dtype in :attr:`Canonical.image_source`: 8- and 16-bit
    integers, unless circular channels need them reduced within their period (a float operation), and uint16 on
    the CPU only (torch has few uint16 kernels elsewhere)."""
    if images.dtype not in NARROW_DTYPES or periods is not None:
        return False
    return images.dtype != torch.uint16 or images.device.type == "cpu"


def _within_period(values: torch.Tensor, periods: tuple[float | None, ...] | None) -> torch.Tensor:
    """``values`` [..., C, h, w] with the finite values of each circular channel replaced by fmod(value, period).

    The wrapped difference is the same for any representatives, but the difference of two small ones is exact
    where that of bright values is not: in float32, 1e4 + 0.3 − 0.2 rounds by 5e-4, more than a period of 0.5
    allows. fmod is exact (|result| < period), so nothing else changes (and ±inf stays ±inf).
    """
    if periods is None:
        return values
    planes = []
    for c, period in enumerate(periods):
        plane = values[..., c, :, :]
        if period is not None:
            plane = torch.where(torch.isfinite(plane), torch.fmod(plane, period), plane)
        planes.append(plane)
    return torch.stack(planes, dim=-3)


def has_data(tensor: torch.Tensor) -> bool:
    """False for tensors that carry shapes only (meta tensors, torch.compile's fake tensors)."""
    if tensor.device.type == "meta":
        return False
    if type(tensor) is torch.Tensor:  # fake and functional tensors are subclasses; skip the slower test
        return True
    from torch._subclasses.fake_tensor import is_fake

    return not is_fake(tensor)


def all_finite(images: torch.Tensor) -> bool:
    """Whether every value is finite. A finite sum proves it in one pass without a boolean temporary; only when
    the sum is not finite (a NaN or inf pixel, or an overflow of huge values) does the full test run. Tensors
    without data (shapes only) count as finite."""
    if not images.dtype.is_floating_point or not has_data(images):
        return True
    if math.isfinite(images.sum().item()):  # a Python float: cheaper than a tensor test on small calls
        return True
    return bool(torch.isfinite(images).all())


def with_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with :data:`DEFAULT_OPTIONS`; an unknown name raises with the valid ones."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise SlidesimTypeError(
            f"`{unknown[0]}` is not an option of slidesim; the options are {', '.join(DEFAULT_OPTIONS)}."
        )
    return {**DEFAULT_OPTIONS, **options}


def options_of(canon: Canonical, **changes: Any) -> dict[str, Any]:
    """The keyword options that rebuild the validated call ``canon`` (with ``changes``): the inverse of
    :func:`canonicalize` on everything but the arrays. The mask is given in its canonical [Bm, Tm, Cm, h, w]
    layout, without a leading 1 (a 5-D mask needs a bank per image)."""
    mask = canon.mask
    if mask is not None and mask.shape[0] == 1:
        mask = mask[0]
    periods = canon.periods
    options = {
        "metric": canon.spec.name,
        "stride": canon.stride,
        "dilation": canon.dilation,
        "mode": canon.mode,
        "padding": canon.padding,
        "pad_value": canon.pad_value,
        "mask": mask,
        "channels": canon.channels_mode,
        "circular": None if periods is None else {c: p for c, p in enumerate(periods) if p is not None},
        "method": canon.method,
        "memory_limit": canon.memory_limit,
        "channels_last": False,  # the validated tensors are channels first
    }
    return with_defaults({**options, **changes})


def with_bank(canon: Canonical, templates: torch.Tensor, mask: torch.Tensor | None) -> Canonical:
    """The validated call ``canon`` with another canonical bank [Bk, T, C, h, w] and mask [Bm, Tm, Cm, h, w]."""
    templates = templates[0] if templates.shape[0] == 1 else templates  # one bank for every image: [T, C, h, w]
    if mask is not None and mask.shape[0] == 1:
        mask = mask[0]
    # the float images, as every rebuilt call has had them (a narrow source would change its numerical path)
    return canonicalize(canon.images, templates, **options_of(canon, mask=mask))


def scores_shape(canon: Canonical) -> tuple[int, ...]:
    """The shape of the scores of a validated call as the caller gets them: [B, T, H', W'] ([B, T, C, H', W'] for
    channels="separate", [B, T, H', W', C] with it and channels_last=True), without the batch and template axes
    for 2-D input ([H', W']) and for one [H, W, C] image with one [h, w, C] template."""
    problem = canon.problem
    spatial = (problem.out_height, problem.out_width)
    if canon.two_d:
        return spatial
    channels = (problem.channels,) if canon.channels_mode == "separate" else ()
    maps = (*spatial, *channels) if canon.channels_last else (*channels, *spatial)
    return maps if canon.unbatched else (problem.batch, problem.n_templates, *maps)


def finalize(scores: torch.Tensor, canon: Canonical, dtype: torch.dtype) -> ArrayLike:
    """Cast to the output dtype, lay out the canonical scores as the caller gets them (:func:`scores_shape`: a
    view), convert to numpy for numpy input (contiguous)."""
    scores = scores.to(dtype)
    if canon.channels_last and canon.channels_mode == "separate" and not canon.two_d:
        scores = scores.movedim(2, -1)  # [B, T, C, H', W'] -> [B, T, H', W', C]
    scores = scores.reshape(scores_shape(canon))  # drops axes of length 1 only: a view
    if canon.numpy_out:
        return np.ascontiguousarray(scores.detach().cpu().numpy())
    return scores


def geometry(canon: Canonical) -> Geometry:
    """Where the windows of a validated call are."""
    problem = canon.problem
    return Geometry(
        canon.stride, canon.dilation, problem.out_height, problem.out_width, tuple(canon.templates.shape[-2:])
    )


def border(canon: Canonical) -> Border:
    """Where the images of a validated call lie in their padded planes, and the constant padding's value."""
    h, w = canon.templates.shape[-2:]
    H, W = canon.image_shape[-2:]
    top, bottom = pad_amounts(canon.mode, H, h, canon.dilation[0])
    left, right = pad_amounts(canon.mode, W, w, canon.dilation[1])
    # circular channels reduce the pad value per channel: their paddings are left to the tap-by-tap sums
    value = canon.pad_value if canon.padding == "constant" and canon.periods is None else None
    return Border(top, bottom, left, right, value)


_SMALL_INTEGER_DTYPES = ("uint8", "int8", "uint16", "int16")
_SMALL_INTEGER_LIMIT = 65535  # the largest magnitude of an 8- or 16-bit pixel
_WHOLE_CHECK_ELEMENTS = 2**20  # pixels per step of the integer test of float images (bounds its temporaries)


def integer_valued(canon: Canonical) -> bool:
    """Whether every pixel of the padded images is an integer of at most 16 bits: the input was such an integer
    array, or a float array holding only such integers (a float copy of an 8- or 16-bit picture), and constant
    padding (where there is any) pads with an integer.

    Sums of such pixels and of their squares are exact in float64 up to 2^53, which lets the scoring code decide
    flat windows from the sums alone and keep the whole cross term exact (:mod:`slidesim.scoring.statistics`).
    Float images are looked at once per call; a fractional pixel in the first row settles most of them at once.
    """
    edge = border(canon)
    if edge.value is not None and edge.padded and not float(edge.value).is_integer():
        return False
    if canon.problem.input_dtype in _SMALL_INTEGER_DTYPES:
        return True
    if canon.whole_pixels is None:
        canon.whole_pixels = _whole_pixels(canon.image_source)
    return canon.whole_pixels


def _whole_pixels(images: torch.Tensor) -> bool:
    """Whether every value of float images [B, C, H, W] is an integer within ±65535 (NaN and ±inf are not)."""
    if not images.is_floating_point() or images.numel() == 0:
        return False
    data = images.detach()
    if not _whole(data[..., :1, :]):
        return False
    flat = data.reshape(-1)
    return all(_whole(flat[i : i + _WHOLE_CHECK_ELEMENTS]) for i in range(0, flat.numel(), _WHOLE_CHECK_ELEMENTS))


def _whole(values: torch.Tensor) -> bool:
    """Whether every value is an integer within ±65535."""
    if not torch.equal(values, values.round()):  # first: a fractional image fails here, in two operations
        return False
    low, high = torch.aminmax(values)
    return float(low) >= -_SMALL_INTEGER_LIMIT and float(high) <= _SMALL_INTEGER_LIMIT


def padded_images(canon: Canonical, narrow: bool = False) -> torch.Tensor:
    """The canonical images padded for the call's mode ([B, C, Hp, Wp], compute dtype).

    With ``narrow`` (a reader that converts as it reads) narrow images that need no padding come as they are
    stored, in their 8- or 16-bit integer dtype. Narrow images that are padded are converted for the padded copy
    only: the conversion is not kept.
    """
    edge = border(canon)
    if canon.narrow and not edge.padded and narrow:
        return canon.image_source
    if canon.narrow and edge.padded and canon.converted is None:
        source = canon.image_source.to(canon.out_dtype)  # dropped once padded: the padded copy is what is read
    else:
        source = canon.images
    padded = pad_image(source, (edge.top, edge.bottom, edge.left, edge.right), canon.padding, canon.pad_value)
    if canon.periods is not None and canon.padding == "constant" and edge.padded:
        padded = _within_period(padded, canon.periods)  # the pad value, like the pixels, within the period
    return padded


def window_origin(canon: Canonical) -> tuple[float, float]:
    """Image position (y, x) of the template centre at score-map position (0, 0); it moves by the stride."""
    h, w = canon.templates.shape[-2:]
    (dy, dx) = canon.dilation
    top, _ = pad_amounts(canon.mode, canon.image_shape[-2], h, dy)
    left, _ = pad_amounts(canon.mode, canon.image_shape[-1], w, dx)
    return dy * (h - 1) / 2 - top, dx * (w - 1) / 2 - left
