"""similarity() inside torch.compile (floor L6): one operator, ``torch.ops.slidesim.similarity``.

Validation, planning and the engines read data (finite checks, active taps, numba and Triton launches with
host-side arguments), which Dynamo cannot trace without breaking the graph. Inside a compiled region
:func:`slidesim.similarity` therefore calls this operator instead: its fake implementation computes the output's
shape and dtype from the inputs' shapes alone (the same validation run on shapes), so
``torch.compile(fullgraph=True)`` records one node; at run time the node runs the eager path, with the same engine
choice and numbers as outside compile. Its gradient is a second operator that recomputes the forward pass under
autograd, so every engine's fused backward (numba, Triton, direct) serves compiled code too.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from ._checks import check_bool
from ._eager import run_eager
from ._validate import DEFAULT_OPTIONS, canonicalize, scores_shape
from .metrics import resolve_metric

# The operators take the options of similarity, all but the mask, after their tensors: each with its type in the
# operators' schema, in the order of DEFAULT_OPTIONS.
_OPERATOR_TYPES = {
    "metric": "str",
    "stride": "SymInt[]",
    "dilation": "SymInt[]",
    "mode": "str",
    "padding": "str",
    "pad_value": "float",
    "channels": "str",
    "circular": "float[]",
    "method": "str",
    "memory_limit": "SymInt",
    "channels_last": "bool",
}
_OPERATOR_OPTIONS = tuple(name for name in DEFAULT_OPTIONS if name != "mask")
assert set(_OPERATOR_OPTIONS) == set(_OPERATOR_TYPES), "every option of similarity needs a type in the schema"
_OPTIONS_SCHEMA = ", ".join(f"{_OPERATOR_TYPES[name]} {name}" for name in _OPERATOR_OPTIONS)


def _to_operator(options: dict) -> list:
    """Keyword options of similarity -> the operator's option arguments (:data:`_OPERATOR_OPTIONS`): pairs as
    lists, circular channels as a flat list of channel, period pairs, the default memory limit as 0."""
    circular = options["circular"] or {}
    encoded = {
        **{name: options[name] for name in _OPERATOR_OPTIONS},
        "metric": resolve_metric(options["metric"]).name,  # OpenCV's integer constants too
        "stride": _pair(options["stride"]),
        "dilation": _pair(options["dilation"]),
        "mode": str(options["mode"]),
        "padding": str(options["padding"]),
        "pad_value": float(options["pad_value"]),
        "channels": str(options["channels"]),
        "circular": [float(v) for key, period in circular.items() for v in (key, period)],
        "method": str(options["method"]),
        "memory_limit": int(options["memory_limit"] or 0),
        "channels_last": check_bool("channels_last", options["channels_last"]),  # bool() would take any value
    }
    return [encoded[name] for name in _OPERATOR_OPTIONS]


def _options(*arguments) -> dict:
    """The operator's option arguments -> keyword options of similarity (the inverse of :func:`_to_operator`)."""
    options = dict(zip(_OPERATOR_OPTIONS, arguments, strict=True))
    circular = options["circular"]
    options["circular"] = {int(circular[k]): circular[k + 1] for k in range(0, len(circular), 2)} if circular else None
    options["stride"], options["dilation"] = tuple(options["stride"]), tuple(options["dilation"])
    options["memory_limit"] = options["memory_limit"] if options["memory_limit"] > 0 else None
    return options


def _eager(images, templates, mask, options: dict) -> torch.Tensor:
    return run_eager(images, templates, mask=mask, **options)


def _with_default_state(function, device: torch.device):
    """Run ``function()`` on a fresh thread, with torch's default thread-local state.

    An operator's implementation runs with most dispatch keys excluded: autograd records nothing, and compiled
    code even calls it with the Conjugate and Negative keys off, so a lazily conjugated or negated view made
    inside would be read as if it were a plain one. A fresh thread starts from torch's
    defaults; on CUDA it is given the caller's device and stream so that kernels stay ordered with the caller's.
    """
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def call():
        if stream is None:
            return function()
        with torch.cuda.device(device), torch.cuda.stream(stream):
            return function()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


@torch.library.custom_op(
    "slidesim::similarity",
    mutates_args=(),
    schema=f"(Tensor images, Tensor templates, Tensor? mask, {_OPTIONS_SCHEMA}) -> Tensor",
)
def similarity_op(
    images: torch.Tensor, templates: torch.Tensor, mask: torch.Tensor | None, *arguments: object
) -> torch.Tensor:
    """:func:`slidesim.similarity` of tensors as one operator; ``arguments`` are the options of
    :data:`_OPERATOR_OPTIONS` as :func:`_to_operator` encodes them."""
    options = _options(*arguments)

    def forward() -> torch.Tensor:
        with torch.no_grad():  # the gradient comes from similarity_backward
            return _eager(images, templates, mask, options)

    scores = _with_default_state(forward, images.device)
    return scores.contiguous()  # the fake output is contiguous


@similarity_op.register_fake
def _similarity_fake(images, templates, mask, *args):
    options = _options(*args)
    canon = canonicalize(images, templates, mask=mask, **options)
    return images.new_empty(scores_shape(canon), dtype=canon.out_dtype)


@torch.library.custom_op(
    "slidesim::similarity_backward",
    mutates_args=(),
    schema=(
        "(Tensor grad, Tensor images, Tensor templates, Tensor? mask, bool need_images, bool need_templates, "
        f"{_OPTIONS_SCHEMA}) -> (Tensor, Tensor)"
    ),
)
def similarity_backward_op(
    grad: torch.Tensor,
    images: torch.Tensor,
    templates: torch.Tensor,
    mask: torch.Tensor | None,
    need_images: bool,
    need_templates: bool,
    *arguments: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`similarity_op` for images and templates (an empty tensor where not needed)."""
    options = _options(*arguments)

    def differentiate() -> list[torch.Tensor]:
        x = images.detach().requires_grad_(need_images)
        t = templates.detach().requires_grad_(need_templates)
        scores = _eager(x, t, mask, options)
        wanted = [v for v, need in ((x, need_images), (t, need_templates)) if need]
        return list(torch.autograd.grad(scores, wanted, grad))

    grads = _with_default_state(differentiate, images.device)
    # contiguous, as the fake gradients are: the gradient of a channels-last call comes back through a permutation
    grad_images = grads.pop(0).contiguous() if need_images else images.new_empty(0)
    grad_templates = grads.pop(0).contiguous() if need_templates else templates.new_empty(0)
    return grad_images, grad_templates


@similarity_backward_op.register_fake
def _similarity_backward_fake(grad, images, templates, mask, need_images, need_templates, *args):
    grad_images = images.new_empty(images.shape) if need_images else images.new_empty(0)
    grad_templates = templates.new_empty(templates.shape) if need_templates else templates.new_empty(0)
    return grad_images, grad_templates


def _setup_context(ctx, inputs, output) -> None:
    images, templates, mask, *options = inputs
    ctx.save_for_backward(images, templates, mask)
    ctx.options = options


def _backward(ctx, grad):
    images, templates, mask = ctx.saved_tensors
    need_images, need_templates = ctx.needs_input_grad[:2]
    grad_images, grad_templates = torch.ops.slidesim.similarity_backward(
        grad, images, templates, mask, need_images, need_templates, *ctx.options
    )
    no_gradients = [None] * (1 + len(_OPERATOR_OPTIONS))  # the mask and the options
    return (grad_images if need_images else None, grad_templates if need_templates else None, *no_gradients)


similarity_op.register_autograd(_backward, setup_context=_setup_context)


def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value), int(value)]


def similarity(images, templates, **options) -> torch.Tensor:
    """The compiled-region form of :func:`slidesim.similarity` (tensors in, a tensor out)."""
    mask = options["mask"]
    if mask is not None and not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask, device=images.device)
    return torch.ops.slidesim.similarity(images, templates, mask, *_to_operator(options))
