"""The Triton distance kernels as torch operators (floor L2): ``torch.ops.slidesim.triton_distance`` and its
backward.

Registered with :func:`torch.library.triton_op`, so torch.compile sees through them (it traces the launches with
fake tensors and can schedule the kernels inside a compiled graph), and with an autograd formula that runs the
fused backward kernels. Imported only by the Triton engine on first use: importing it imports triton.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
from torch.library import triton_op, wrap_triton

from . import triton_kernels as kernels
from .triton_env import interpreting

_BLOCK_P = 128  # output positions per program: one coalesced row segment per warp group
_MAX_BLOCK_T = 32  # templates per program: each image load feeds up to 32 differences


def _block_t(n_templates: int) -> int:
    return min(_MAX_BLOCK_T, triton.next_power_of_2(max(1, n_templates)))


def _strides(tensor: torch.Tensor) -> list[int]:
    """Element strides, 0 along axes of size 1 so that they broadcast (shared banks, shared masks)."""
    return [0 if size == 1 else stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)]


def _operands(
    image: torch.Tensor, templates: torch.Tensor, weights: torch.Tensor | None, periods: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int], list[int]]:
    """Contiguous operands, dummies for absent ones, and the stride lists the kernels take."""
    image = image.contiguous()
    templates = templates.contiguous()
    weights_t = weights.contiguous() if weights is not None else templates
    periods_t = periods if periods is not None else templates
    w_strides = _strides(weights_t) if weights is not None else [0] * 5
    return image, templates, weights_t, periods_t, list(image.stride()), _strides(templates), w_strides


def _flags(power: int, weights: torch.Tensor | None, periods: torch.Tensor | None, dtype: torch.dtype) -> dict:
    return {
        "POWER": power,
        "WEIGHTED": weights is not None,
        "CIRCULAR": periods is not None,
        "FP64": dtype == torch.float64,
    }


def _output_dtype(image: torch.Tensor) -> torch.dtype:
    return torch.float64 if image.dtype == torch.float64 else torch.float32


def _operator(name: str, fake):
    """Register a Triton launcher as an operator. Compiled Triton: :func:`torch.library.triton_op`, which lets
    torch.compile trace the launches and schedule the kernels in its graph. Under Triton's interpreter, which
    cannot run on fake tensors and is no compile target: an opaque custom operator with a shape-only fake."""

    def register(launcher):
        if interpreting():
            operator = torch.library.custom_op(name, mutates_args=())(launcher)
            operator.register_fake(fake)
            return operator
        return triton_op(name, mutates_args=())(launcher)

    return register


def _distance_fake(image, templates, weights, periods, power, stride, dilation, out_height, out_width):
    shape = (image.shape[0], templates.shape[1], out_height, out_width)
    return image.new_empty(shape, dtype=_output_dtype(image))


def _backward_fake(grad, image, templates, weights, periods, power, stride, dilation, need_image, need_templates):
    grad_image = torch.empty_like(image) if need_image else image.new_empty(0)
    return grad_image, torch.empty_like(templates) if need_templates else templates.new_empty(0)


@_operator("slidesim::triton_distance", _distance_fake)
def triton_distance(
    image: torch.Tensor,
    templates: torch.Tensor,
    weights: torch.Tensor | None,
    periods: torch.Tensor | None,
    power: int,
    stride: Sequence[int],
    dilation: Sequence[int],
    out_height: int,
    out_width: int,
) -> torch.Tensor:
    """Σ_c Σ_taps w · |wrap(image − template)|^power with float32 (float64) accumulation.

    Args:
        image: [B, C, Hp, Wp] padded images (float16, bfloat16, float32 or float64).
        templates: [Bk, T, C, h, w], Bk ∈ {1, B}.
        weights: [Bw, Tw, Cw, h, w] mask weights (Bw ∈ {1, B}, Tw ∈ {1, T}, Cw ∈ {1, C}) or None.
        periods: [C] periods of circular channels (0 where not circular) in the accumulation dtype, or None.
        power: 1 for |d|, 2 for d².
        stride, dilation: (y, x) pairs.
        out_height, out_width: Size of the score map.

    Returns:
        [B, T, out_height, out_width] in float32 (float64 for float64 images).
    """
    B, C = image.shape[:2]
    T, h, w = templates.shape[1], templates.shape[3], templates.shape[4]
    out = torch.empty(B, T, out_height, out_width, dtype=_output_dtype(image), device=image.device)
    if out.numel() == 0:
        return out
    image, templates, weights_t, periods_t, si, st, sw = _operands(image, templates, weights, periods)
    block_t = _block_t(T)
    grid = (triton.cdiv(out_height * out_width, _BLOCK_P), triton.cdiv(T, block_t), B)
    wrap_triton(kernels.distance_forward)[grid](
        image, templates, weights_t, periods_t, out,
        C, T, out_height, out_width, h, w,
        *si, *st, *sw,
        stride[0], stride[1], dilation[0], dilation[1],
        **_flags(power, weights, periods, image.dtype),
        BLOCK_T=block_t, BLOCK_P=_BLOCK_P,
    )  # fmt: skip
    return out


@_operator("slidesim::triton_distance_backward", _backward_fake)
def triton_distance_backward(
    grad: torch.Tensor,
    image: torch.Tensor,
    templates: torch.Tensor,
    weights: torch.Tensor | None,
    periods: torch.Tensor | None,
    power: int,
    stride: Sequence[int],
    dilation: Sequence[int],
    need_image: bool,
    need_templates: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`triton_distance` for images ([B, C, Hp, Wp]) and templates ([Bk, T, C, h, w]), each
    computed by its own fused kernel; an empty tensor stands for a gradient that is not needed."""
    B, C, Hp, Wp = image.shape
    Bk, T, _, h, w = templates.shape
    Ho, Wo = grad.shape[-2:]
    grad = grad.contiguous()
    image, templates, weights_t, periods_t, si, st, sw = _operands(image, templates, weights, periods)
    flags = _flags(power, weights, periods, image.dtype)
    block_t = _block_t(T)
    geometry = (stride[0], stride[1], dilation[0], dilation[1])
    grad_image = image.new_empty(0)
    grad_templates = templates.new_empty(0)
    if need_image:
        grad_image = torch.empty_like(image)
        grid = (triton.cdiv(Hp * Wp, _BLOCK_P), C, B)
        wrap_triton(kernels.distance_backward_image)[grid](
            image, templates, weights_t, periods_t, grad, grad_image,
            T, Hp, Wp, Ho, Wo, h, w, *si, *st, *sw, *geometry,
            **flags, BLOCK_T=block_t, BLOCK_P=_BLOCK_P,
        )  # fmt: skip
    if need_templates:
        per_image = torch.empty(B, T, C, h, w, dtype=_output_dtype(image), device=image.device)
        grid = (C * h * w, triton.cdiv(T, block_t), B)
        wrap_triton(kernels.distance_backward_templates)[grid](
            image, templates, weights_t, periods_t, grad, per_image,
            T, Ho, Wo, h, w, *si, *st, *sw, *geometry,
            **flags, BLOCK_T=block_t, BLOCK_P=_BLOCK_P,
        )  # fmt: skip
        grad_templates = per_image.sum(dim=0, keepdim=True) if Bk == 1 else per_image
        grad_templates = grad_templates.to(templates.dtype)
    return grad_image, grad_templates


def _setup_context(ctx, inputs, output) -> None:
    image, templates, weights, periods, power, stride, dilation, _, _ = inputs
    ctx.save_for_backward(image, templates, weights, periods)
    ctx.power, ctx.stride, ctx.dilation = power, stride, dilation


def _backward(ctx, grad):
    image, templates, weights, periods = ctx.saved_tensors
    need_image, need_templates = ctx.needs_input_grad[:2]
    grad_image, grad_templates = torch.ops.slidesim.triton_distance_backward(
        grad, image, templates, weights, periods, ctx.power, ctx.stride, ctx.dilation, need_image, need_templates
    )
    return (
        grad_image if need_image else None,
        grad_templates if need_templates else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


triton_distance.register_autograd(_backward, setup_context=_setup_context)
