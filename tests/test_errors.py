"""Every bad input raises a slidesim error that is also a ValueError or TypeError and names the argument."""

from __future__ import annotations

import re

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
        ("metric", 3.0, TypeError, r"`metric` must be a string such as .zncc. or an OpenCV method constant"),
        ("metric", 7, ValueError, r"`metric` as an integer must be one of OpenCV.s method constants"),
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


# ------------------------------------------------------------------------------------------------------ layouts
_RGB = np.random.default_rng(7).random((20, 23, 3)).astype(np.float32)  # [H, W, C]
_CUT = (slice(3, 9), slice(5, 12))  # a template cut at row 3, column 5: where its zncc is 1
_OTHER = (slice(10, 16), slice(1, 8))
_HWC = _RGB[_CUT].copy()  # [h, w, C]
_CHW = np.ascontiguousarray(_RGB.transpose(2, 0, 1))  # [C, H, W]
_BANK_LAST = np.stack([_HWC, _RGB[_OTHER]])  # [T, h, w, C]
_BANK_FIRST = np.ascontiguousarray(_BANK_LAST.transpose(0, 3, 1, 2))  # [T, C, h, w]
_WEIGHTS = np.random.default_rng(8).random((6, 7, 3)).astype(np.float32) + 0.1  # [h, w, C]

# (images, templates, options, the fixes that each error in turn advises, in the order they come)
LAYOUT_MISTAKES = {
    "HWC image": (_RGB, _HWC, {}, ["channels_last=True"]),
    "HWC image, transposed": (
        _RGB,
        _HWC,
        {},
        ["images.transpose(2, 0, 1)[None]", "templates.transpose(2, 0, 1)[None]"],
    ),
    "HWC tensor, permuted": (
        torch.from_numpy(_RGB),
        torch.from_numpy(_HWC),
        {},
        ["images.permute(2, 0, 1)[None]", "templates.permute(2, 0, 1)[None]"],
    ),
    "CHW image": (_CHW[:2], _BANK_FIRST[:, :2], {}, ["images[None]"]),
    "BHW grey images": (_CHW[:2], _BANK_FIRST[:1, :1], {}, ["images[:, None]"]),
    "1HWC image, HWC template": (_RGB[None], _HWC, {}, ["channels_last=True"]),
    "1HWC image, THWC bank": (_RGB[None], _BANK_LAST, {}, ["channels_last=True"]),
    "1HWC image, TCHW bank": (_RGB[None], _BANK_FIRST, {}, ["images.transpose(0, 3, 1, 2)"]),
    "1CHW image, THWC bank": (_CHW[None], _BANK_LAST, {}, ["templates.transpose(0, 3, 1, 2)"]),
    "1CHW image, CHW template": (_CHW[None], _BANK_FIRST[0], {}, ["templates[None]"]),
    "1CHW image, HWC template": (_CHW[None], _HWC, {}, ["templates.transpose(2, 0, 1)[None]"]),
    "channels first, switch on": (_CHW[None], _BANK_FIRST, {"channels_last": True}, ["channels_last=False"]),
    "HWC mask, channels first": (_CHW[None], _BANK_FIRST, {"mask": _WEIGHTS}, ["mask.transpose(2, 0, 1)"]),
    "CHW mask, channels last": (
        _RGB,
        _HWC,
        {"mask": np.ascontiguousarray(_WEIGHTS.transpose(2, 0, 1)), "channels_last": True},
        ["mask.transpose(1, 2, 0)"],
    ),
    "grey image, HW1 template": (_RGB[..., 0].copy(), _HWC[..., :1], {"channels_last": True}, ["images[..., None]"]),
    # laid out right, but with other channel counts: the fix converts one side to the other's count
    "colour image, grey bank": (
        _CHW[None],
        _BANK_FIRST.mean(axis=1, keepdims=True),
        {},
        ["images.mean(axis=-3, keepdims=True)"],
    ),
    "grey image, colour bank": (
        _CHW[None].mean(axis=1, keepdims=True),
        _BANK_FIRST,
        {},
        ["templates.mean(axis=-3, keepdims=True)"],
    ),
    "grey tensor, colour bank": (
        torch.from_numpy(_CHW[None].mean(axis=1, keepdims=True)),
        torch.from_numpy(_BANK_FIRST),
        {},
        ["templates.mean(dim=-3, keepdim=True)"],
    ),
    "RGBA image, RGB bank": (
        np.concatenate([_CHW, np.ones_like(_CHW[:1])])[None],
        _BANK_FIRST,
        {},
        ["images[..., :3, :, :]"],
    ),
    "RGB image, RGBA bank": (
        _CHW[None],
        np.concatenate([_BANK_FIRST, np.ones_like(_BANK_FIRST[:, :1])], axis=1),
        {},
        ["templates[..., :3, :, :]"],
    ),
    "HWC colour image, HW1 template": (
        _RGB,
        _HWC.mean(axis=-1, keepdims=True),
        {"channels_last": True},
        ["images.mean(axis=-1, keepdims=True)"],
    ),
    "HWC RGBA image, HWC template": (
        np.concatenate([_RGB, np.ones_like(_RGB[..., :1])], axis=-1),
        _HWC,
        {"channels_last": True},
        ["images[..., :3]"],
    ),
}


@pytest.mark.parametrize("case", list(LAYOUT_MISTAKES))
def test_layout_errors_advise_a_fix_that_works(case: str) -> None:
    images, templates, options, fixes = LAYOUT_MISTAKES[case]
    options = dict(options)
    arrays = {"images": images, "templates": templates, "mask": options.pop("mask", None)}
    for fix in fixes:
        with pytest.raises(slidesim.SlidesimValueError) as info:
            slidesim.similarity(arrays["images"], arrays["templates"], mask=arrays["mask"], **options)
        message = str(info.value)
        assert fix in message, message
        assert re.search(r"got (templates of )?shape \([\d, ]+\)", message)  # the shape it got, as given
        if fix.startswith("channels_last="):
            options["channels_last"] = fix.endswith("True")
        else:
            name = fix.split(".")[0].split("[")[0]
            arrays[name] = eval(fix, {}, dict(arrays))  # the advice, as written
    scores = slidesim.similarity(arrays["images"], arrays["templates"], mask=arrays["mask"], **options)
    first = np.asarray(scores).reshape(-1, *scores.shape[-2:])[0]  # the first template on the first image
    assert np.unravel_index(int(first.argmax()), first.shape) == (3, 5)
    assert float(first[3, 5]) == pytest.approx(1.0, abs=1e-5)


def test_three_d_images_errors_say_which_fix_fits_the_shape() -> None:
    with pytest.raises(ValueError, match=r"got shape \(20, 23, 3\)\. Its last axis of 3 looks like colour") as info:
        slidesim.similarity(_RGB, _HWC)
    assert "channels_last=True" in str(info.value) and "images.transpose(2, 0, 1)[None]" in str(info.value)
    with pytest.raises(ValueError, match=r"got shape \(3, 20, 23\)\. A 3-D array is ambiguous") as info:
        slidesim.similarity(_CHW, _BANK_FIRST)
    assert "images[None]" in str(info.value) and "transpose" not in str(info.value)


@pytest.mark.parametrize(
    ("images", "templates", "match"),
    [
        (np.zeros((1, 1, 9, 9, 3)), _HWC, r"`images` must be \[H, W, C\] or \[B, H, W, C\] with channels_last=True"),
        (
            _RGB,
            np.zeros((1, 1, 1, 6, 7, 3)),
            r"`templates` must be \[h, w, C\] or \[T, h, w, C\].*\(1, 1, 1, 6, 7, 3\)",
        ),
        (
            _RGB,
            _HWC[..., :2],
            r"as many channels \(the last axis.*\(3\); got shape \(6, 7, 2\) against .*\(20, 23, 3\)",
        ),
        (_RGB[None].repeat(2, 0), _BANK_LAST[None], r"per-image banks \[B, T, h, w, C\] .* \(2\); got shape \(1, 2, "),
        (_RGB, np.ones((6, 7)), r"`templates` must be \[h, w, C\] or \[T, h, w, C\].*got shape \(6, 7\)"),
    ],
)
def test_channels_last_shape_errors_show_the_shapes_as_given(images, templates, match) -> None:
    _raises(ValueError, match, images, templates, channels_last=True)


def test_channels_last_mask_errors_show_the_mask_as_given() -> None:
    _raises(
        ValueError,
        r"`mask` must be \[h, w\], \[h, w, 1\|C\], \[T, h, w, 1\|C\] or \[B, T, h, w, 1\|C\] with channels_last=True.*"
        r"got shape \(6, 7, 2\)",
        _RGB,
        _HWC,
        mask=np.ones((6, 7, 2)),
        channels_last=True,
    )
