"""Every engine against the float64 reference over metrics × modes × strides × dilations × channels × dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slidesim
from slidesim.metrics import METRICS

from ..conftest import ENGINE_METRICS, TESTED_ENGINES, engines_for, random_problem, tolerance

ALL_METRICS = list(METRICS)


def _compare(engine: str, images, bank, **options) -> None:
    got = slidesim.similarity(images, bank, method=engine, **options)
    want = slidesim.reference.similarity(images, bank, **options)
    scale = float(want.abs().max()) if want.numel() else 1.0
    assert got.dtype == (torch.float64 if images.dtype == torch.float64 else torch.float32)
    assert got.shape == want.shape
    torch.testing.assert_close(got.to(torch.float64), want, **tolerance(images.dtype, max(scale, 1.0)))


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
@pytest.mark.parametrize(
    ("mode", "stride", "dilation", "padding"),
    [
        ("valid", 1, 1, "constant"),
        ("valid", 2, 1, "constant"),
        ("valid", (3, 2), (2, 1), "constant"),
        ("same", 1, 1, "reflect"),
        ("same", 2, 2, "replicate"),
        ("full", 1, 1, "circular"),
        ("full", (1, 3), 1, "constant"),
    ],
)
@pytest.mark.parametrize("channels", ["joint", "separate", "mean"])
def test_matrix(engine, metric, mode, stride, dilation, padding, channels, rng) -> None:
    images, bank = random_problem(rng, size=(12, 11), tsize=(4, 3))
    _compare(
        engine,
        images,
        bank,
        metric=metric,
        mode=mode,
        stride=stride,
        dilation=dilation,
        padding=padding,
        pad_value=0.25,
        channels=channels,
    )


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int16, torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_dtypes(engine, metric, dtype, rng) -> None:
    images = torch.from_numpy(rng.integers(0, 200, (1, 3, 10, 9))).to(dtype)
    bank = torch.from_numpy(rng.integers(0, 200, (2, 3, 3, 4))).to(dtype)
    got = slidesim.similarity(images, bank, metric=metric, method=engine)
    want = slidesim.reference.similarity(images, bank, metric=metric)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got.double(), want, **tolerance(got.dtype, scale))


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
@pytest.mark.parametrize(
    ("mask_shape", "binary"),
    [((4, 3), True), ((2, 4, 3), False), ((3, 1, 4, 3), False), ((3, 2, 4, 3), True)],
)
def test_masks(engine, metric, mask_shape, binary, rng) -> None:
    images, bank = random_problem(rng)
    mask = rng.random(mask_shape)
    mask = torch.from_numpy(mask > 0.3) if binary else torch.from_numpy(mask * (mask > 0.2))
    mask.view(-1, 4, 3)[:, 1, 1] = True if binary else 0.7  # every template keeps some weight
    for channels in ("joint", "separate"):
        _compare(engine, images, bank, metric=metric, mask=mask, channels=channels)


NORMALIZED_OR_CENTRED = [(e, m) for e, m in ENGINE_METRICS if m in ("ncc", "zncc", "ssd_normed", "ccoeff")]


@pytest.mark.parametrize(("engine", "metric"), NORMALIZED_OR_CENTRED)
@pytest.mark.parametrize("template", ["flat", "zero"])
@pytest.mark.parametrize("special", [float("nan"), float("inf"), "all_inf"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("channels", ["joint", "separate", "mean"])
def test_missing_data_outranks_degenerate_templates(engine, metric, template, special, masked, channels, rng) -> None:
    """A window holding NaN or ±inf under a positive weight scores NaN even against a flat or all-zero template,
    in every engine (the degenerate-template rule gives 0 only to windows of finite data)."""
    images = torch.from_numpy(rng.random((1, 2, 7, 8)))
    if special == "all_inf":
        images[0, :, 1:4, 2:5] = float("inf")
    else:
        images[0, 0, 2, 3] = special
    bank = torch.full((1, 2, 3, 3), 3.0 if template == "flat" else 0.0, dtype=torch.float64)
    mask = None
    if masked:  # a zero weight over the bad pixel for windows at (1, 2) and (2, 3), and a fractional weight
        mask = torch.ones(1, 1, 3, 3, dtype=torch.float64)
        mask[..., 1, 1], mask[..., 0, 0] = 0.0, 0.5
    try:
        got = slidesim.similarity(images, bank, metric=metric, method=engine, mask=mask, channels=channels)
    except slidesim.EngineUnavailableError as error:  # engines whose sums spread inf refuse such images, saying so
        assert special in (float("inf"), "all_inf") and "inf" in str(error)
        return
    want = slidesim.reference.similarity(images, bank, metric=metric, mask=mask, channels=channels)
    # The windows whose positive weights cover the bad pixel (2, 3) score NaN; the others keep the degenerate rule.
    spoiled = torch.zeros(5, 6, dtype=torch.bool)
    support = torch.ones(3, 3, dtype=torch.bool) if mask is None else mask[0, 0] > 0
    for y in range(5):
        for x in range(6):
            dy, dx = 2 - y, 3 - x
            spoiled[y, x] = 0 <= dy < 3 and 0 <= dx < 3 and bool(support[dy, dx])
    if special == "all_inf":
        spoiled = want.isnan().flatten(0, -3).any(0)  # every window touching the block; checked against support
        assert bool(spoiled.any()) and not bool(spoiled.all())
    else:
        nan_channel0 = want[0, 0, 0] if channels == "separate" else want[0, 0]
        assert torch.equal(nan_channel0.isnan(), spoiled)
    assert torch.equal(got.isnan(), want.isnan())
    if metric == "ccoeff" or (metric in ("ncc", "ssd_normed") and template == "flat"):
        return  # not degenerate: the formula's own number, compared by the other matrix tests
    degenerate = 1.0 if metric == "ssd_normed" else 0.0  # zncc: flat or zero templates; ncc, ssd_normed: zero ones
    finite = ~want.isnan()
    torch.testing.assert_close(got[finite], torch.full_like(got[finite], degenerate))


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
def test_per_image_banks(engine, metric, rng) -> None:
    images, _ = random_problem(rng, batch=3)
    banks = torch.from_numpy(rng.random((3, 2, 2, 4, 3))).float()
    banks[1, 0] = images[1, :, 2:6, 3:6]
    _compare(engine, images, banks, metric=metric)
    mask = torch.from_numpy(rng.random((3, 2, 1, 4, 3)) + 0.1)
    _compare(engine, images, banks, metric=metric, mask=mask)


@pytest.mark.parametrize(
    ("engine", "metric"),
    [(e, m) for m in ["sad", "mad", "l1_similarity", "ssd"] for e in engines_for(m, circular={0: 360.0})],
)
def test_circular_channels(engine, metric, rng) -> None:
    images, bank = random_problem(rng, channels=3)
    images[:, 0] *= 360.0
    bank[:, 0] = (bank[:, 0] * 360.0 + 200.0) % 360.0
    for channels in ("joint", "separate", "mean"):
        _compare(engine, images, bank, metric=metric, circular={0: 360.0}, channels=channels)


@pytest.mark.parametrize("engine", TESTED_ENGINES)
def test_two_dimensional_numpy(engine, rng) -> None:
    image = rng.random((15, 14)).astype(np.float32)
    template = image[3:8, 4:10].copy()
    for metric in [m for e, m in ENGINE_METRICS if e == engine]:
        got = slidesim.similarity(image, template, metric=metric, method=engine)
        want = slidesim.reference.similarity(image, template, metric=metric)
        assert isinstance(got, np.ndarray) and got.shape == (11, 9) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("engine", TESTED_ENGINES)
def test_memory_limit_chunking_changes_nothing(engine, rng) -> None:
    images, bank = random_problem(rng, batch=2, size=(40, 37), n_templates=7, tsize=(5, 4))
    for metric in [m for e, m in ENGINE_METRICS if e == engine]:
        small = slidesim.similarity(images, bank, metric=metric, method=engine, memory_limit=4096)
        large = slidesim.similarity(images, bank, metric=metric, method=engine)
        torch.testing.assert_close(small, large, rtol=1e-6, atol=1e-6 * float(large.abs().max()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    metric=st.sampled_from(ALL_METRICS),
    mode=st.sampled_from(["valid", "same", "full"]),
    channels=st.sampled_from(["joint", "separate", "mean"]),
)
def test_random_shapes(data, metric, mode, channels) -> None:
    draw = data.draw
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dy, dx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(dy * (h - 1) + 1, dy * (h - 1) + 9))
    W = draw(st.integers(dx * (w - 1) + 1, dx * (w - 1) + 9))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    B, C, T = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.normal(size=(B, C, H, W)))
    bank = torch.from_numpy(rng.normal(size=(T, C, h, w)))
    for engine in engines_for(metric):
        _compare(engine, images, bank, metric=metric, mode=mode, stride=stride, dilation=(dy, dx), channels=channels)
