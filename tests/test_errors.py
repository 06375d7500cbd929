"""Every bad input raises a slidesim error that is also a ValueError or TypeError and names the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim import SlidesimError

IMAGE = np.zeros((1, 2, 10, 10), dtype=np.float32)
BANK = np.zeros((3, 2, 3, 3), dtype=np.float32)


def _raises(kind: type, match: str, *args, **kwargs) -> None:
    with pytest.raises(kind, match=match) as info:
        slidesim.similarity(*args, **kwargs)
    assert isinstance(info.value, SlidesimError)


@pytest.mark.parametrize(
    ("images", "templates", "match"),
    [
        (np.zeros((2, 10, 10)), np.zeros((3, 3)), r"`images` must be \[B, C, H, W\].*ambiguous"),
        (np.zeros((10,)), np.zeros((3,)), r"`images` must be \[B, C, H, W\]"),
        (np.zeros((10, 10)), np.zeros((1, 3, 3)), r"`templates` must be 2-D \[h, w\] when `images` is 2-D"),
        (IMAGE, np.zeros((2, 3, 3)), r"`templates` must be \[T, C, h, w\]"),
        (IMAGE, np.zeros((3, 3, 3, 3)), r"`templates` must have as many channels as `images` \(2\)"),
        (IMAGE, np.zeros((2, 3, 2, 3, 3)), r"per-image banks .* B equal to the number of images \(1\)"),
        (IMAGE, np.zeros((3, 2, 11, 3)), r"larger than the image 10x10 in mode 'valid'"),
        (np.zeros((0, 2, 10, 10)), BANK, r"`images` must not be empty"),
        (IMAGE, np.zeros((0, 2, 3, 3)), r"`templates` must not be empty"),
    ],
)
def test_shape_errors(images, templates, match) -> None:
    _raises(ValueError, match, images, templates)


def test_dilation_makes_template_too_large() -> None:
    _raises(ValueError, r"extent 9x9 \(size 3x3, dilation \(4, 4\)\)", np.zeros((8, 8)), np.zeros((3, 3)), dilation=4)


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((5, 5), dtype=np.complex64), r"`images` must have a real numeric dtype"),
        (np.zeros((5, 5), dtype=bool), r"`images` must have a real numeric dtype"),
        (torch.zeros(5, 5, dtype=torch.bool), r"`images` must have dtype .*; got torch.bool"),
        (torch.zeros(5, 5, dtype=torch.complex64), r"`images` must have dtype .*; got torch.complex64"),
        ([[0.0] * 5] * 5, r"`images` must be a torch.Tensor or a numpy.ndarray; got list"),
        (np.zeros((5, 5), dtype=np.uint32), r"`images` must have dtype"),
    ],
)
def test_dtype_errors(images, match) -> None:
    _raises(TypeError, match, images, np.zeros((2, 2), dtype=np.float32))


SIXTEEN_ON_EIGHT = (
    r"`images` and `templates` must have the same bit depth; got images of dtype uint16 \(0–65535\) and templates "
    r"of dtype uint8 \(0–255\), which every metric would compare as if in the same units\. Bring them to one range "
    r"first: templates\.astype\(numpy\.float32\) \* 257 .* or divide each by its dtype's maximum"
)


@pytest.mark.parametrize("call", [slidesim.similarity, slidesim.match, slidesim.explain, slidesim.reference.similarity])
def test_eight_and_sixteen_bit_samples_together_are_refused(call) -> None:
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (12, 14)).astype(np.uint8)
    sixteen = eight.astype(np.uint16) * 257
    with pytest.raises(SlidesimError, match=SIXTEEN_ON_EIGHT) as info:
        call(sixteen, eight[2:6, 3:8])
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match=r"images of dtype int8 .* templates of dtype int16 .*dtype's maximum"):
        call(torch.from_numpy(eight.view(np.int8)), torch.from_numpy(sixteen.view(np.int16))[2:6, 3:8])
    # one bit depth, or floats (in the caller's units), pass; 8-bit sums stay exact
    call(sixteen, sixteen[2:6, 3:8].view(np.int16))
    call(sixteen, eight[2:6, 3:8].astype(np.float32) * 257)
    sad = slidesim.similarity(eight, eight[2:6, 3:8], metric="sad")
    assert sad[2, 3] == 0 and np.array_equal(sad, np.round(sad))


@pytest.mark.parametrize(
    ("option", "value", "kind", "match"),
    [
        ("metric", "nope", ValueError, r"`metric` must be one of sad, mad.*got 'nope'"),
        ("metric", 3, TypeError, r"`metric` must be a string"),
        ("mode", "middle", ValueError, r"`mode` must be one of 'valid', 'same', 'full'; got 'middle'"),
        ("padding", "zeros", ValueError, r"`padding` must be one of 'constant', 'reflect'"),
        ("channels", "rgb", ValueError, r"`channels` must be one of 'joint', 'separate', 'mean'"),
        (
            "method",
            "fastest",
            ValueError,
            r"`method` must be one of 'auto', 'direct', 'numba', 'triton', 'conv', 'fft', 'reference'; got 'fastest'",
        ),
        ("method", None, TypeError, r"`method` must be a string"),
        ("stride", 0, ValueError, r"`stride` must be >= 1"),
        ("stride", (1, 0), ValueError, r"`stride` must be >= 1"),
        ("stride", 1.5, TypeError, r"`stride` must be an int or a pair"),
        ("dilation", 0, ValueError, r"`dilation` must be >= 1"),
        ("dilation", (1, 2, 3), TypeError, r"`dilation` must be an int or a pair"),
        ("pad_value", float("nan"), TypeError, r"`pad_value` must be a finite real number"),
        ("memory_limit", 0, ValueError, r"`memory_limit` must be a positive number of bytes"),
        ("memory_limit", "1GB", TypeError, r"`memory_limit` must be an int number of bytes"),
        ("circular", {0: 1.0}, ValueError, r"`circular` applies to the distance metrics.*got metric 'zncc'"),
        ("circular", [0], TypeError, r"`circular` must be a dict"),
    ],
)
def test_option_errors(option, value, kind, match) -> None:
    _raises(kind, match, IMAGE, BANK, **{option: value})


@pytest.mark.parametrize(
    ("circular", "match"),
    [
        ({2: 1.0}, r"channel indices in \[0, 2\); got 2"),
        ({0: -1.0}, r"finite positive"),
        ({0: "x"}, r"finite positive"),
    ],
)
def test_circular_errors(circular, match) -> None:
    _raises(ValueError, match, IMAGE, BANK, metric="sad", circular=circular)


@pytest.mark.parametrize(
    ("mask", "kind", "match"),
    [
        (np.ones((3, 4)), ValueError, r"`mask` must be \[h, w\].*got shape \(3, 4\)"),
        (np.ones((3, 3, 3)), ValueError, r"`mask` must be .*C = 2.*got shape \(3, 3, 3\)"),
        (np.ones((2, 1, 3, 3)), ValueError, r"`mask` must be .*T = 3.*got shape \(2, 1, 3, 3\)"),
        (-np.ones((3, 3)), ValueError, r"`mask` weights must be non-negative; got a minimum of -1"),
        (np.zeros((3, 3)), ValueError, r"`mask` must have a positive total weight"),
        (np.full((3, 3), np.nan), ValueError, r"`mask` must be finite"),
        (np.ones((3, 3), dtype=np.complex64), TypeError, r"`mask` must have a real numeric dtype"),
        ("ones", TypeError, r"`mask` must be a torch.Tensor or a numpy.ndarray"),
    ],
)
def test_mask_errors(mask, kind, match) -> None:
    _raises(kind, match, IMAGE, BANK, mask=mask)


def test_mask_channel_all_zero_in_separate_mode() -> None:
    mask = np.ones((2, 3, 3))
    mask[1] = 0
    slidesim.similarity(IMAGE, BANK, mask=mask)  # joint: the other channel carries the weight
    _raises(
        ValueError,
        r"positive weight in every channel with channels='separate'",
        IMAGE,
        BANK,
        mask=mask,
        channels="separate",
    )


@pytest.mark.skipif(not torch.backends.mps.is_available() and not torch.cuda.is_available(), reason="one device")
def test_mixed_devices() -> None:
    device = "cuda" if torch.cuda.is_available() else "mps"
    _raises(ValueError, r"same device", torch.zeros(1, 1, 8, 8, device=device), torch.zeros(1, 1, 2, 2))


def test_mixed_devices_through_meta() -> None:
    _raises(
        ValueError,
        r"`images` and `templates` must be on the same device",
        torch.zeros(1, 1, 8, 8),
        torch.zeros(1, 1, 2, 2, device="meta"),
    )


def test_errors_subclass_builtins() -> None:
    assert issubclass(slidesim.SlidesimValueError, ValueError)
    assert issubclass(slidesim.SlidesimTypeError, TypeError)
    assert issubclass(slidesim.EngineUnavailableError, ValueError)


def test_numpy_bool_masks_are_binary_like_torch_bool_masks() -> None:
    rng = np.random.default_rng(0)
    image, template = rng.random((12, 11)).astype(np.float32), rng.random((4, 3)).astype(np.float32)
    mask = rng.random((4, 3)) > 0.4
    mask[0, 0] = True
    from_numpy = slidesim.similarity(image, template, metric="zncc", mask=mask)
    from_torch = slidesim.similarity(image, template, metric="zncc", mask=torch.from_numpy(mask))
    np.testing.assert_array_equal(from_numpy, from_torch)
