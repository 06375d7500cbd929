"""similarity() (floor L6): the public entry point; the eager path (:mod:`slidesim._eager`) or, inside
torch.compile, the compiled operator (:mod:`slidesim._compiled`)."""

from __future__ import annotations

from typing import Any

import torch

from ._eager import run_eager
from ._types import ArrayLike, ChannelsMode, IntPair, Method, Metric, Mode, Padding
from ._validate import with_defaults

__all__ = ["similarity"]


def similarity(
    images: ArrayLike,
    templates: ArrayLike,
    *,
    metric: Metric | str | int = "zncc",
    stride: IntPair = 1,
    dilation: IntPair = 1,
    mode: Mode = "valid",
    padding: Padding = "constant",
    pad_value: float = 0.0,
    mask: ArrayLike | None = None,
    channels: ChannelsMode = "joint",
    circular: dict[int, float] | None = None,
    method: Method | str = "auto",
    memory_limit: int | None = None,
    channels_last: bool = False,
    **unexpected: Any,
) -> ArrayLike:
    """Slide every template over every image and score each position.

    Args:
        images: [B, C, H, W], or [H, W] together with a 2-D template. numpy or torch; uint8, int8, uint16, int16,
            int32, int64, float16, bfloat16, float32 or float64. Values are compared as they are, in the same
            units as the templates': 8-bit templates on 16-bit images (or the reverse) are refused.
        templates: [T, C, h, w] (one bank for all images), [B, T, C, h, w] (a bank per image: image b is scored
            against its own templates only), or [h, w] with a 2-D image.
        metric: "sad", "mad", "l1_similarity", "ssd", "ssd_normed", "ccorr", "ncc", "ccoeff" or "zncc" (see
            :mod:`slidesim.metrics` for formulas); OpenCV's names ("TM_CCOEFF_NORMED", "sqdiff", ...) are aliases,
            and so are its method constants (cv2.TM_SQDIFF = 0 ... cv2.TM_CCOEFF_NORMED = 5).
        stride: Step between scored positions, an int or (y, x).
        dilation: Spacing between template taps, an int or (y, x).
        mode: "valid" (windows inside the image), "same" (an output the size of the image, output (y, x) centred
            at image (y, x) with the template anchored at index (h − 1) // 2) or "full" (every overlap).
        padding: How "same" and "full" extend the image: "constant" (``pad_value``), "reflect", "replicate" or
            "circular". Any pad width works.
        pad_value: Fill value of constant padding.
        mask: Non-negative template weights, [h, w], [C, h, w], [T, 1|C, h, w] or [B, T, 1|C, h, w] for per-image
            banks. Float masks are weights, bool and integer masks are binary (OpenCV's convention). Masks are
            constants: no gradient flows to them. A zero weight takes its tap out of the window: a NaN or inf
            pixel or template value there does not reach the score.
        channels: "joint" (one score over all channels, OpenCV's semantics), "separate" (one score per channel) or
            "mean" (mean of the per-channel scores).
        circular: {channel index: period} for the distance metrics: differences in those channels are taken the
            short way round, for example hue with period 1.0 (see :func:`slidesim.rgb_to_hsv`).
        method: "auto" or an engine name: "direct", "numba", "triton", "conv", "fft" or "reference" (see
            :func:`slidesim.explain`).
        memory_limit: Bytes that temporaries may use (default 512 MiB); the output itself is not counted.
        channels_last: The arrays hold their channels on the last axis, as OpenCV, Pillow and scikit-image do:
            images [H, W, C] or [B, H, W, C], templates [h, w, C], [T, h, w, C] or [B, T, h, w, C], masks
            [h, w], [h, w, 1|C], [T, h, w, 1|C] or [B, T, h, w, 1|C] (2-D images and templates have no channel
            axis and are taken as they are). The scores equal those of the channels-first call; the arrays are
            copied once, into the contiguous compute-dtype tensors the engines read.
        **unexpected: None: a misspelt option raises :class:`slidesim.SlidesimTypeError` naming the valid ones.

    Returns:
        Scores [B, T, H', W'] ([B, T, C, H', W'] for channels="separate"; [H', W'] for 2-D input), float32, or
        float64 when an input is float64 or a 32/64-bit integer. numpy for numpy images, otherwise a torch tensor
        on the images' device. In valid mode H' = (H − dilation·(h − 1) − 1) // stride + 1. With channels_last,
        per-channel scores hold their channel axis last ([B, T, H', W', C]; a torch view, numpy contiguous), and
        one [H, W, C] image with one [h, w, C] template gives [H', W'] ([H', W', C] for channels="separate"), as
        2-D input does; a batch or a bank keeps both axes.

    Raises:
        SlidesimTypeError: Wrong argument types or dtypes (complex, bool...), or 8- and 16-bit integer images and
            templates together. Also a TypeError.
        SlidesimValueError: Wrong shapes, sizes, option names or values. Also a ValueError.

    Numerics:
        Accumulation is at least float32; window means, energies and variances are float64 on an image centred
        by its per-channel mean, so a float32 image 1e4 + U(0, 1) scores zncc within 1e-3 of float64. zncc and ncc
        lie in [−1, 1]; flat windows and templates give the documented values of :mod:`slidesim.metrics`, never
        NaN or inf; a NaN pixel only affects the windows that contain it (under a positive mask weight), and
        such a window scores NaN in every metric.

    torch.compile:
        Inside a compiled region (``torch.compile(fullgraph=True)`` included) a call with tensor inputs is one
        operator, ``torch.ops.slidesim.similarity``, whose output shape is known from the input shapes; it runs
        the same engines with the same numbers, and is differentiable.

    Examples:
        >>> import numpy as np
        >>> import slidesim
        >>> image = np.zeros((8, 8), dtype=np.float32)
        >>> template = np.zeros((3, 3), dtype=np.float32)
        >>> float(slidesim.similarity(image, template, metric="l1_similarity")[0, 0])  # black on black
        1.0
        >>> rng = np.random.default_rng(0)
        >>> image = rng.random((1, 3, 32, 32), dtype=np.float32)
        >>> bank = np.stack([image[0, :, 5:12, 9:16], image[0, :, 20:27, 3:10]])
        >>> scores = slidesim.similarity(image, bank, metric="zncc")
        >>> scores.shape
        (1, 2, 26, 26)
        >>> [np.unravel_index(s.argmax(), s.shape) for s in scores[0]]
        [(np.int64(5), np.int64(9)), (np.int64(20), np.int64(3))]
        >>> rgb = np.ascontiguousarray(image[0].transpose(1, 2, 0))  # [H, W, C], as OpenCV and Pillow hold it
        >>> slidesim.similarity(rgb, rgb[5:12, 9:16], channels_last=True).shape
        (26, 26)
    """
    options = {
        "metric": metric,
        "stride": stride,
        "dilation": dilation,
        "mode": mode,
        "padding": padding,
        "pad_value": pad_value,
        "mask": mask,
        "channels": channels,
        "circular": circular,
        "method": method,
        "memory_limit": memory_limit,
        "channels_last": channels_last,
    }
    with_defaults({**options, **unexpected})  # a misspelt option raises, naming the valid ones
    if torch.compiler.is_compiling() and isinstance(images, torch.Tensor) and isinstance(templates, torch.Tensor):
        from . import _compiled  # its operators are registered on first use: only compiled code needs them

        return _compiled.similarity(images, templates, **options)
    return run_eager(images, templates, **options)
