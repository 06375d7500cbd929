"""The numerics contract of slidesim.similarity."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

import slidesim
from slidesim import engines
from slidesim._validate import DEFAULT_OPTIONS, canonicalize
from slidesim.metrics import METRICS

from .conftest import ENGINE_METRICS, engines_for, tolerance

cv2 = pytest.importorskip("cv2")
skimage_feature = pytest.importorskip("skimage.feature")


@pytest.mark.parametrize("engine", engines_for("zncc"))
def test_bright_float32_image_keeps_zncc_accurate(engine) -> None:
    rng = np.random.default_rng(0)
    image64 = 1e4 + rng.random((96, 96))
    image = image64.astype(np.float32)
    template = image[40:56, 30:46].copy()
    exact = slidesim.reference.similarity(image.astype(np.float64), template.astype(np.float64))
    got = slidesim.similarity(image, template, method=engine)
    assert np.abs(got - exact).max() < 1e-3
    assert np.unravel_index(got.argmax(), got.shape) == (40, 30)


BRIGHT_PADDED_CASES = {
    "full, zero padding": {"mode": "full"},
    "same, pad_value 0.25": {"mode": "same", "pad_value": 0.25},
    "full, stride 2 and dilation 2": {"mode": "full", "stride": 2, "dilation": 2},
    "same, stride (3, 1), dilation (1, 2)": {"mode": "same", "stride": (3, 1), "dilation": (1, 2)},
    "full, binary mask": {"mode": "full", "mask": "binary"},
    "full, weighted mask": {"mode": "full", "mask": "weighted"},
    "full, per-template masks": {"mode": "full", "mask": "per_template"},
    "full, padding above the image": {"mode": "full", "pad_value": 3e4},
    "full, reflect": {"mode": "full", "padding": "reflect"},
    "valid": {"mode": "valid"},
}


@pytest.mark.parametrize("engine", engines_for("zncc"))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("case", list(BRIGHT_PADDED_CASES))
def test_float64_zncc_of_bright_data_beside_padding_is_within_1e9(engine, channels, case) -> None:
    """The float64 contract: zncc within 1e-9 of the reference, also for bright data (1e4 + U(0, 1)) whose
    windows meet constant padding of another level, where the padding's squares (1e8 a tap) used to reach the
    sums of the windows inside the image (3e-7 off before)."""
    rng = np.random.default_rng(channels)
    image = torch.from_numpy(1e4 + rng.random((2, channels, 23, 19)))
    bank = torch.from_numpy(rng.random((2, channels, 6, 5)))
    options = dict(BRIGHT_PADDED_CASES[case])
    kind = options.pop("mask", None)
    if kind is not None:
        weights = rng.random((2 if kind == "per_template" else 1, 1, 6, 5))
        options["mask"] = torch.from_numpy((weights > 0.3) * 1.0 if kind == "binary" else weights)
    want = slidesim.reference.similarity(image, bank, metric="zncc", **options)
    got = slidesim.similarity(image, bank, metric="zncc", method=engine, **options)
    torch.testing.assert_close(got, want, **tolerance(torch.float64))


@pytest.mark.parametrize(("engine", "metric"), [(e, m) for e, m in ENGINE_METRICS if m in ["zncc", "ncc"]])
@pytest.mark.parametrize("grad", [False, True])
def test_near_flat_windows_keep_their_scores(engine, metric, grad) -> None:
    """A dark area with faint ringing (values ~1e-8, as a spline shift leaves in a black background) is not flat,
    but the float32 cross term's round-off dwarfs its variation: such windows must still score as in float64,
    not as garbage clamped to ±1 that outranks the true match."""
    rng = np.random.default_rng(3)
    image = rng.random((1, 1, 96, 96)).astype(np.float32)
    image[..., 50:96, 40:96] = (1e-8 * rng.standard_normal((46, 56))).astype(np.float32)
    template = image[..., 10:34, 8:32].copy()
    images = torch.from_numpy(image).requires_grad_(grad)
    got = slidesim.similarity(images, torch.from_numpy(template), metric=metric, method=engine)
    exact = slidesim.reference.similarity(torch.from_numpy(image).double(), torch.from_numpy(template).double())
    if metric == "ncc":
        exact = slidesim.reference.similarity(
            torch.from_numpy(image).double(), torch.from_numpy(template).double(), metric="ncc"
        )
    assert (got.detach().double() - exact).abs().max() < 1e-3
    assert divmod(int(got.detach().argmax()), got.shape[-1]) == (10, 8)
    if grad:
        got.sum().backward()
        assert torch.isfinite(images.grad).all()


def test_peers_fail_the_bright_image_case() -> None:
    """The case above is a real trap: OpenCV and scikit-image both get it wrong (documents why the test exists)."""
    rng = np.random.default_rng(0)
    image = (1e4 + rng.random((96, 96))).astype(np.float32)
    template = image[40:56, 30:46].copy()
    exact = slidesim.reference.similarity(image.astype(np.float64), template.astype(np.float64))
    opencv = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
    scikit = skimage_feature.match_template(image, template)
    assert max(np.abs(opencv - exact).max(), np.abs(scikit - exact).max()) > 1e-3


@pytest.mark.parametrize(("engine", "metric"), [(e, m) for e, m in ENGINE_METRICS if m in ["zncc", "ncc"]])
def test_normalized_scores_in_range_and_copy_scores_one(engine, metric) -> None:
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((2, 3, 30, 28))).float() * 100
    bank = torch.stack([image[0, :, 3:10, 4:9], image[1, :, 12:19, 15:20]])
    scores = slidesim.similarity(image, bank, metric=metric, method=engine)
    assert scores.min() >= -1 and scores.max() <= 1
    assert abs(float(scores[0, 0, 3, 4]) - 1) < 1e-5
    assert abs(float(scores[1, 1, 12, 15]) - 1) < 1e-5


@pytest.mark.parametrize(("engine", "metric"), [(e, m) for e, m in ENGINE_METRICS if m in ["sad", "ssd", "mad"]])
def test_exact_copy_scores_zero(engine, metric) -> None:
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.random((1, 3, 20, 20))).float() * 1000
    template = image[:, :, 5:12, 6:11].clone()
    scores = slidesim.similarity(image, template, metric=metric, method=engine)
    assert float(scores[0, 0, 5, 6]) == 0.0


@pytest.mark.parametrize("engine", engines_for("zncc"))
def test_zncc_invariant_to_gain_and_offset(engine) -> None:
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((1, 2, 25, 24)))
    bank = torch.from_numpy(rng.random((2, 2, 6, 5)))
    base = slidesim.similarity(image, bank, method=engine)
    moved = slidesim.similarity(3.5 * image - 20.0, bank, method=engine)
    torch.testing.assert_close(base, moved, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("engine", "metric"), [*ENGINE_METRICS, *(("reference", m) for m in METRICS)])
@pytest.mark.parametrize("masked", [False, True])
def test_flat_windows_and_templates_are_finite_and_documented(engine, metric, masked) -> None:
    image = torch.zeros(1, 2, 12, 12)
    image[:, :, :, 6:] = 5.0  # two flat halves, an edge in between
    image[:, 1, 6:, :] = 7.0
    bank = torch.zeros(3, 2, 4, 4)
    bank[1] = 5.0  # flat non-zero template
    bank[2, :, :, 2:] = 5.0  # edge template
    mask = torch.ones(4, 4) if masked else None
    scores = slidesim.similarity(image, bank, metric=metric, mask=mask, method=engine)
    assert torch.isfinite(scores).all()
    if metric in ("zncc", "ncc"):
        assert scores[0, 0].eq(0).all() or metric == "ncc"  # zero template: no correlation at all
        assert scores[0, 1, 0, 0] == 0  # flat window
    if metric == "zncc":
        assert scores[0, 1].eq(0).all()  # flat template
        assert scores[0, 2, 0, 0] == 0  # flat window against an edge template
        assert abs(float(scores[0, 2, 0, 4]) - 1) < 1e-6  # the edge itself
    if metric == "ncc":
        assert scores[0, 0].eq(0).all() and scores[0, 1, 0, 0] == 0  # zero template, black window
    if metric == "ssd_normed":
        assert scores[0, 0, 0, 0] == 0  # black on black is an exact match
        assert scores[0, 1, 0, 0] == 1  # a non-zero template on a black window
    if metric == "l1_similarity":
        assert scores[0, 0, 0, 0] == 1  # black on black


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
def test_nan_only_affects_windows_that_contain_it(engine, metric) -> None:
    rng = np.random.default_rng(4)
    image = torch.from_numpy(rng.random((1, 2, 20, 22))).float()
    bank = torch.from_numpy(rng.random((2, 2, 4, 5))).float()
    image[0, 1, 9, 11] = float("nan")
    if engines.load(engine).ineligible_reason(_problem(image, bank, metric)):
        with pytest.raises(slidesim.EngineUnavailableError, match="NaN or inf"):
            slidesim.similarity(image, bank, metric=metric, method=engine)
        return
    scores = slidesim.similarity(image, bank, metric=metric, method=engine)
    touched = torch.zeros(17, 18, dtype=torch.bool)
    touched[6:10, 7:12] = True
    assert torch.isnan(scores[0, :, touched]).all()
    assert torch.isfinite(scores[0, :, ~touched]).all()
    auto = slidesim.similarity(image, bank, metric=metric)  # auto must pick an engine that keeps NaN local
    assert torch.isnan(auto[0, :, touched]).all() and torch.isfinite(auto[0, :, ~touched]).all()


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
@pytest.mark.parametrize("mask_kind", ["shared", "per_template"])
def test_nan_under_a_zero_weight_is_outside_the_window(engine, metric, mask_kind) -> None:
    """A zero weight takes its pixel out of the window: a NaN image pixel or template value there changes nothing
    (masks are how users exclude missing data), while a NaN under a positive weight still gives NaN."""
    rng = np.random.default_rng(5)
    image = torch.from_numpy(rng.random((1, 2, 12, 13)))
    bank = torch.from_numpy(rng.random((2, 2, 4, 5)))
    mask = torch.from_numpy(rng.random((2, 1, 4, 5)) + 0.5)
    if mask_kind == "shared":
        mask = mask[:1]
    mask[..., 1, 2] = 0.0
    bank[:, 1, 1, 2] = float("nan")  # excluded by every template's mask
    image[0, 0, 6, 7] = float("nan")  # under tap (1, 2) only in window (5, 5)
    options = {"metric": metric, "mask": mask}
    if engines.load(engine).ineligible_reason(canonicalize(image, bank, **{**DEFAULT_OPTIONS, **options}).problem):
        with pytest.raises(slidesim.EngineUnavailableError, match="NaN or inf"):
            slidesim.similarity(image, bank, method=engine, **options)
        return
    want = slidesim.reference.similarity(image, bank, **options)
    got = slidesim.similarity(image, bank, method=engine, **options)
    assert bool(want[0, :, 5, 5].isfinite().all())  # the NaN's only tap in this window weighs 0
    assert bool(want[0, :, 4, 4].isnan().all())  # here it sits under tap (2, 3), which counts
    torch.testing.assert_close(got, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))
    auto = slidesim.similarity(image, bank, **options)  # auto must pick an engine that honours the zero weight
    torch.testing.assert_close(auto, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
def test_nan_under_per_template_zero_weights(engine, metric) -> None:
    """Templates whose masks zero different taps: a NaN pixel is outside the window of one template and inside the
    other's, so the same window scores finite for the first and NaN for the second (as in the reference)."""
    rng = np.random.default_rng(6)
    image = torch.from_numpy(rng.random((1, 2, 10, 11)))
    image[0, 1, 4, 4] = float("nan")
    bank = torch.from_numpy(rng.random((3, 2, 3, 3)))
    mask = torch.from_numpy(rng.random((3, 1, 3, 3)) + 0.5)
    mask[0, 0, 1, 1] = 0.0  # template 0 leaves the NaN out of window (3, 3); templates 1 and 2 do not
    mask[1, 0, 0, 2] = 0.0  # a zero weight elsewhere: the NaN still counts for template 1
    options = {"metric": metric, "mask": mask}
    if engines.load(engine).ineligible_reason(canonicalize(image, bank, **{**DEFAULT_OPTIONS, **options}).problem):
        return  # fft and conv refuse NaN images (test_nan_under_a_zero_weight_is_outside_the_window)
    want = slidesim.reference.similarity(image, bank, **options)
    assert bool(want[0, 0, 3, 3].isfinite()) and bool(want[0, 1:, 3, 3].isnan().all())
    for method in (engine, "auto"):
        got = slidesim.similarity(image, bank, method=method, **options)
        torch.testing.assert_close(got, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
def test_nan_under_a_zero_template_value_still_counts(engine, metric) -> None:
    """Without a mask every tap is in the window: a NaN pixel under a template value of 0 makes the window NaN
    (NaN · 0 is NaN), even where every template is 0 at that tap."""
    rng = np.random.default_rng(8)
    image = torch.from_numpy(rng.random((1, 1, 9, 9)))
    image[0, 0, 4, 4] = float("nan")
    bank = torch.from_numpy(rng.random((2, 1, 3, 3)))
    bank[:, 0, 1, 1] = 0.0
    if engines.load(engine).ineligible_reason(_problem(image, bank, metric)):
        return
    got = slidesim.similarity(image, bank, metric=metric, method=engine)
    assert bool(got[0, :, 3, 3].isnan().all())
    torch.testing.assert_close(
        got, slidesim.reference.similarity(image, bank, metric=metric), equal_nan=True, **tolerance(torch.float64)
    )


@pytest.mark.parametrize(("engine", "metric"), ENGINE_METRICS)
@pytest.mark.parametrize("channels", ["joint", "separate", "mean"])
@pytest.mark.parametrize("masked", [False, True])
def test_infinite_pixels_score_as_the_reference(engine, metric, channels, masked) -> None:
    """±inf pixels give the reference's scores: ±inf or NaN by its arithmetic. ccoeff's window mean is infinite
    there, so its windows are NaN, although the engines' folded kernel (which sums to zero) would give ±inf."""
    rng = np.random.default_rng(9)
    image = torch.from_numpy(rng.random((2, 2, 10, 11)))
    image[0, 0, 4, 4] = float("inf")
    image[0, 1, 2, 8] = -float("inf")
    image[1, 0, 6, 3] = float("inf")
    image[1, 0, 7, 5] = -float("inf")  # both signs in some windows
    bank = torch.from_numpy(rng.random((3, 2, 3, 4)))
    options = {"metric": metric, "channels": channels}
    if masked:
        mask = torch.from_numpy(rng.random((3, 2, 3, 4)) + 0.5)
        mask[0, 0, 1, 1] = 0.0  # template 0 leaves (4, 4) out of window (3, 3)
        options["mask"] = mask
    want = slidesim.reference.similarity(image, bank, **options)
    if engines.load(engine).ineligible_reason(canonicalize(image, bank, **{**DEFAULT_OPTIONS, **options}).problem):
        with pytest.raises(slidesim.EngineUnavailableError, match="±inf"):
            slidesim.similarity(image, bank, method=engine, **options)
    else:
        got = slidesim.similarity(image, bank, method=engine, **options)
        torch.testing.assert_close(got, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))
    assert not bool(want.isfinite().all())
    auto = slidesim.similarity(image, bank, **options)
    torch.testing.assert_close(auto, want, equal_nan=True, **tolerance(torch.float64, scale=100.0))


@pytest.mark.parametrize("rotations", [None, [0, 15, 30]])
def test_an_infinite_pixel_never_wins_a_ccoeff_match(rotations) -> None:
    """ccoeff's windows over an inf pixel are NaN, the worst score in a match, not +inf, the best (through the
    best-of-bank stream too: rotations are a bank)."""
    rng = np.random.default_rng(10)
    image = rng.random((40, 40))
    image[5:13, 20:28] += np.linspace(0, 1, 8)  # a distinct pattern where the template comes from
    template = image[5:13, 20:28].copy()
    image[30, 10] = np.inf
    found = slidesim.match(image, template, metric="ccoeff", rotations=rotations, method="direct", subpixel=False)
    assert (float(found.y[0]), float(found.x[0])) == (8.5, 23.5)  # the window at (5, 20), by its centre
    assert np.isneginf(found.maps).any() and not np.isposinf(found.maps).any()


def test_direct_gradients_leave_per_template_zero_weights_out() -> None:
    """The backward passes skip a NaN pixel where the forward pass did: sad's template gradients stay finite and
    equal the reference's. (A correlation's gradient sums 0 · NaN over the other windows, in the reference too.)"""
    rng = np.random.default_rng(9)
    image = torch.from_numpy(rng.random((1, 1, 8, 8)))
    image[0, 0, 4, 4] = float("nan")
    mask = torch.ones(2, 1, 3, 3, dtype=torch.float64)
    mask[0, 0, 1, 1] = 0.0
    for metric in ("sad", "ccorr"):
        grads = []
        for run in (slidesim.reference.similarity, partial(slidesim.similarity, method="direct")):
            bank = torch.from_numpy(np.random.default_rng(10).random((2, 1, 3, 3))).requires_grad_()
            scores = run(image, bank, metric=metric, mask=mask)
            scores[0, 0, 3, 3].backward()  # template 0's window that holds the NaN under its zero weight
            grads.append(bank.grad)
        assert metric != "sad" or bool(grads[1].isfinite().all())
        torch.testing.assert_close(grads[1], grads[0], equal_nan=True, **tolerance(torch.float64))


def _problem(image, bank, metric):
    return canonicalize(image, bank, **{**DEFAULT_OPTIONS, "metric": metric}).problem


@pytest.mark.parametrize("engine", engines_for("zncc"))
def test_output_dtypes(engine) -> None:
    image = np.random.default_rng(5).random((12, 12))
    for dtype, out in [
        (np.uint8, np.float32),
        (np.uint16, np.float32),
        (np.int16, np.float32),
        (np.float16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
    ]:
        scores = slidesim.similarity((image * 200).astype(dtype), (image[:4, :4] * 200).astype(dtype), method=engine)
        assert scores.dtype == out, dtype
    t = torch.from_numpy(image)
    assert slidesim.similarity(t.bfloat16(), t[:4, :4].bfloat16(), method=engine).dtype == torch.float32


def test_large_templates_on_low_contrast_areas_stay_exact_and_fast_enough() -> None:
    """A 70² template (4900 taps) with conv2d over a low-contrast area: the tap-by-tap round-off estimate flags most
    windows, which are then recomputed by one float64 FFT per template instead of one gathered window at a time
    (that took minutes on a 1024² rotation search); scores still match float64."""
    from slidesim.scoring.rescoring import Rescorer

    rng = np.random.default_rng(4)
    image = 0.5 + 0.002 * rng.random((1, 1, 150, 150))
    image[..., :60, :] += rng.random((60, 150))  # texture in the top rows only
    template = image[..., 10:80, 20:90].copy()
    gathered = []
    original = Rescorer.exact_scores

    def counting(self, t0, flagged, grad):
        gathered.append(int(flagged.sum()))
        return original(self, t0, flagged, grad)

    Rescorer.exact_scores = counting
    try:
        got = slidesim.similarity(image.astype(np.float32), template.astype(np.float32), method="conv")
    finally:
        Rescorer.exact_scores = original
    exact = slidesim.reference.similarity(image, template)
    assert np.abs(got - exact).max() < 1e-3
    assert sum(gathered) < 0.05 * got.size  # the bulk float64 recompute took the rest


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("metric", ["ncc", "zncc"])
def test_a_non_finite_pixel_keeps_the_exact_recompute_elsewhere(bad, metric) -> None:
    """Two bad pixels far from the low-contrast windows that round-off could spoil: those windows are still found
    and recomputed (a NaN window factor once switched the check off: zncc erred by 5.9e-4), and the float64
    recompute does not spread the bad pixels (an FFT carries them into every output)."""
    rng = np.random.default_rng(4)
    image = 0.5 + 0.002 * rng.random((1, 1, 200, 200))
    image[..., :60, :] += rng.random((60, 200))  # texture in the top rows only
    template = image[..., 10:100, 20:110].copy()
    image[0, 0, 199, 199] = image[0, 0, 100, 3] = bad
    want = slidesim.reference.similarity(image, template, metric=metric)
    for method in ("direct", "conv", "fft"):
        options = {"metric": metric, "method": method}
        if engines.load(method).ineligible_reason(_problem(image, template, metric)):
            continue  # ±inf stays with the tap loops
        got = slidesim.similarity(image.astype(np.float32), template.astype(np.float32), **options)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.nanmax(np.abs(got - want)) < 1e-4, method


def test_auto_leaves_large_normalized_templates_to_fft() -> None:
    image = np.zeros((200, 200), np.float32)
    assert slidesim.plan(image, np.ones((64, 64), np.float32), metric="zncc").engine != "conv"
    assert "conv2d's round-off" in slidesim.explain(image, np.ones((64, 64), np.float32), metric="ncc")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("masked", [False, True])
def test_numba_ssd_normed_energies_of_faint_windows_beside_bright_ones(dtype, masked) -> None:
    """ssd_normed on the numba engine takes its window energies from running sums (or masked FFT sums), whose
    round-off scales with the bright part of the plane: faint windows, black ones and an exact match must still
    agree with the reference (degenerate rules included)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(11)
    image = np.zeros((40, 48))
    image[:, 24:] = rng.random((40, 24)) * 1e4  # bright right half
    image[10:30, 4:20] = rng.random((20, 16)) * 1e-3  # faint patch on the black left half
    image = torch.from_numpy(image).to(dtype)[None, None]
    bank = torch.stack([image[0, :, 12:21, 6:15], image[0, :, 5:14, 30:39], torch.zeros(1, 9, 9, dtype=dtype)])
    mask = torch.ones(9, 9, dtype=dtype) if masked else None
    if masked:
        mask[0, :4] = 0.0
    got = slidesim.similarity(image, bank, metric="ssd_normed", mask=mask, method="numba")
    want = slidesim.reference.similarity(image, bank, metric="ssd_normed", mask=mask)
    torch.testing.assert_close(got, want.to(dtype), **tolerance(dtype))
    assert got[0, 0, 12, 6] == 0.0 and got[0, 1, 5, 30] == 0.0  # the exact matches
    assert got[0, 2, 0, 0] == 0.0 and got[0, 0, 0, 0] == 1.0  # black on black; a faint template on a black window
