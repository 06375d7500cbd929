"""Engine selection: auto skips what cannot run and says why; pinned engines raise with their reason."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

import slidesim
from slidesim import engines
from slidesim._validate import canonicalize
from slidesim.plan import select_engine
from slidesim.similarity import _defaults


def _problem(metric: str):
    return canonicalize(torch.zeros(6, 6), torch.zeros(2, 2), **{**_defaults(), "metric": metric}).problem


def test_auto_prefers_numba_for_distance_metrics_and_direct_otherwise() -> None:
    assert select_engine("auto", _problem("sad")).NAME == "numba"
    assert select_engine("auto", _problem("zncc")).NAME == "direct"


def test_pinned_engine_that_cannot_run_says_why() -> None:
    with pytest.raises(slidesim.EngineUnavailableError, match=r"numba: accelerates the distance metrics .* got 'zncc'"):
        slidesim.similarity(torch.zeros(6, 6), torch.zeros(2, 2), method="numba")


def test_without_numba_auto_skips_it(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    assert select_engine("auto", _problem("sad")).NAME == "direct"
    with pytest.raises(
        slidesim.EngineUnavailableError, match=r"numba is not installed \(pip install 'slidesim\[numba\]'\)"
    ):
        slidesim.similarity(torch.zeros(6, 6), torch.zeros(2, 2), metric="sad", method="numba")


def test_every_registered_engine_loads() -> None:
    for name in engines.ENGINES:
        assert name == engines.load(name).NAME


def test_import_is_light() -> None:
    optional = ("numba", "triton", "dask", "cv2", "skimage")
    code = f"import sys, slidesim; print(sorted(m for m in {optional!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
