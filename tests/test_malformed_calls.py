"""A table of malformed calls across the public API and the command line: each raises the project's error of the
right built-in kind, and its message names the argument at fault."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import slidesim
from slidesim.errors import SlidesimError

RNG = np.random.default_rng(7)
IMAGE = RNG.random((24, 26)).astype(np.float32)
TEMPLATE = IMAGE[3:8, 4:10].copy()
SCORES = slidesim.similarity(IMAGE, TEMPLATE)


@dataclass(frozen=True)
class Call:
    """One malformed call: the function, its arguments, the built-in the error must derive from, and the word
    (an argument name) its message must hold."""

    function: Callable[..., Any]
    kwargs: dict[str, Any]
    error: type[Exception]
    names: str

    def run(self) -> None:
        arguments = dict(self.kwargs)
        if self.function is slidesim.find_peaks:
            self.function(arguments.pop("scores", SCORES), **arguments)
        else:
            self.function(arguments.pop("images", IMAGE), arguments.pop("templates", TEMPLATE), **arguments)


SHARED_BAD = [  # arguments every scoring entry point takes: (argument, bad value, built-in)
    ("images", "picture.png", TypeError),
    ("images", [[1.0, 2.0], [3.0, 4.0]], TypeError),
    ("images", np.zeros((0, 5), np.float32), ValueError),
    ("images", np.zeros((1, 1, 1, 1, 1, 4, 4), np.float32), ValueError),
    ("images", np.ones((8, 8), np.complex64), TypeError),
    ("images", np.ones((8, 8), np.longdouble), TypeError),
    ("images", np.array([["a"]], dtype=object), TypeError),
    ("images", np.ones((8, 8), np.uint32), TypeError),
    ("templates", "part.png", TypeError),
    ("templates", np.zeros((0, 3), np.float32), ValueError),
    ("templates", np.ones((40, 40), np.float32), ValueError),
    ("templates", np.ones((3, 3), np.bool_), TypeError),
    ("metric", "sharpness", ValueError),
    ("metric", 3.5, TypeError),
    ("metric", None, TypeError),
    ("stride", 0, ValueError),
    ("stride", -2, ValueError),
    ("stride", 1.5, TypeError),
    ("stride", (1, 2, 3), TypeError),
    ("stride", True, TypeError),
    ("stride", "2", TypeError),
    ("stride", 10**30, ValueError),
    ("dilation", 0, ValueError),
    ("dilation", (1, 0), ValueError),
    ("dilation", 2.0, TypeError),
    ("dilation", [1], TypeError),
    ("dilation", 10**30, ValueError),
    ("mode", "middle", ValueError),
    ("mode", 1, TypeError),
    ("padding", "mirror-ish", ValueError),
    ("padding", None, TypeError),
    ("pad_value", "zero", TypeError),
    ("pad_value", float("nan"), TypeError),
    ("pad_value", float("inf"), TypeError),
    ("mask", "mask.png", TypeError),
    ("mask", np.ones((2, 2), np.float32), ValueError),
    ("mask", np.zeros((5, 6), np.float32), ValueError),
    ("mask", -np.ones((5, 6), np.float32), ValueError),
    ("channels", "both", ValueError),
    ("channels", 2, TypeError),
    ("circular", "hue", TypeError),
    ("circular", {3: 360.0}, ValueError),
    ("circular", {0: -1.0}, ValueError),
    ("method", "gpu-magic", ValueError),
    ("method", 3, TypeError),
    ("memory_limit", 0, ValueError),
    ("memory_limit", -5, ValueError),
    ("memory_limit", "1GB", TypeError),
    ("memory_limit", 1.5, TypeError),
    ("memory_limit", True, TypeError),
]

MATCH_BAD = [
    ("k", 0, ValueError),
    ("k", 2.5, TypeError),
    ("k", True, TypeError),
    ("min_distance", -1, ValueError),
    ("min_distance", "far", TypeError),
    ("threshold", "high", TypeError),
    ("threshold", float("nan"), ValueError),
    ("rotations", ["a"], TypeError),
    ("rotations", [None], TypeError),
    ("rotations", [float("nan")], ValueError),
    ("rotations", 45, TypeError),
    ("scales", ["a"], TypeError),
    ("scales", [0.0], ValueError),
    ("scales", [-1.0], ValueError),
    ("scales", [1e-9], ValueError),
    ("scales", [1e6], ValueError),
    ("exclude_border", -1, ValueError),
    ("subpixel", "yes", TypeError),
    ("subpixel", 1, TypeError),
    ("progress", 3, TypeError),
]

PEAKS_BAD = [
    ("scores", np.zeros((0, 0)), ValueError),
    ("scores", "map", TypeError),
    ("scores", np.ones((2, 2, 2, 2, 2)), ValueError),
    ("scores", np.array([[True]]), TypeError),
    ("k", 0, ValueError),
    ("k", True, TypeError),
    ("min_distance", -3, ValueError),
    ("threshold", float("nan"), ValueError),
    ("exclude_border", -1, ValueError),
    ("subpixel", "yes", TypeError),
    ("higher_is_better", "yes", TypeError),
    ("metric", "sharpness", ValueError),
]


def _table() -> list[tuple[str, Call]]:
    calls = []
    for function in (slidesim.similarity, slidesim.match, slidesim.plan, slidesim.explain):
        for argument, value, error in SHARED_BAD:
            label = f"{function.__name__}-{argument}={value!r:.30}"
            calls.append((label, Call(function, {argument: value}, error, argument)))
        calls.append((f"{function.__name__}-unknown", Call(function, {"strides": 2}, TypeError, "strides")))
    for argument, value, error in MATCH_BAD:
        calls.append((f"match-{argument}={value!r:.30}", Call(slidesim.match, {argument: value}, error, argument)))
    for argument, value, error in PEAKS_BAD:
        kwargs = {argument: value} if argument in ("scores", "metric") else {argument: value, "metric": "zncc"}
        calls.append((f"find_peaks-{argument}={value!r:.30}", Call(slidesim.find_peaks, kwargs, error, argument)))
    calls.append(("find_peaks-no-direction", Call(slidesim.find_peaks, {}, TypeError, "metric")))
    calls.append(
        (
            "similarity-meta-templates",
            Call(slidesim.similarity, {"templates": torch.zeros(3, 3, device="meta")}, ValueError, "templates"),
        )
    )
    calls.append(
        (
            "similarity-mixed-bit-depths",
            Call(
                slidesim.similarity,
                {"images": (IMAGE * 255).astype(np.uint8), "templates": np.ones((3, 3), np.uint16)},
                TypeError,
                "templates",
            ),
        )
    )
    return calls


TABLE = _table()


def test_the_table_is_large() -> None:
    assert len(TABLE) + len(CLI_TABLE) >= 100


@pytest.mark.parametrize(("name", "call"), TABLE, ids=[name for name, _ in TABLE])
def test_malformed_call(name, call: Call) -> None:
    with pytest.raises(SlidesimError) as caught:
        call.run()
    assert isinstance(caught.value, call.error), f"{type(caught.value).__name__}: {caught.value}"
    assert f"`{call.names}`" in str(caught.value), str(caught.value)


CLI_TABLE = [  # (extra arguments, a word the error must hold)
    (["--top", "0"], "--top must be at least 1, got 0"),
    (["--top", "many"], "--top"),
    (["--stride", "0"], "--stride must be at least 1, got 0"),
    (["--stride", "x"], "--stride"),
    (["--metric", "sharpness"], "--metric"),
    (["--method", "gpu-magic"], "--method"),
    (["--threshold", "high"], "--threshold"),
    (["--min-distance", "-1"], "--min-distance must be at least 1, got -1"),
    (["--rotations", "a,b"], "--rotations"),
    (["--scales", "0"], "--scales"),
    (["--scales", "x:y"], "--scales"),
    (["--mask", "no-such-mask.png"], "mask file"),
]


@pytest.mark.parametrize(("extra", "word"), CLI_TABLE, ids=[" ".join(extra) for extra, _ in CLI_TABLE])
def test_malformed_command_line(extra, word, tmp_path, capsys) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    from slidesim import cli

    image, template = tmp_path / "image.png", tmp_path / "part.png"
    Image.fromarray((IMAGE * 255).astype(np.uint8)).save(image)
    Image.fromarray((TEMPLATE * 255).astype(np.uint8)).save(template)
    try:
        code = cli.main(["match", str(image), str(template), "--quiet", *extra])
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert word in err and "Traceback" not in err, err
