"""The reduction engines' shared run: 8- and 16-bit integer images reach the engines that widen as they read
(fft, numba) as stored, and score exactly as their float conversion does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from slidesim import engines
from slidesim._validate import Canonical, canonicalize, with_defaults
from slidesim.engines.base import ReductionEngine

from ..conftest import TESTED_ENGINES, engines_for

_DTYPES = [np.uint8, np.int8, np.uint16, np.int16]
_CALLS = [
    {},
    {"channels_last": True},
    {"mask": "binary"},
    {"mask": "weights"},
    {"stride": (2, 3), "dilation": (1, 2)},
    {"channels_last": True, "channels": "separate"},
    {"bank": True},
]


def _problem(dtype: type, call: dict, metric: str) -> Canonical:
    """A call on integer images of ``dtype`` with a flat patch (flat windows) and a template cut from them."""
    rng = np.random.default_rng(31)
    info = np.iinfo(dtype)
    low, high = max(info.min, -4000), min(info.max, 4000)
    colour = call.get("channels_last", False)
    image = rng.integers(low, high, (1, 26, 30, 3) if colour else (1, 1, 26, 30), endpoint=True).astype(dtype)
    if colour:
        image[:, 3:12, 4:16] = image[:, 3:4, 4:5]
        template = image[0, 2:9, 3:11]
    else:
        image[..., 3:12, 4:16] = image[..., 3:4, 4:5]
        template = image[0, :, 2:9, 3:11]
        if call.get("bank"):
            template = np.stack([template, image[0, :, 10:17, 12:20]])
    if template.ndim == 3 and not colour:
        template = template[None]
    options = {key: value for key, value in call.items() if key != "bank"}
    shape = template.shape[-2:] if not colour else template.shape[:2]
    if call.get("mask") == "binary":
        options["mask"] = (rng.random(shape) > 0.3).astype(np.float32)
    elif call.get("mask") == "weights":
        options["mask"] = rng.random(shape).astype(np.float32)
    return canonicalize(image, template.copy(), **with_defaults({**options, "metric": metric}))


def _cases() -> list:
    found = []
    for name in TESTED_ENGINES:
        if not isinstance(engines.load(name), ReductionEngine):
            continue
        for metric in ("zncc", "ncc", "ccorr", "ccoeff", "ssd", "ssd_normed", "sad"):
            if name in engines_for(metric):
                found.append((name, metric))
    return found


@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize(("engine", "metric"), _cases())
def test_narrow_images_score_exactly_as_their_float_conversion(engine: str, metric: str, dtype: type) -> None:
    """Every engine gives, bit for bit, the scores of the same call with the images stored as floats."""
    runner = engines.load(engine)
    for call in _CALLS:
        canon = _problem(dtype, call, metric)
        if runner.ineligible_reason(canon.problem) is not None:
            continue
        assert canon.narrow
        as_floats = dataclasses.replace(canon, image_source=canon.images.clone(), converted=None)
        narrow_scores = runner.run(canon)
        float_scores = runner.run(as_floats)
        assert torch.equal(narrow_scores.isnan(), float_scores.isnan()), (call, metric)
        assert torch.equal(narrow_scores.nan_to_num(), float_scores.nan_to_num()), (call, metric)


@pytest.mark.parametrize(("engine", "metric"), [("fft", "zncc"), ("fft", "ccorr"), ("fft", "ssd"), ("numba", "sad")])
def test_engines_that_widen_as_they_read_never_convert_the_whole_image(engine: str, metric: str) -> None:
    if engines.load(engine).unavailable_reason() is not None:
        pytest.skip(engines.load(engine).unavailable_reason())
    for call in ({}, {"channels_last": True}):
        canon = _problem(np.uint8, call, metric)
        engines.load(engine).run(canon)
        assert canon.converted is None, call


def test_engines_that_do_not_widen_read_the_kept_float_conversion() -> None:
    canon = _problem(np.uint8, {}, "zncc")
    engines.load("direct").run(canon)
    assert canon.converted is not None and canon.converted.dtype == torch.float32
