"""The boundary: the options that rebuild a validated call round-trip, and defaults are filled in one place."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import slidesim
from slidesim._compiled import _options, _to_operator
from slidesim._validate import (
    DEFAULT_OPTIONS,
    canonicalize,
    integer_valued,
    options_of,
    padded_images,
    with_bank,
    with_defaults,
)
from slidesim.metrics import resolve_metric

CALLS = [
    {},
    {"metric": "TM_CCOEFF_NORMED", "stride": (2, 3), "dilation": 2, "mode": "same", "padding": "reflect"},
    {"metric": "sad", "mode": "full", "padding": "constant", "pad_value": 0.5, "circular": {1: 1.0}},
    {"metric": "ncc", "mask": np.ones((2, 4, 3), np.float32), "channels": "mean", "memory_limit": 2**20},
    {"metric": "ssd", "mask": np.eye(4, 3, dtype=np.float32)[None].repeat(3, 0)[:, None], "method": "direct"},
]


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("call", CALLS)
def test_options_of_a_call_rebuild_it(call: dict, per_image: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((2, 2, 12, 13)).astype(np.float32)
    bank = rng.random((2, 3, 2, 4, 3) if per_image else (3, 2, 4, 3)).astype(np.float32)
    canon = canonicalize(images, bank, **with_defaults(call))
    again = canonicalize(canon.images, bank, **options_of(canon))
    assert again.problem == canon.problem
    assert torch.equal(again.templates, canon.templates)
    assert (again.mask is None) == (canon.mask is None)
    if canon.mask is not None:
        assert torch.equal(again.mask, canon.mask)
    swapped = with_bank(canon, canon.templates[:, 1:], None if canon.mask is None else canon.mask[:, -1:])
    assert swapped.problem.n_templates == 2 and swapped.problem.metric == canon.problem.metric


@pytest.mark.parametrize("call", [c for c in CALLS if c.get("mask") is None])
def test_the_compiled_operator_encodes_every_option_and_back(call: dict) -> None:
    options = with_defaults(call)
    decoded = _options(*_to_operator(options))
    expected = {k: v for k, v in options.items() if k != "mask"}
    expected["metric"] = resolve_metric(expected["metric"]).name  # names, aliases and OpenCV's constants alike
    expected["stride"] = tuple(np.broadcast_to(expected["stride"], 2).tolist())
    expected["dilation"] = tuple(np.broadcast_to(expected["dilation"], 2).tolist())
    assert decoded == expected


def test_unknown_options_name_the_valid_ones() -> None:
    with pytest.raises(slidesim.SlidesimTypeError, match=r"`strides` is not an option of slidesim.*stride, dilation"):
        with_defaults({"strides": 2})
    with pytest.raises(TypeError, match="strides"):
        slidesim.match(np.zeros((8, 8), np.float32), np.zeros((3, 3), np.float32), strides=2)
    assert set(DEFAULT_OPTIONS) == set(with_defaults({}))


# ------------------------------------------------------------------------------------------------ channels_last
def _first(array):
    """A channels-last array ([..., h, w, C]) as the contiguous channels-first array of the same values."""
    if isinstance(array, torch.Tensor):
        return torch.movedim(array, -1, -3).contiguous()
    return np.ascontiguousarray(np.moveaxis(array, -1, -3))


def _last_channel_scores(scores):
    """Per-channel scores [..., C, H', W'] of the channels-first call in the channels-last layout [..., H', W', C]."""
    return torch.movedim(scores, -3, -1) if isinstance(scores, torch.Tensor) else np.moveaxis(scores, -3, -1)


def _same(got, want) -> None:
    assert type(got) is type(want)
    assert tuple(got.shape) == tuple(want.shape) and got.dtype == want.dtype
    if isinstance(got, torch.Tensor):
        assert torch.equal(got, want)
    else:
        assert np.array_equal(got, want, equal_nan=True)


LAST_CALLS = [
    {"metric": "zncc"},
    {"metric": "zncc", "method": "fft", "mode": "same", "padding": "reflect"},
    {"metric": "ncc", "method": "conv", "stride": 2},
    {"metric": "sad", "method": "direct", "channels": "separate", "mask": "channels"},
    {"metric": "ssd", "channels": "separate", "mask": "per_template"},
    {"metric": "l1_similarity", "channels": "mean", "mask": "shared", "dilation": 2},
    {"metric": "mad", "circular": {0: 1.0}, "mode": "full"},
    {"metric": "TM_CCOEFF", "per_image": True, "mask": "per_image"},
]


def _last_problem(kind: str, call: dict, seed: int = 3):
    """(images [B, H, W, C], bank [T, h, w, C] or [B, T, h, w, C], options with a channels-last mask)."""
    rng = np.random.default_rng(seed)
    images = rng.random((2, 17, 19, 3)).astype(np.float32)
    per_image = call.get("per_image", False)
    bank = rng.random((2, 3, 5, 4, 3) if per_image else (3, 5, 4, 3)).astype(np.float32)
    masks = {
        "channels": rng.random((5, 4, 3)) + 0.1,  # [h, w, C]
        "per_template": rng.random((3, 5, 4, 1)) + 0.1,  # [T, h, w, 1]
        "shared": rng.random((5, 4)) > 0.3,  # [h, w]: no channel axis
        "per_image": rng.random((2, 3, 5, 4, 3)) + 0.1,  # [B, T, h, w, C]
    }
    options = {k: v for k, v in call.items() if k != "per_image"}
    if "mask" in options:
        options["mask"] = masks[options["mask"]].astype(np.float32) if options["mask"] != "shared" else masks["shared"]
    if kind == "torch":
        images, bank = torch.from_numpy(images), torch.from_numpy(bank)
        if "mask" in options:
            options["mask"] = torch.from_numpy(options["mask"])
    return images, bank, options


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("call", LAST_CALLS)
def test_channels_last_scores_equal_the_transposed_call(call: dict, kind: str) -> None:
    images, bank, options = _last_problem(kind, call)
    mask = options.get("mask")
    first = {**options, "mask": _first(mask) if mask is not None and mask.ndim > 2 else mask}  # [h, w]: as it is
    got = slidesim.similarity(images, bank, channels_last=True, **options)
    want = slidesim.similarity(_first(images), _first(bank), **first)
    if call.get("channels") == "separate":
        assert got.shape[-1] == 3  # the channel axis last
        want = np.ascontiguousarray(_last_channel_scores(want)) if kind == "numpy" else _last_channel_scores(want)
    _same(got, want)
    reference = slidesim.reference.similarity(images, bank, channels_last=True, **options)
    expected = slidesim.reference.similarity(_first(images), _first(bank), **first)
    if call.get("channels") == "separate":
        expected = _last_channel_scores(expected)
    _same(reference, np.ascontiguousarray(expected) if kind == "numpy" else expected)
    assert slidesim.explain(images, bank, channels_last=True, **options) == slidesim.explain(
        _first(images), _first(bank), **first
    )


@pytest.mark.parametrize("channels", ["joint", "separate"])
def test_channels_last_one_image_and_template_give_maps_without_batch_axes(channels: str) -> None:
    rng = np.random.default_rng(4)
    image = rng.random((20, 23, 3)).astype(np.float32)
    template = image[3:9, 5:12].copy()
    got = slidesim.similarity(image, template, channels=channels, channels_last=True)
    want = slidesim.similarity(_first(image)[None], _first(template)[None], channels=channels)[0, 0]
    if channels == "separate":
        assert got.shape == (15, 17, 3) and got.flags["C_CONTIGUOUS"]
        want = np.ascontiguousarray(_last_channel_scores(want))
    else:
        assert got.shape == (15, 17)
    _same(got, want)
    assert float(got[3, 5].min()) == pytest.approx(1.0, abs=1e-5)
    # one image, a bank of templates (or a batch, one template): the batch and template axes stay
    bank = np.stack([template, image[10:16, 1:8]])
    assert slidesim.similarity(image, bank, channels_last=True).shape == (1, 2, 15, 17)
    assert slidesim.similarity(np.stack([image, image]), template, channels_last=True).shape == (2, 1, 15, 17)
    # 2-D arrays have no channel axis: taken as they are
    grey = image[..., 0].copy()
    _same(slidesim.similarity(grey, grey[3:9, 5:12], channels_last=True), slidesim.similarity(grey, grey[3:9, 5:12]))


def test_channels_last_uint8_images_become_contiguous_channels_first_tensors() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (2, 30, 31, 3), dtype=np.uint8)  # as OpenCV and Pillow give it
    bank = image[0, 4:12, 6:13][None].copy()
    canon = canonicalize(image, bank, **with_defaults({"channels_last": True}))
    assert canon.images.shape == (2, 3, 30, 31) and canon.images.is_contiguous()
    assert canon.templates.shape == (1, 1, 3, 8, 7) and canon.templates.is_contiguous()
    _same(slidesim.similarity(image, bank, channels_last=True), slidesim.similarity(_first(image), _first(bank)))
    assert torch.equal(canon.images, torch.from_numpy(_first(image)).float())


def test_channels_last_gradients_are_those_of_the_transposed_call() -> None:
    rng = np.random.default_rng(6)
    images = torch.from_numpy(rng.random((2, 15, 14, 2))).requires_grad_()
    bank = torch.from_numpy(rng.random((3, 4, 5, 2))).requires_grad_()
    weights = torch.linspace(0, 1, 10, dtype=torch.float64)
    got = slidesim.similarity(images, bank, metric="zncc", channels="separate", channels_last=True)
    assert got.shape == (2, 3, 12, 10, 2)
    got_grads = torch.autograd.grad((got.sum(dim=-1) * weights).sum(), (images, bank))
    x, t = _first(images.detach()).requires_grad_(), _first(bank.detach()).requires_grad_()
    want = slidesim.similarity(x, t, metric="zncc", channels="separate")
    want_grads = torch.autograd.grad((want.sum(dim=2) * weights).sum(), (x, t))
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.shape[-1] == 2
        torch.testing.assert_close(_first(g), w, rtol=0, atol=0)


@pytest.mark.parametrize("value", ["yes", 1, None, 0.0])
def test_channels_last_must_be_a_bool(value: object) -> None:
    image, template = np.zeros((9, 9, 3), np.float32), np.zeros((3, 3, 3), np.float32)
    message = rf"`channels_last` must be True or False; got {re.escape(repr(value))}"
    for call in (slidesim.similarity, slidesim.reference.similarity, slidesim.plan, slidesim.explain, slidesim.match):
        with pytest.raises(slidesim.SlidesimTypeError, match=message):
            call(image, template, channels_last=value)
    with pytest.raises(slidesim.SlidesimTypeError, match=message):
        slidesim.find_peaks(np.zeros((7, 7)), metric="zncc", images=image, templates=template, channels_last=value)
    assert slidesim.similarity(image, template, channels_last=np.bool_(True)).shape == (7, 7)


_NARROW = [np.uint8, np.int8, np.uint16, np.int16]


def _integers(rng: np.random.Generator, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", _NARROW)
@pytest.mark.parametrize("source", ["numpy", "torch"])
def test_small_integer_images_stay_narrow_until_a_reader_needs_floats(dtype: type, source: str) -> None:
    """8- and 16-bit images are stored in their own dtype; ``images`` converts them on first use, once."""
    rng = np.random.default_rng(21)
    image = _integers(rng, dtype, (1, 1, 20, 24))
    given = image if source == "numpy" else torch.from_numpy(image)
    canon = canonicalize(given, given[:, :, 2:7, 3:9], **with_defaults({}))
    assert canon.image_source.dtype == torch.from_numpy(image).dtype and canon.narrow
    assert canon.converted is None  # nothing has converted them yet
    assert canon.image_shape == (1, 1, 20, 24) and canon.converted is None
    floats = canon.images
    assert floats.dtype == torch.float32 and torch.equal(floats, torch.from_numpy(image.astype(np.float32)))
    assert canon.images is floats  # kept for the call
    assert canon.problem.input_dtype == np.dtype(dtype).name


def test_narrow_channels_last_images_are_contiguous_channels_first() -> None:
    rng = np.random.default_rng(22)
    image = rng.integers(0, 256, (2, 30, 31, 3), dtype=np.uint8)
    canon = canonicalize(image, image[0, 4:12, 6:13][None].copy(), **with_defaults({"channels_last": True}))
    assert canon.image_source.dtype == torch.uint8 and canon.image_source.is_contiguous()
    assert torch.equal(canon.image_source, torch.from_numpy(_first(image)))


def test_circular_channels_and_wide_images_are_stored_in_the_compute_dtype() -> None:
    rng = np.random.default_rng(23)
    image = rng.integers(0, 256, (1, 2, 12, 14), dtype=np.uint8)
    circular = canonicalize(image, image[:, :, :4, :5], **with_defaults({"circular": {0: 180.0}, "metric": "sad"}))
    assert circular.image_source.dtype == torch.float32 and not circular.narrow
    wide = canonicalize(image.astype(np.int32), image[:, :, :4, :5], **with_defaults({}))
    assert wide.image_source.dtype == torch.float64 and wide.images is wide.image_source


@pytest.mark.parametrize("mode", ["valid", "same"])
def test_padded_images_come_narrow_only_to_readers_that_widen_and_only_unpadded(mode: str) -> None:
    rng = np.random.default_rng(24)
    image = rng.integers(0, 256, (1, 1, 16, 18), dtype=np.uint8)
    canon = canonicalize(image, image[:, :, :5, :6], **with_defaults({"mode": mode, "padding": "reflect"}))
    narrow = padded_images(canon, narrow=True)
    wide = padded_images(canon)
    assert wide.dtype == torch.float32
    if mode == "valid":
        assert narrow is canon.image_source
    else:  # padding makes a float copy either way, and does not keep the conversion
        assert narrow.dtype == torch.float32 and torch.equal(narrow, wide)
        assert canon.converted is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.arange(64, dtype=np.float32).reshape(8, 8), True),  # a float copy of an 8-bit picture
        (np.arange(64, dtype=np.float64).reshape(8, 8) * 1000, True),  # 16-bit magnitudes
        (np.arange(64, dtype=np.float32).reshape(8, 8) / 255, False),  # fractions in the first row
        (np.vstack([np.zeros((7, 8)), np.full((1, 8), 0.5)]), False),  # ... or only in the last
        (np.full((8, 8), 70000.0), False),  # integers beyond 16 bits: their sums may not be exact
        (np.where(np.eye(8) > 0, np.nan, 3.0), False),  # NaN is no integer
    ],
)
def test_float_images_of_integers_count_as_integer_valued(values: np.ndarray, expected: bool) -> None:
    canon = canonicalize(values, values[:3, :3].copy(), **{**DEFAULT_OPTIONS, "metric": "ssd"})
    assert integer_valued(canon) is expected
    assert canon.whole_pixels is expected  # looked at once, kept for the call


def test_integer_padding_of_integer_images_stays_integer_valued() -> None:
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    options = {**DEFAULT_OPTIONS, "metric": "ssd", "mode": "same", "padding": "constant"}
    assert integer_valued(canonicalize(image, image[:3, :3].copy(), **{**options, "pad_value": 2.0}))
    assert not integer_valued(canonicalize(image, image[:3, :3].copy(), **{**options, "pad_value": 0.5}))
