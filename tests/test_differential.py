"""Differential fuzzing over the whole option space: every engine against the float64 reference, and the engines
against each other, on problems drawn by hypothesis (issue 20).

A drawn :class:`Case` fixes the metric, the shapes, every option of :func:`slidesim.similarity`, the dtypes, the
kind of pixel values (bright offsets, flat patches, few levels...), the special values (NaN and ±inf pixels, flat and
all-zero templates, NaN template values under zero mask weights) and a seed for the values themselves, so a failing
case prints as one line that rebuilds it (``build(Case(...))``).

CI runs a fixed, derandomized share (9 × 60 similarity problems, 25 match problems, and the minimal problems
that fuzzing found disagreements on). ``SLIDESIM_FUZZ_EXAMPLES=N`` runs N examples per test
with fresh random draws (``pytest --hypothesis-seed=S`` repeats a run), for example
``SLIDESIM_FUZZ_EXAMPLES=2000 python -m pytest tests/test_differential.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slidesim
from slidesim import engines
from slidesim._validate import canonicalize, with_defaults
from slidesim.errors import EngineUnavailableError
from slidesim.metrics import METRICS

from .conftest import tolerance

_FUZZ_EXAMPLES = os.environ.get("SLIDESIM_FUZZ_EXAMPLES")


def _fuzz_settings(ci_examples: int) -> settings:
    """``ci_examples`` reproducible examples in CI; SLIDESIM_FUZZ_EXAMPLES random ones when it is set."""
    return settings(
        max_examples=int(_FUZZ_EXAMPLES) if _FUZZ_EXAMPLES else ci_examples,
        derandomize=not _FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "uint16": torch.uint16,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}
"""Every dtype that similarity() accepts for images and templates."""
DRAWN_DTYPES = ("float32", "float64") * 3 + tuple(DTYPES)[2:]
"""float32 and float64 (the engines' own compute dtypes) drawn four times as often as each of the others."""

IMAGE_KINDS = ("uniform", "normal", "levels", "patches", "bright", "bright", "flat")
"""uniform U(0, 1); normal 3·N(0, 1); levels: the integers 0..3 (ties, flat windows); patches: uniform with constant
rectangles (flat windows next to textured ones); bright: offset + U(0, 1) with offset 1e4 where the dtype holds it;
flat: one value everywhere."""

TEMPLATE_KINDS = ("cut", "cut", "like", "uniform", "flat", "zero")
"""cut: a window of the image (an exact match exists; drawn twice as often); like: fresh values of the image's kind
(bright templates for bright images); uniform: U(0, 1) whatever the image; flat: one value per channel; zero: all 0."""

MASK_VALUES = ("none", "none", "bool", "uint8", "weights", "zero_taps")
MASK_SHAPES = ("hw", "chw", "template", "template_1", "image")
SPECIALS = ("nan", "inf", "-inf")


@dataclass(frozen=True)
class Case:
    """One drawn problem; :func:`build` turns it into arrays and options."""

    metric: str
    batch: int
    channels: int
    size: tuple[int, int]
    n_templates: int
    tsize: tuple[int, int]
    per_image_bank: bool
    two_d: bool
    mode: str
    padding: str
    pad_value: float
    stride: tuple[int, int]
    dilation: tuple[int, int]
    channels_mode: str
    circular: tuple[tuple[int, float], ...]
    mask_values: str
    mask_shape: str
    image_dtype: str
    template_dtype: str
    numpy_in: bool
    image_kind: str
    template_kinds: tuple[str, ...]
    specials: tuple[str, ...]
    template_nan_under_zero_weight: bool
    with_triton: bool
    seed: int


@st.composite
def cases(draw, metric: str, for_match: bool = False) -> Case:
    """A problem anywhere in the option space of ``metric`` (channels="separate" left out for match)."""
    tsize = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["valid", "same", "full"]))
    span = [d * (t - 1) + 1 for d, t in zip(dilation, tsize, strict=True)]
    if mode == "valid":
        size = tuple(s + draw(st.integers(0, 8)) for s in span)
    else:
        size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    two_d = draw(st.integers(0, 9)) == 0
    batch, channels, n_templates = (1, 1, 1) if two_d else tuple(draw(st.integers(1, 3)) for _ in range(3))
    per_image_bank = not two_d and draw(st.integers(0, 4)) == 0
    image_dtype = draw(st.sampled_from(DRAWN_DTYPES))
    template_dtype = image_dtype if draw(st.integers(0, 5)) else draw(st.sampled_from(DRAWN_DTYPES))
    samples = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16}
    if samples.get(image_dtype, 0) * samples.get(template_dtype, 0) == 8 * 16:
        template_dtype = image_dtype  # 8- against 16-bit samples are refused (tests/test_errors.py), not scored
    floating = image_dtype.startswith(("float", "bfloat"))
    spec = METRICS[metric]
    circular: tuple[tuple[int, float], ...] = ()
    if spec.circular_ok and draw(st.integers(0, 3)) == 0:
        circular = ((draw(st.integers(0, channels - 1)), draw(st.sampled_from([1.0, 0.5, 360.0]))),)
    mask_values = draw(st.sampled_from(MASK_VALUES))
    specials = tuple(draw(st.lists(st.sampled_from(SPECIALS), min_size=1, max_size=3))) if floating else ()
    specials = specials if draw(st.booleans()) else ()
    mask_shapes = [s for s in MASK_SHAPES if s != "image" or per_image_bank]
    return Case(
        metric=metric,
        batch=batch,
        channels=channels,
        size=size,
        n_templates=n_templates,
        tsize=tsize,
        per_image_bank=per_image_bank,
        two_d=two_d,
        mode=mode,
        padding=draw(st.sampled_from(["constant", "reflect", "replicate", "circular"])),
        pad_value=draw(st.sampled_from([0.0, 0.0, 0.25, -2.0, 1e4])),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        dilation=dilation,
        channels_mode=draw(st.sampled_from(["joint", "mean"] if for_match else ["joint", "separate", "mean"])),
        circular=circular,
        mask_values=mask_values,
        mask_shape="hw" if two_d else draw(st.sampled_from(mask_shapes)),
        image_dtype=image_dtype,
        template_dtype=template_dtype,
        numpy_in=image_dtype != "bfloat16" and template_dtype != "bfloat16" and draw(st.integers(0, 4)) == 0,
        image_kind=draw(st.sampled_from(IMAGE_KINDS)),
        template_kinds=tuple(draw(st.sampled_from(TEMPLATE_KINDS)) for _ in range(n_templates)),
        specials=specials,
        template_nan_under_zero_weight=mask_values == "zero_taps" and draw(st.booleans()),
        # Triton runs in its interpreter on CPU (about 0.1 s a call): a share of the distance problems only.
        with_triton=torch.cuda.is_available() or draw(st.integers(0, 7)) == 0,
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _bright_offset(dtype: torch.dtype) -> float:
    """1e4, or a bright level that an 8-bit integer dtype holds."""
    return {torch.uint8: 200.0, torch.int8: 100.0}.get(dtype, 1e4)


def _values(rng: np.random.Generator, kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """float64 values of ``kind`` that ``dtype`` represents (integer dtypes get integers in their range)."""
    integer = not dtype.is_floating_point
    if kind == "uniform":
        values = rng.random(shape) * (200 if integer else 1)
    elif kind == "normal":
        values = 3 * rng.standard_normal(shape) * (30 if integer else 1)
    elif kind == "levels":
        values = rng.integers(0, 4, shape).astype(np.float64)
    elif kind == "patches":
        values = rng.random(shape) * (200 if integer else 1)
        for _ in range(2):
            y, x = rng.integers(0, shape[-2]), rng.integers(0, shape[-1])
            hy, wx = rng.integers(1, shape[-2] + 1), rng.integers(1, shape[-1] + 1)
            values[..., y : y + hy, x : x + wx] = rng.random() * (200 if integer else 1)
    elif kind == "bright":
        values = _bright_offset(dtype) + rng.random(shape) * (20 if integer else 1)
    elif kind == "flat":
        values = np.full(shape, rng.random() * (200 if integer else 1) + 0.5)
    else:
        raise AssertionError(kind)
    if integer:
        info = torch.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values


def _template(rng, kind, image: np.ndarray, case: Case, dtype: torch.dtype) -> np.ndarray:
    """One template [C, h, w] of ``kind`` for the float64 image [C, H, W]."""
    (h, w), (dy, dx) = case.tsize, case.dilation
    C, H, W = image.shape
    span_h, span_w = dy * (h - 1) + 1, dx * (w - 1) + 1
    if kind == "cut" and span_h <= H and span_w <= W:
        y, x = rng.integers(0, H - span_h + 1), rng.integers(0, W - span_w + 1)
        return image[:, y : y + span_h : dy, x : x + span_w : dx].copy()
    if kind in ("cut", "like"):
        return _values(rng, case.image_kind, (C, h, w), dtype)
    if kind == "uniform":
        return _values(rng, "uniform", (C, h, w), dtype)
    if kind == "flat":
        return np.broadcast_to(_values(rng, "uniform", (C, 1, 1), dtype), (C, h, w)).copy()
    return np.zeros((C, h, w))


def _mask(rng, case: Case) -> np.ndarray | None:
    """The mask of ``case`` in its drawn shape and dtype; every template keeps weight in every channel."""
    if case.mask_values == "none":
        return None
    B, C, T, (h, w) = case.batch, case.channels, case.n_templates, case.tsize
    full = {"hw": (1, 1, 1, h, w), "chw": (1, 1, C, h, w), "template": (1, T, C, h, w)}
    full |= {"template_1": (1, T, 1, h, w), "image": (B, T, C, h, w)}
    shape = full[case.mask_shape]
    if case.mask_values in ("bool", "uint8"):
        weights = (rng.random(shape) > 0.3).astype(np.float64)
    else:
        weights = rng.uniform(0.1, 2.0, shape)
        if case.mask_values == "zero_taps":
            weights[rng.random(shape) < 0.4] = 0.0
    weights[..., (h - 1) // 2, (w - 1) // 2] = 1.0  # a positive weight in every template and channel
    drop = {"hw": 3, "chw": 2, "template": 1, "template_1": 1, "image": 0}[case.mask_shape]
    weights = weights.reshape(shape[drop:])
    if case.mask_values == "bool":
        return weights > 0
    if case.mask_values == "uint8":
        return (weights * 3).astype(np.uint8)
    return weights


def build(case: Case) -> tuple[object, object, dict]:
    """Images, templates and the keyword options of ``case`` (numpy or torch, in the drawn dtypes)."""
    rng = np.random.default_rng(case.seed)
    image_dtype, template_dtype = DTYPES[case.image_dtype], DTYPES[case.template_dtype]
    B, C, (H, W) = case.batch, case.channels, case.size
    images = _values(rng, case.image_kind, (B, C, H, W), image_dtype)
    banks = np.stack(
        [
            np.stack([_template(rng, kind, images[b], case, template_dtype) for kind in case.template_kinds])
            for b in range(B if case.per_image_bank else 1)
        ]
    )
    for special in case.specials:  # after the cut: templates stay finite
        where = tuple(int(rng.integers(0, n)) for n in images.shape)
        images[where] = float(special)
    mask = _mask(rng, case)
    if case.template_nan_under_zero_weight and mask is not None:
        zero = np.broadcast_to(np.asarray(mask) == 0, banks.shape[-mask.ndim :])
        banks[np.broadcast_to(zero, banks.shape)] = np.nan
    if not template_dtype.is_floating_point:
        banks = np.nan_to_num(banks)
    bank = banks if case.per_image_bank else banks[0]
    if case.two_d:
        images, bank = images[0, 0], bank[0, 0]
    images_t = torch.from_numpy(images).to(image_dtype)
    bank_t = torch.from_numpy(np.ascontiguousarray(bank)).to(template_dtype)
    options = {
        "metric": case.metric,
        "mode": case.mode,
        "padding": case.padding,
        "pad_value": case.pad_value,
        "stride": case.stride,
        "dilation": case.dilation,
        "channels": case.channels_mode,
        "circular": dict(case.circular) or None,
        "mask": mask if mask is None or case.numpy_in else torch.from_numpy(mask),
    }
    if case.numpy_in:
        return images_t.numpy(), bank_t.numpy(), options
    return images_t, bank_t, options


def _as_float64(scores: object) -> torch.Tensor:
    return torch.as_tensor(scores).to(torch.float64)


def _compare(name: str, got: torch.Tensor, want: torch.Tensor, tol: dict[str, float]) -> str | None:
    """Why ``got`` disagrees with ``want`` (shape, NaN or ±inf positions exactly, finite values within ``tol``)."""
    if got.shape != want.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    for label, test in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = test(got) != test(want)
        if bool(differ.any()):
            at = [tuple(i) for i in differ.nonzero().tolist()[:3]]
            count = f"{int(differ.sum())} of {got.numel()} scores"
            return f"{name}: {label} differs at {count}, e.g. {at}: {float(got[at[0]])} vs {float(want[at[0]])}"
    finite = torch.isfinite(want)
    error = (got[finite] - want[finite]).abs()
    allowed = tol["atol"] + tol["rtol"] * want[finite].abs()
    if bool((error > allowed).any()):
        worst = int((error - allowed).argmax())
        index = tuple(finite.nonzero()[worst].tolist())
        allowed_text = f"atol {tol['atol']:.3g}, rtol {tol['rtol']:.3g}"
        values = f"{float(got[index])!r} vs {float(want[index])!r}"
        return f"{name}: max error {float(error.max()):.3g} ({allowed_text}) at {index}: {values}"
    return None


def _output_dtype(case: Case) -> torch.dtype:
    """float64 when an input is float64 or a 32/64-bit integer, else float32 (similarity's documented rule)."""
    wide = {"float64", "int32", "int64"}
    return torch.float64 if case.image_dtype in wide or case.template_dtype in wide else torch.float32


def _largest(scores: torch.Tensor) -> float:
    """The largest finite |score|, 0 when there is none."""
    finite = scores[torch.isfinite(scores)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _tolerance(case: Case, want: torch.Tensor) -> dict[str, float]:
    """The suite's tolerance (tests/conftest.py) for the output dtype, atol scaled by the largest finite reference
    score as in tests/engines/test_matrix.py."""
    return tolerance(_output_dtype(case), max(1.0, _largest(want)))


def _engines_to_run(case: Case, images, bank, options) -> tuple[list[str], list[str]]:
    """(engines that can run the case, disagreements about engines that refuse it wrongly)."""
    problem = canonicalize(images, bank, **with_defaults({**options, "method": "auto"})).problem
    runnable, refused = [], []
    for name in engines.ENGINES:
        engine = engines.load(name)
        if (name == "triton" and not case.with_triton) or engine.unavailable_reason() is not None:
            continue
        if engine.ineligible_reason(problem) is None:
            runnable.append(name)
            continue
        try:
            slidesim.similarity(images, bank, method=name, **options)
            refused.append(f"{name}: ineligible but ran")
        except EngineUnavailableError:
            pass
    return runnable, refused


def similarity_disagreements(case: Case) -> tuple[list[str], int]:
    """(every disagreement of the engines with the reference and with each other, the number of engines run)."""
    images, bank, options = build(case)
    want = _as_float64(slidesim.reference.similarity(images, bank, **options))
    tol = _tolerance(case, want)
    names, found = _engines_to_run(case, images, bank, options)
    out_type, out_dtype = np.ndarray if case.numpy_in else torch.Tensor, _output_dtype(case)
    results = {}
    for name in names:
        got = slidesim.similarity(images, bank, method=name, **options)
        if not isinstance(got, out_type) or torch.as_tensor(got).dtype != out_dtype:
            found.append(f"{name}: returned {type(got).__name__} of {got.dtype}")
        results[name] = _as_float64(got)
        found.append(_compare(f"{name} vs reference.similarity", results[name], want, tol))
    pair_tol = {key: 2 * value for key, value in tol.items()}
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            found.append(_compare(f"{first} vs {second}", results[first], results[second], pair_tol))
    return [f for f in found if f], len(names)


def _top_margin(scores: torch.Tensor, higher: bool) -> float:
    """Gap between the best and the second best finite score of one map (inf when there is one)."""
    finite = scores[torch.isfinite(scores)].flatten()
    if finite.numel() < 2:
        return float("inf")
    ordered = finite.sort(descending=higher).values
    return float((ordered[0] - ordered[1]).abs())


def _near_ties(scores: torch.Tensor, tol: dict[str, float]) -> bool:
    """Whether two finite scores lie within round-off of each other: round-off may then decide which is a peak."""
    finite = scores[torch.isfinite(scores)].flatten().sort().values
    allowed = 2 * (tol["atol"] + tol["rtol"] * finite.abs()[1:])
    return bool((finite.diff() <= allowed).any())


def match_disagreements(case: Case, k: int, subpixel: bool) -> tuple[list[str], int]:
    """Disagreements of slidesim.match across the engines: the maps as for similarity and, where they agree and no
    two scores are tied within round-off, the number of matches, their scores rank by rank and the best match's
    position where its map has a clear best."""
    images, bank, options = build(case)
    names, found = _engines_to_run(case, images, bank, options)
    runs = {
        name: slidesim.match(images, bank, k=k, subpixel=subpixel, method=name, **options)
        for name in ["reference", *[n for n in names if n != "reference"]]
    }
    spec = runs["reference"]
    want = _as_float64(spec.maps)
    tol = _tolerance(case, want)
    higher = METRICS[case.metric].higher_is_better
    for name, got in runs.items():
        if name == "reference":
            continue
        problem = _compare(f"match maps {name} vs reference", _as_float64(got.maps), want, tol)
        if problem:
            found.append(problem)
            continue
        if _near_ties(want, tol):
            continue  # a tie broken by round-off may make a peak, or suppress one, in either map
        if len(got) != len(spec):
            found.append(f"match {name}: {len(got)} matches, reference {len(spec)}")
            continue
        scores = _compare(f"match scores {name} vs reference", _as_float64(got.score), _as_float64(spec.score), tol)
        if scores:
            found.append(scores)
        first = np.ones(len(spec), dtype=bool)
        keys = np.stack([np.asarray(spec.batch), np.asarray(spec.template)], axis=1)
        first[1:] = (keys[1:] != keys[:-1]).any(axis=1)
        for i in np.flatnonzero(first):
            b, t = int(spec.batch[i]), int(spec.template[i])
            if _top_margin(want[b, t], higher) <= 2 * (tol["atol"] + tol["rtol"] * _largest(want[b, t])):
                continue  # a near tie: either peak is right
            position = (float(got.y[i]), float(got.x[i]))
            expected = (float(spec.y[i]), float(spec.x[i]))
            if max(abs(p - e) for p, e in zip(position, expected, strict=True)) > (1e-3 if subpixel else 0):
                found.append(f"match {name}: image {b} template {t} best at {position}, reference at {expected}")
    return found, len(runs)


def _case(**changes) -> Case:
    """A one-window float64 zncc problem (a 3×3 template over a 3×3 image) with ``changes``."""
    one_window = Case(
        metric="zncc",
        batch=1,
        channels=1,
        size=(3, 3),
        n_templates=1,
        tsize=(3, 3),
        per_image_bank=False,
        two_d=False,
        mode="valid",
        padding="constant",
        pad_value=0.0,
        stride=(1, 1),
        dilation=(1, 1),
        channels_mode="joint",
        circular=(),
        mask_values="none",
        mask_shape="hw",
        image_dtype="float64",
        template_dtype="float64",
        numpy_in=False,
        image_kind="uniform",
        template_kinds=("cut",),
        specials=(),
        template_nan_under_zero_weight=False,
        with_triton=True,
        seed=0,
    )
    return Case(**{**one_window.__dict__, **changes})


FOUND_BY_FUZZING = {
    # A window holding a non-finite pixel against a degenerate template (NaN must win, as for any other template).
    "zncc_flat_template_nan_window": _case(template_kinds=("flat",), specials=("nan",)),
    "ncc_zero_template_nan_window": _case(metric="ncc", template_kinds=("zero",), specials=("nan",)),
    "ncc_zero_template_inf_window": _case(metric="ncc", template_kinds=("zero",), specials=("inf",)),
    "ssd_normed_zero_template_inf_window": _case(metric="ssd_normed", template_kinds=("zero",), specials=("-inf",)),
    # A window whose every tap reads the same +inf pixel (a 1×1 image, replicate padding) against a textured template.
    "zncc_all_inf_window": _case(
        size=(1, 1), tsize=(2, 1), mode="same", padding="replicate", template_kinds=("uniform",), specials=("inf",)
    ),
    # float64 zncc of a bright image (1e4 + U(0, 1)) where windows mix it with dark constant padding.
    "zncc_float64_bright_full_zero_padding": _case(size=(6, 6), mode="full", image_kind="bright"),
    "zncc_float64_bright_same_padding_value": _case(size=(6, 6), mode="same", pad_value=0.25, image_kind="bright"),
    # A circular channel (period 0.5) of a bright float32 image against templates in [0, 1).
    "ssd_float32_circular_bright": _case(
        metric="ssd",
        batch=2,
        size=(7, 11),
        n_templates=2,
        tsize=(5, 4),
        mode="full",
        padding="circular",
        stride=(2, 1),
        circular=((0, 0.5),),
        image_dtype="float32",
        template_dtype="float32",
        image_kind="bright",
        template_kinds=("zero", "flat"),
        seed=125,
    ),
    # The same with the bright values in the constant padding only (pad_value 1e4, period 1).
    "sad_float32_circular_bright_padding": _case(
        metric="sad",
        size=(1, 1),
        tsize=(1, 4),
        mode="same",
        pad_value=1e4,
        circular=((0, 1.0),),
        image_dtype="float32",
        template_dtype="float32",
        image_kind="uniform",
        template_kinds=("cut",),
        seed=0,
    ),
}
"""Minimal problems the fuzzing found disagreements on, checked in every run whatever hypothesis draws."""


MATCH_FOUND_BY_FUZZING = {
    # Refinement over a NaN pixel with channels="mean": the shifted windows of a 1×1 template lose channel 1's only
    # tap, and the weights refinement builds for them fail the per-channel mask check (no mask was given).
    "match_mean_channels_refined_next_to_a_nan": _case(
        metric="ssd_normed",
        channels=2,
        size=(1, 2),
        tsize=(1, 1),
        per_image_bank=True,
        channels_mode="mean",
        image_dtype="float32",
        template_dtype="float32",
        numpy_in=True,
        specials=("nan",),
    ),
}


@pytest.mark.parametrize("name", list(MATCH_FOUND_BY_FUZZING))
def test_match_cases_found_by_fuzzing(name) -> None:
    case = MATCH_FOUND_BY_FUZZING[name]
    found, _ = match_disagreements(case, k=1, subpixel=True)
    assert not found, f"{case!r}\n" + "\n".join(found)


OPEN_DEFECTS: dict[str, str] = {}
"""Disagreements found and not yet fixed: strict xfails, so a fix shows up as a failure to remove them here."""


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=OPEN_DEFECTS[name]))
        if name in OPEN_DEFECTS
        else name
        for name in FOUND_BY_FUZZING
    ],
)
def test_cases_found_by_fuzzing(name) -> None:
    case = FOUND_BY_FUZZING[name]
    found, _ = similarity_disagreements(case)
    assert not found, f"{case!r}\n" + "\n".join(found)


@pytest.mark.parametrize("metric", list(METRICS))
@_fuzz_settings(ci_examples=60)
@given(data=st.data())
def test_engines_agree_with_the_reference_and_each_other(metric, data) -> None:
    case = data.draw(cases(metric), label="case")
    found, _ = similarity_disagreements(case)
    assert not found, f"{case!r}\n" + "\n".join(found)


@_fuzz_settings(ci_examples=25)
@given(data=st.data())
def test_match_agrees_across_engines(data) -> None:
    metric = data.draw(st.sampled_from(list(METRICS)), label="metric")
    case = data.draw(cases(metric, for_match=True), label="case")
    k, subpixel = data.draw(st.integers(1, 3), label="k"), data.draw(st.booleans(), label="subpixel")
    found, _ = match_disagreements(case, k, subpixel)
    assert not found, f"{case!r}, k={k}, subpixel={subpixel}\n" + "\n".join(found)
