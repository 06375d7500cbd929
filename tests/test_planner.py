"""Engine selection: auto skips what cannot run and says why; pinned engines raise with their reason."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

import slidesim
from slidesim import engines
from slidesim import planner as slidesim_plan
from slidesim._validate import DEFAULT_OPTIONS, canonicalize
from slidesim.planner import select_engine


def _canon(metric: str, image=None):
    image = torch.rand(64, 64) if image is None else image
    return canonicalize(image, torch.rand(8, 8), **{**DEFAULT_OPTIONS, "metric": metric})


def test_auto_prefers_fused_and_fast_engines() -> None:
    assert select_engine(_canon("sad")).name == "numba"
    large = canonicalize(torch.rand(512, 512), torch.rand(32, 32), **{**DEFAULT_OPTIONS, "metric": "zncc"})
    assert select_engine(large).name == "fft"  # one large template: transforms beat 1024 taps per pixel
    bank = canonicalize(torch.rand(1, 1, 256, 256), torch.rand(64, 1, 5, 5), **{**DEFAULT_OPTIONS, "metric": "zncc"})
    # many small templates: a cross term over the whole bank at once (conv2d's 64 output channels or the product
    # tiles, which the model ranks within 10% of each other here), not 64 transforms or the tap loops
    assert select_engine(bank).name in ("conv", "numba")
    assert "the float64 oracle runs only when asked for by name" in slidesim.explain(
        torch.rand(64, 64), torch.rand(8, 8)
    )


def test_auto_respects_memory_limit_for_transforms() -> None:
    images, template = torch.rand(1, 1, 1024, 1024), torch.rand(1, 1, 32, 32)
    roomy = slidesim.plan(images, template)
    tight = slidesim.plan(images, template, memory_limit=8 * 2**20)
    assert roomy.engine == "fft"
    assert tight.engine != "fft" and "fft" in repr(tight) and "over memory_limit 8 MiB" in repr(tight)


def test_auto_keeps_nan_local_and_inf_in_tap_loops() -> None:
    """NaN pixels are holes that the fast engines fill and mark (test_numerics checks the scores); ±inf pixels
    would spread through their sums, so only the tap-by-tap engines run them."""
    image = torch.rand(1024, 1024)
    finite = select_engine(_canon("zncc", image)).name
    image[5, 5] = float("nan")
    assert select_engine(_canon("zncc", image)).name == finite  # as for the finite image
    assert finite in ("fft", "numba")
    image[9, 9] = float("inf")
    assert select_engine(_canon("zncc", image)).name == "direct"
    text = slidesim.explain(image, torch.rand(32, 32))
    assert "fft" in text and "the images contain ±inf" in text and "-> direct" in text


def test_explain_lists_every_engine_with_estimates() -> None:
    text = slidesim.explain(torch.rand(1, 1, 256, 256), torch.rand(4, 1, 16, 16), metric="sad")
    for name in engines.ENGINES:
        assert f"  {name}" in text
    assert "excluded: computes the correlation metrics" in text


def test_measure_times_candidates_and_remembers() -> None:
    images, bank = torch.rand(1, 1, 96, 96), torch.rand(3, 1, 9, 9)
    first = slidesim.plan(images, bank, metric="ncc", measure=True)
    assert first.measured and first.engine in engines.auto_engines()
    again = slidesim.plan(images, bank, metric="ncc")
    assert again.measured and again.engine == first.engine


def test_memory_limit_excludes_engines() -> None:
    text = slidesim.explain(torch.rand(1, 1, 512, 512), torch.rand(1, 1, 32, 32), metric="sad", memory_limit=2**20)
    assert "numba " in text and "over memory_limit 1 MiB" in text
    assert "-> direct" in text and "no engine fits" in text


def test_pinned_engine_that_cannot_run_says_why() -> None:
    with pytest.raises(slidesim.EngineUnavailableError, match=r"fft: computes the correlation metrics .* got 'sad'"):
        slidesim.similarity(torch.zeros(6, 6), torch.zeros(2, 2), metric="sad", method="fft")
    image = torch.zeros(6, 6)
    image[2, 2] = float("inf")
    with pytest.raises(slidesim.EngineUnavailableError, match=r"numba: the images contain ±inf"):
        slidesim.similarity(image, torch.zeros(2, 2), method="numba")


def test_without_numba_auto_skips_it(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    slidesim_plan._candidates.cache_clear()  # plans are cached per problem; availability changed under them
    assert select_engine(_canon("sad")).name == "direct"
    with pytest.raises(
        slidesim.EngineUnavailableError, match=r"numba is not installed \(pip install 'slidesim\[numba\]'\)"
    ):
        slidesim.similarity(torch.zeros(6, 6), torch.zeros(2, 2), metric="sad", method="numba")
    slidesim_plan._candidates.cache_clear()


def test_every_registered_engine_loads() -> None:
    for name in engines.ENGINES:
        assert name == engines.load(name).name


def test_import_is_light() -> None:
    heavy = ("torch", "numpy", "numba", "triton", "dask", "cv2", "skimage")
    code = f"import sys, slidesim; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    optional = ("numba", "triton", "dask", "cv2", "skimage")
    code = f"import sys, slidesim; slidesim.similarity; print(sorted(m for m in {optional!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_public_names_load_on_first_use() -> None:
    assert set(slidesim.__all__) <= set(dir(slidesim))
    for name in slidesim.__all__:
        assert getattr(slidesim, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        slidesim.nonexistent  # noqa: B018


def test_auto_skips_float64_conv_but_a_named_conv_runs() -> None:
    images, bank = torch.rand(1, 1, 64, 64, dtype=torch.float64), torch.rand(4, 1, 5, 5, dtype=torch.float64)
    text = slidesim.explain(images, bank, metric="ccorr")
    assert "float64 conv2d on the CPU unfolds every window" in text and "-> conv" not in text
    named = slidesim.similarity(images, bank, metric="ccorr", method="conv")
    torch.testing.assert_close(named, slidesim.reference.similarity(images, bank, metric="ccorr"))


def test_fft_estimates_follow_overlap_save_tiles() -> None:
    from slidesim import cost

    problem = _canon("zncc", torch.rand(1024, 1024)).problem
    roomy, tight = 512 * 2**20, 2**20
    assert (
        cost.features("fft", problem, tight)["image_transform_nlogn"]
        != cost.features("fft", problem, roomy)["image_transform_nlogn"]
    )
    assert cost.estimate_bytes("fft", problem, tight) < cost.estimate_bytes("fft", problem, roomy)


def test_cuda_problems_rank_by_the_gpu_table() -> None:
    """A CUDA problem (shapes only: no GPU needed) is ranked with the GPU constants: the fused Triton kernel for
    distance metrics, conv or fft for the correlation family, never numba."""
    import dataclasses

    pytest.importorskip("triton")
    for metric, expected in (("sad", {"triton"}), ("ssd", {"triton"}), ("zncc", {"conv", "fft"})):
        problem = canonicalize(
            torch.rand(1, 3, 512, 512), torch.rand(16, 3, 16, 16), **{**DEFAULT_OPTIONS, "metric": metric}
        )
        cuda = dataclasses.replace(problem.problem, device="cuda:0")
        candidates = slidesim_plan._candidates(cuda, 512 * 2**20, engines.ENGINES)
        runnable = [c.engine for c in candidates if c.excluded is None]
        assert runnable[0] in expected, candidates
        numba = next(c for c in candidates if c.engine == "numba")
        assert numba.excluded is not None and ("CPU" in numba.excluded or metric == "zncc")


def _dark_gradient_scene() -> torch.Tensor:
    """A uint8 screenshot-like scene: a flat light background, a block of texture, and a dark panel with a faint
    gradient, whose windows vary little against the image (the windows exact rescoring exists for)."""
    gen = torch.Generator().manual_seed(0)
    image = torch.full((1, 1, 160, 200), 236, dtype=torch.uint8)
    image[..., 20:60, 20:180] = torch.randint(0, 256, (40, 160), generator=gen).to(torch.uint8)
    image[..., 70:160, :] = (torch.arange(90) // 12 + 10).to(torch.uint8)[:, None]
    return image


def test_plan_counts_the_exact_rescoring_these_data_need() -> None:
    from slidesim.scoring import rescoring

    image = _dark_gradient_scene()
    template = image[..., 30:46, 30:46].clone()
    flagged = []
    original = rescoring.Rescorer.rescore

    def counting(self, scores, t0, marked, factors):
        flagged.append(int(marked.expand(scores.shape).sum()))
        return original(self, scores, t0, marked, factors)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rescoring.Rescorer, "rescore", counting)
        slidesim.similarity(image, template, metric="zncc", method="numba")
    found = slidesim.plan(image, template, metric="zncc")
    numba = next(c for c in found.candidates if c.engine == "numba")
    shapes_only = next(c for c in slidesim_plan.make_plan(_canon_of(image, template)).candidates if c.engine == "numba")
    assert sum(flagged) > 1000  # the scene does need it
    windows = int(numba.precision.split()[0])
    assert sum(flagged) <= windows <= 1.5 * sum(flagged)  # an upper bound, and a close one
    assert numba.seconds > shapes_only.seconds
    assert found.engine == slidesim_plan.make_plan(_canon_of(image, template)).engine  # auto's choice, reported
    assert "rescored exactly" in slidesim.explain(image, template, metric="zncc")


@pytest.mark.parametrize("many", [False, True])
def test_precision_estimate_prices_rescored_windows_or_a_float64_transform(many) -> None:
    from slidesim import cost
    from slidesim.scoring.rescoring import rescoring_costs

    scene = _dark_gradient_scene()
    image = scene.clone() if many else scene[..., :86, :].clone()
    if not many:  # a few dark windows only: texture over all but the first 40 columns of the dark panel
        image[..., 70:, 40:] = scene[..., 20:36, 40:]
    canon = _canon_of(image, scene[..., 30:46, 30:46].clone())
    work = cost.precision_estimate("numba", canon)
    p = canon.problem
    taps, outputs = 16 * 16, p.out_height * p.out_width
    counts, fft = cost.features("fft", p), cost.constants_for(p)["fft"]
    transforms = sum(fft[n] * counts[n] for n in ("image_transform_nlogn", "kernel_transform_nlogn"))
    costs = rescoring_costs(True, image)
    assert work.rescored_windows > 0 and not work.cross_in_float64
    if not many:  # few windows: scored one by one
        assert work.rescored_windows * taps <= outputs * costs.transform
        assert work.seconds == pytest.approx(work.rescored_windows * taps * costs.tap_seconds)
    else:  # so many that a float64 FFT of the cross term replaces the rescoring
        assert work.rescored_windows * taps > outputs * costs.transform
        assert work.seconds > 2 * transforms


def _canon_of(image, template, **options):
    return canonicalize(image, template, **{**DEFAULT_OPTIONS, "metric": "zncc", **options})


def test_plan_of_textured_data_or_other_metrics_adds_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, 120, 150, generator=gen)
    template = image[..., 5:21, 5:21].clone()
    for metric in ("zncc", "sad", "ccorr"):
        found = slidesim.plan(image, template, metric=metric)
        shapes_only = slidesim_plan.make_plan(_canon_of(image, template, metric=metric))
        assert found.engine == shapes_only.engine
        assert [(c.engine, c.seconds) for c in found.candidates] == [
            (c.engine, c.seconds) for c in shapes_only.candidates
        ]
        assert all(c.precision == "" for c in found.candidates)
