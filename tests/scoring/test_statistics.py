"""Window statistics of the fast correlation engines: the fused numba pass, the summed-area tables used without
numba, and the exact flat-window test that only runs where a variance is within its rounding bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slidesim
from slidesim._validate import DEFAULT_OPTIONS, canonicalize, geometry, padded_images
from slidesim.engines import conv, fft
from slidesim.kernels import area_sums
from slidesim.scoring.correlation import CorrelationScorer
from slidesim.scoring.statistics import WindowStatistics

from ..conftest import tolerance


def _brute_squares(image: np.ndarray, shift: np.ndarray, h: int, w: int, sy: int, sx: int, centred: bool):
    B, Hp, Wp = image.shape
    Ho, Wo = (Hp - h) // sy + 1, (Wp - w) // sx + 1
    out = np.zeros((B, Ho, Wo))
    for b in range(B):
        for r in range(Ho):
            for k in range(Wo):
                v = image[b, r * sy : r * sy + h, k * sx : k * sx + w].astype(np.float64) - shift[b]
                out[b, r, k] = (v * v).sum() - (v.sum() ** 2 / v.size if centred else 0.0)
    return out


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize(("h", "w", "sy", "sx"), [(4, 3, 1, 1), (3, 5, 2, 3), (2, 2, 3, 1), (5, 1, 1, 4), (1, 1, 2, 2)])
def test_fused_window_squares_match_brute_force(h: int, w: int, sy: int, sx: int, centred: bool) -> None:
    pytest.importorskip("numba")
    from slidesim.kernels.numba_windows import window_squares

    rng = np.random.default_rng(h * 100 + w * 10 + sy + sx)
    image = (rng.random((2, 71, 37)) * 10).astype(np.float32)  # more rows than one parallel band of 32
    shift = np.array([4.5, -1.0])
    Ho, Wo = (71 - h) // sy + 1, (37 - w) // sx + 1
    out = np.full((2, Ho, Wo), np.nan)
    low = window_squares(image, shift, h, w, sy, sx, centred, 16, 0.0, out, np.zeros((0, 0, 0)))
    expected = _brute_squares(image, shift, h, w, sy, sx, centred)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-9)
    assert low == 0
    tolerance = float(np.median(expected)) + 1e-7  # about half the windows are at or below it
    factors = np.full((2, Ho, Wo), np.nan, np.float32)
    low = window_squares(image, shift, h, w, sy, sx, centred, 16, tolerance, np.zeros((1, 1, 1)), factors)
    clear = np.abs(expected - tolerance) > 1e-8  # rounding cannot move these across the tolerance
    above, below = clear & (expected > tolerance), clear & (expected < tolerance)
    assert below.sum() <= low <= (~above).sum()
    np.testing.assert_allclose(factors[above], 1 / np.sqrt(expected[above]), rtol=1e-6)
    assert (factors[below] == 0).all()


@pytest.mark.parametrize("centred", [True, False])
def test_image_norm_fused_and_in_pieces_agree(centred: bool, monkeypatch) -> None:
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    image = torch.from_numpy((rng.random((2, 3, 67, 45)) * 5 + 1e4).astype(np.float32))  # bright: centring matters
    template = image[:1, :, 10:17, 4:9].clone()
    options = {**DEFAULT_OPTIONS, "metric": "zncc" if centred else "ncc", "method": "fft"}
    canon = canonicalize(image, template, **options)
    padded = padded_images(canon)
    prims = fft.ENGINE.primitives(canon, padded)
    state = CorrelationScorer(prims, canon.spec, padded, canon.templates, canon.mask, True)
    if not centred:
        state.stats.shift = torch.zeros(2, 3, 1, 1)
    shift = state.stats.shift.to(torch.float64)
    expected = float((padded.to(torch.float64) - shift).pow(2).sum(dim=(1, 2, 3)).max().sqrt())
    fused = state.rescorer.image_norm(centred)
    monkeypatch.setattr(type(prims), "plane_energy", lambda self, plane, shift: None)
    pieces = CorrelationScorer(prims, canon.spec, padded, canon.templates, canon.mask, True)
    pieces.stats.shift = state.stats.shift
    assert fused == pytest.approx(expected, rel=1e-12)
    assert pieces.rescorer.image_norm(centred) == pytest.approx(expected, rel=1e-12)


def _flat_brute_force(image: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
    windows = image.unfold(-2, h, stride).unfold(-2, w, stride)  # [B, C, H', W', h, w]
    flat_c = windows.amax(dim=(-1, -2)) == windows.amin(dim=(-1, -2))
    return flat_c.all(dim=1)


def _quantized_image(rng: np.random.Generator, offset: float) -> torch.Tensor:
    """Blocks of constant value (flat windows), a noisy band, and single-step perturbations (nearly flat)."""
    levels = rng.integers(0, 3, size=(2, 2, 9, 12)).astype(np.float32)
    image = np.kron(levels, np.ones((12, 12), np.float32)) + np.float32(offset)  # [2, 2, 108, 144]
    image[:, :, 40:52, :] += rng.random((2, 2, 12, 144)).astype(np.float32)
    image[0, 0, 80, 30] = np.nextafter(image[0, 0, 80, 30], np.float32(np.inf))  # one ulp: not flat
    image[1, 1, 5, 100] = np.nextafter(image[1, 1, 5, 100], np.float32(-np.inf))
    return torch.from_numpy(image)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("engine", [fft, conv])
@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("stride", [1, 2])
def test_flat_windows_are_found_exactly(engine, fused: bool, offset: float, stride: int, monkeypatch) -> None:
    if fused:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(area_sums, "fused_statistics_available", lambda: False)
    image = _quantized_image(np.random.default_rng(3), offset)
    bank = torch.rand(1, 2, 7, 6)
    options = {**DEFAULT_OPTIONS, "metric": "zncc", "stride": stride, "method": engine.ENGINE.name}
    canon = canonicalize(image, bank, **options)
    padded = padded_images(canon)
    prims = engine.FFTPrimitives if engine is fft else engine.ConvPrimitives
    geom = geometry(canon)
    stats = WindowStatistics(prims(geom, 2**20), padded, None, centre=True, finite=True)
    variance, flat, _ = stats.window_moments(stats.mask, stats.mask)
    expected = _flat_brute_force(image, 7, 6, stride)[:, None]
    assert expected.any() and not expected.all()
    assert torch.equal(flat, expected)
    assert torch.isfinite(variance).all() and (variance >= 0).all()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("metric", ["zncc", "ncc", "ccoeff"])
@pytest.mark.parametrize(("mode", "stride"), [("valid", 1), ("valid", (3, 2)), ("same", 1), ("full", (1, 4))])
@pytest.mark.parametrize(("channels", "flat_areas"), [(2, True), (1, True), (1, False)])
def test_both_statistics_paths_match_the_reference(
    fused: bool, metric: str, mode: str, stride, channels: int, flat_areas: bool, monkeypatch
) -> None:
    """One channel without flat areas takes the fused window factors; flat areas send it to the exact test."""
    if fused:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(area_sums, "fused_statistics_available", lambda: False)
    rng = np.random.default_rng(11)
    image = _quantized_image(rng, 1e4)[:, :channels, :60, :70]
    if not flat_areas:
        image = image + torch.from_numpy(rng.random(image.shape).astype(np.float32))
    bank = torch.from_numpy(rng.random((3, channels, 5, 4)).astype(np.float32)) + 1e4
    bank[1] = image[0, :, 20:25, 30:34]
    expected = slidesim.reference.similarity(image.double(), bank.double(), metric=metric, mode=mode, stride=stride)
    for method in ("fft", "conv"):
        scores = slidesim.similarity(image, bank, metric=metric, mode=mode, stride=stride, method=method)
        torch.testing.assert_close(scores.double(), expected, **tolerance(torch.float32, scale=1e3))


def _integer_image(rng: np.random.Generator, dtype: np.dtype, scale: int) -> np.ndarray:
    """Flat blocks at several levels, single pixels one step off (nearly flat windows), and a textured band."""
    levels = rng.integers(0, 4, size=(2, 2, 8, 10)) * scale
    image = np.kron(levels, np.ones((10, 10), np.int64))  # [2, 2, 80, 100]
    image[:, :, 30:40] += rng.integers(0, 3 * scale, size=(2, 2, 10, 100))
    image[0, 0, 65, 33] += 1
    image[1, 1, 5, 72] += 1
    return image.astype(dtype)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("dtype", "scale"), [(np.uint8, 60), (np.uint16, 20000), (np.int16, 9000)])
@pytest.mark.parametrize(("mode", "stride"), [("valid", 1), ("same", 2), ("full", 1)])
@pytest.mark.parametrize("metric", ["zncc", "ncc"])
def test_integer_images_decide_flat_windows_from_their_sums(
    fused: bool, dtype, scale: int, mode: str, stride: int, metric: str, monkeypatch
) -> None:
    """8- and 16-bit images need neither the exact flat test nor the uncertain windows' rescoring: their sums are
    exact, so every window's flatness (and energy) is read off them, and the scores still equal the reference."""
    if fused:
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(area_sums, "fused_statistics_available", lambda: False)

    def no_exact_test(*args, **kwargs):
        raise AssertionError("the exact flat test ran on an integer image")

    monkeypatch.setattr(area_sums.AreaSumReductions, "window_flat", no_exact_test)
    image = _integer_image(np.random.default_rng(5), dtype, scale)
    bank = np.stack([image[0, :, 20:27, 40:46], image[1, :, 60:67, 0:6], image[0, :, 0:7, 0:6]])  # the last: flat
    expected = slidesim.reference.similarity(
        image.astype(np.float64), bank.astype(np.float64), metric=metric, mode=mode, stride=stride
    )
    for method in ("fft", "conv"):
        scores = slidesim.similarity(image, bank, metric=metric, mode=mode, stride=stride, method=method)
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
        if metric == "zncc":
            flat = _flat_brute_force(padded_images(canonicalize(image, bank, **{**DEFAULT_OPTIONS, "mode": mode})),
                                     7, 6, stride)  # fmt: skip
            assert flat.any() and not flat.all()
            assert (scores.transpose(1, 0, 2, 3)[:, flat.numpy()] == 0).all()  # flat windows score exactly 0


def _long_squares(image: np.ndarray, shift: float, h: int, w: int, centred: bool) -> np.ndarray:
    """Window sums in extended precision, tap by tap: errors relative to each window's own terms only."""
    v = image.astype(np.longdouble) - np.longdouble(shift)
    Ho, Wo = image.shape[0] - h + 1, image.shape[1] - w + 1
    first = np.zeros((Ho, Wo), np.longdouble)
    second = np.zeros((Ho, Wo), np.longdouble)
    for i in range(h):
        for j in range(w):
            tap = v[i : i + Ho, j : j + Wo]
            first += tap
            second += tap * tap
    return second - first * first / (h * w) if centred else second


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize(("shape", "template"), [((90, 70), (5, 7)), ((40, 300), (3, 50)), ((120, 64), (31, 2))])
def test_running_sums_stay_within_their_rounding_bound(shape, template, centred: bool) -> None:
    """Bright rows and columns beside faint windows: the running column sums and the row prefix carry the bright
    pixels' rounding into the faint windows, which the bound must cover; the plane's total must not enter it."""
    pytest.importorskip("numba")
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("no extended precision to measure float64 rounding against")
    from slidesim.kernels.numba_windows import window_squares
    from slidesim.scoring.bounds import running_sums_rounding_bound, variance_rounding_bound

    (H, W), (h, w) = shape, template
    rng = np.random.default_rng(H + W + h)
    image = rng.random((H, W)) * 1e-3  # faint, fractional
    image[: H // 3] = rng.random((H // 3, W)) * 1e3  # bright rows above
    image[:, : W // 4] += rng.random((H, W // 4)) * 1e3  # and bright columns to the left
    shift = 0.25
    out = np.full((1, H - h + 1, W - w + 1), np.nan)
    window_squares(image[None], np.array([shift]), h, w, 1, 1, centred, 16, 0.0, out, np.zeros((0, 0, 0)))
    error = np.abs(out[0] - _long_squares(image, shift, h, w, centred).astype(np.float64)).max()
    reach = float(np.abs(image - shift).max())
    bound = running_sums_rounding_bound(reach, shape, template, centred)
    assert error <= bound
    assert bound < variance_rounding_bound(reach, shape, torch.ones(1, 1, 1, h, w, dtype=torch.float64)) / 10


@pytest.mark.parametrize("metric", ["ssd", "ssd_normed"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("divisor", [255.0, 1.0])
def test_float_photographs_rescore_only_near_matches(metric: str, dtype, divisor: float, monkeypatch) -> None:
    """A picture divided by 255 (scikit-image's float convention) or converted to float as it is: the energies'
    rounding bound is the running sums' own (integers: none), so only windows within it of an exact match are
    scored again (a bound of the plane's total flagged every window: seconds per call), and the scores still
    agree with the reference."""
    pytest.importorskip("numba")
    from slidesim.scoring.rescoring import Rescorer

    rng = np.random.default_rng(7)
    image = np.zeros((96, 128))
    image[:, 40:] = rng.random((96, 88))
    image = (np.round(image * 255) / divisor).astype(dtype)
    template = image[30:46, 60:84].copy()
    flagged = []
    exact_scores = Rescorer.exact_scores

    def counting(self, t0, mask, grad, metric=None):
        flagged.append(int(mask.sum()))
        return exact_scores(self, t0, mask, grad, metric)

    monkeypatch.setattr(Rescorer, "exact_scores", counting)
    scores = slidesim.similarity(image, template, metric=metric, method="fft")
    expected = slidesim.similarity(image, template, metric=metric, method="reference")
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    np.testing.assert_allclose(scores, expected, **tolerance(torch_dtype, float(np.abs(expected).max())))
    assert scores[30, 60] == 0.0  # the exact match
    assert sum(flagged) <= 10, f"{sum(flagged)} of {scores.size} windows rescored"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method", ["fft", "conv"])
def test_rectangle_masks_on_integer_images_match_the_reference(channels: int, method: str, monkeypatch) -> None:
    """Masks that are 1 on a rectangle of their canvas (a scale search's footprints) take the engine's fused pass
    over each rectangle for their window variances (one channel: its inverse roots directly): zncc equals the
    reference, windows of a flat band score exactly 0, and neither the exact flat test nor the masked sums run."""
    pytest.importorskip("numba")

    def not_expected(*args, **kwargs):
        raise AssertionError("rectangle masks of an integer image took the masked window sums")

    monkeypatch.setattr(area_sums.AreaSumReductions, "window_flat", not_expected)
    monkeypatch.setattr(area_sums.AreaSumReductions, "window_sum", not_expected)
    rng = np.random.default_rng(8)
    image = rng.integers(0, 256, (2, channels, 48, 64)).astype(np.uint8)
    image[:, :, 20:36, :] = 9  # a flat band holding whole windows
    bank = rng.integers(0, 256, (3, channels, 11, 13)).astype(np.uint8)
    mask = np.zeros((3, 1, 11, 13), dtype=bool)
    mask[0, 0, 1:10, 2:11] = True
    mask[1, 0] = True
    mask[2, 0, 3:8, 0:6] = True
    expected = slidesim.reference.similarity(
        image.astype(np.float64), bank.astype(np.float64), metric="zncc", mask=mask.astype(np.float64)
    )
    scores = slidesim.similarity(image, bank, metric="zncc", mask=mask, method=method)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert (scores[:, :, 21:25] == 0).all() and not (scores == 0).all()  # windows of the flat band


@pytest.mark.parametrize("flat_rows", [4, 100])
def test_few_doubtful_masked_windows_skip_the_flat_test(flat_rows: int, monkeypatch) -> None:
    """Masked windows whose variance lies within its rounding bound go straight to the exact rescoring when they
    are few (it scores flat ones too), and through the exact flat test when they are many; zncc equals the
    reference either way, flat windows 0 and near-flat ones (ripples of 1e-9) their exact scores."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(11)
    image = rng.random((1, 1, 140, 90)) * 0.9 + 0.1
    image[:, :, 10 : 10 + flat_rows, :] = 0.0  # flat
    image[:, :, 120:130, :] = 0.5 + 1e-9 * rng.random((1, 1, 10, 90))  # near-flat
    bank = rng.random((2, 1, 15, 15))
    yy, xx = np.mgrid[:15, :15]
    mask = np.broadcast_to(((yy - 7) ** 2 + (xx - 7) ** 2 <= 49)[None, None], (2, 1, 15, 15)).copy()
    mask[1, 0, :, 0] = False  # per-template masks
    tested = []
    original = area_sums.AreaSumReductions.window_flat

    def counted(*args, **kwargs):
        tested.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(area_sums.AreaSumReductions, "window_flat", counted)
    scores = slidesim.similarity(image, bank, metric="zncc", mask=mask, method="fft")
    expected = slidesim.reference.similarity(image, bank, metric="zncc", mask=mask.astype(np.float64))
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert (scores[:, :, 10 : 10 + flat_rows - 14] == 0).all()  # windows of the flat band
    assert bool(tested) == (flat_rows == 100)
