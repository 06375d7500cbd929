"""The engine contract: every registered engine implements all of it, and a new engine joins the planner and the
engine × metric matrix by registering."""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest
import torch

import slidesim
from slidesim import engines
from slidesim._cost_constants import CONSTANTS
from slidesim._validate import canonicalize, with_defaults
from slidesim.engines.base import Engine, ReductionEngine
from slidesim.engines.direct import DirectEngine
from slidesim.metrics import METRICS

from ..conftest import ENGINE_METRICS, TESTED_ENGINES, engines_for, random_problem, tolerance

CONTRACT = ("unavailable_reason", "ineligible_reason", "auto_excluded_reason", "features", "temporary_bytes")


def _problems() -> list:
    """Problems over every metric, with and without a mask, one and many templates, float32 and float64."""
    rng = np.random.default_rng(5)
    found = []
    for metric in METRICS:
        for mask in (None, np.ones((3, 4), np.float32)):
            for dtype, n_templates in ((torch.float32, 1), (torch.float64, 5)):
                images, bank = random_problem(rng, n_templates=n_templates, tsize=(3, 4), dtype=dtype)
                options = with_defaults({"metric": metric, "mask": mask, "mode": "same"})
                found.append(canonicalize(images, bank, **options).problem)
    return found


PROBLEMS = _problems()


@pytest.mark.parametrize("name", engines.ENGINES)
def test_every_registered_engine_implements_the_contract(name: str) -> None:
    engine = engines.load(name)
    assert isinstance(engine, Engine) and engine.name == name
    assert not inspect.isabstract(type(engine))  # every abstract method of the contract is implemented
    assert isinstance(engine, ReductionEngine) or name == "reference"  # only the oracle scores whole windows
    assert engine.unavailable_reason() is None or isinstance(engine.unavailable_reason(), str)
    for problem in PROBLEMS:
        for reason in (engine.ineligible_reason(problem), engine.auto_excluded_reason(problem)):
            assert reason is None or (isinstance(reason, str) and reason)
        features = engine.features(problem, 512 * 2**20)
        assert features["calls"] >= 1
        assert all(isinstance(v, float) and v >= 0 for v in features.values()), features
        # where auto may pick the engine, every count it reports has a fitted constant (Triton's are CUDA only)
        if name in CONSTANTS and engine.auto_excluded_reason(problem) is None:
            assert set(features) <= set(CONSTANTS[name]), set(features) - set(CONSTANTS[name])
        need = engine.temporary_bytes(problem, 512 * 2**20)
        assert isinstance(need, int) and need >= 0


def test_the_matrix_is_the_registry() -> None:
    """engines/test_matrix.py and test_oracles.py parametrize over TESTED_ENGINES: every engine but the oracle."""
    assert set(TESTED_ENGINES) == set(engines.ENGINES) - {"reference"}
    assert all(engines_for(metric) for metric in METRICS)  # every metric has engines besides the oracle


@pytest.mark.parametrize(("name", "metric"), ENGINE_METRICS)
def test_streamed_chunks_equal_a_whole_call(name: str, metric: str, rng) -> None:
    engine = engines.load(name)
    images, bank = random_problem(rng, n_templates=5, tsize=(4, 3))
    canon = canonicalize(images, bank, **with_defaults({"metric": metric}))
    whole = engine.run(canon)
    chunks = list(engine.stream(canon, 2))
    assert [(t0, t1) for t0, t1, _ in chunks] == [(0, 2), (2, 4), (4, 5)]
    torch.testing.assert_close(torch.cat([s for _, _, s in chunks], dim=1), whole, **tolerance(images.dtype))


class _DrawnBank:
    """A bank source that records the chunks drawn from it."""

    def __init__(self, templates: torch.Tensor, mask: torch.Tensor) -> None:
        self.templates, self.mask, self.members, self.drawn = templates, mask, templates.shape[1], []

    def draw(self, t0: int, t1: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.drawn.append((t0, t1))
        return self.templates[:, t0:t1], self.mask[:, t0:t1]


@pytest.mark.parametrize(("name", "metric"), ENGINE_METRICS)
def test_a_bank_drawn_on_demand_streams_through_one_call(name: str, metric: str, rng) -> None:
    """With a bank source, one stream call draws each chunk when it scores it (templates and per-template masks)
    and gives the scores of the whole bank; the call's own bank only sets the geometry."""
    engine = engines.load(name)
    images, bank = random_problem(rng, n_templates=5, tsize=(4, 3))
    mask = torch.rand(5, 1, 4, 3, dtype=bank.dtype) + 0.5
    canon = canonicalize(images, bank, **with_defaults({"metric": metric, "mask": mask}))
    head = canonicalize(images, bank[:1], **with_defaults({"metric": metric, "mask": mask[:1]}))
    source = _DrawnBank(canon.templates, canon.mask)
    chunks = []
    for t0, t1, scores in engine.stream(head, 2, source):
        assert source.drawn[-1] == (t0, t1)  # drawn just before it is scored
        chunks.append(scores)
    assert source.drawn == [(0, 2), (2, 4), (4, 5)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), engine.run(canon), **tolerance(images.dtype))


@pytest.mark.parametrize(("name", "metric"), [(n, m) for n, m in ENGINE_METRICS if METRICS[m].normalized])
def test_streamed_chunks_with_gradients_finish_a_few_templates_at_a_time(name: str, metric: str, rng) -> None:
    """A tight memory_limit finishes 2 templates at a time: chunks of 3 end with a piece of 1."""
    engine = engines.load(name)
    images, bank = random_problem(rng, batch=1, size=(18, 16), n_templates=5, tsize=(4, 3))
    bank.requires_grad_(True)
    canon = canonicalize(images, bank, **with_defaults({"metric": metric, "memory_limit": 2**16}))
    chunks = list(engine.stream(canon, 3))
    assert [(t0, t1, s.shape[1]) for t0, t1, s in chunks] == [(0, 3, 3), (3, 5, 2)]
    streamed = torch.cat([s for _, _, s in chunks], dim=1)
    torch.testing.assert_close(streamed, engine.run(canon), **tolerance(images.dtype))
    streamed.sum().backward()
    assert bank.grad is not None and torch.isfinite(bank.grad).all()


class _ToyEngine(DirectEngine):
    """The tap loops under another name: what a new engine in another package looks like."""

    name = "toy"


def test_a_registered_engine_joins_the_planner_and_runs(rng) -> None:
    module = types.ModuleType("toy_engine_module")
    module.ENGINE = _ToyEngine()
    sys.modules[module.__name__] = module
    engines.register("toy", module.__name__)
    try:
        assert "toy" in engines.ENGINES and "toy" in engines.auto_engines()
        images, bank = random_problem(rng)
        text = slidesim.explain(images, bank, metric="sad")
        assert "toy" in text
        got = slidesim.similarity(images, bank, metric="sad", method="toy")
        want = slidesim.reference.similarity(images, bank, metric="sad")
        torch.testing.assert_close(got.double(), want, **tolerance(torch.float32, float(want.abs().max())))
    finally:
        engines.unregister("toy")
        del sys.modules[module.__name__]
    assert "toy" not in engines.ENGINES
    with pytest.raises(slidesim.SlidesimValueError, match="`method` must be one of"):
        slidesim.similarity(images, bank, metric="sad", method="toy")
    with pytest.raises(ValueError, match="built-in"):
        engines.unregister("direct")


def test_an_engine_missing_part_of_the_contract_cannot_exist() -> None:
    class Incomplete(ReductionEngine):
        name = "incomplete"

        def features(self, problem, memory_limit):
            return {"calls": 1.0}

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
