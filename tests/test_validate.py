"""The boundary: the options that rebuild a validated call round-trip, and defaults are filled in one place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim._compiled import _options, _to_operator
from slidesim._validate import DEFAULT_OPTIONS, canonicalize, options_of, with_bank, with_defaults

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
    expected["stride"] = tuple(np.broadcast_to(expected["stride"], 2).tolist())
    expected["dilation"] = tuple(np.broadcast_to(expected["dilation"], 2).tolist())
    assert decoded == expected


def test_unknown_options_name_the_valid_ones() -> None:
    with pytest.raises(slidesim.SlidesimTypeError, match=r"`strides` is not an option of slidesim.*stride, dilation"):
        with_defaults({"strides": 2})
    with pytest.raises(TypeError, match="strides"):
        slidesim.match(np.zeros((8, 8), np.float32), np.zeros((3, 3), np.float32), strides=2)
    assert set(DEFAULT_OPTIONS) == set(with_defaults({}))
