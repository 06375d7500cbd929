"""The thread count of slidesim's calls: the knob (SLIDESIM_NUM_THREADS, set_num_threads, thread_limit), the cores
that bound it, and the caller's torch setting around calls."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import slidesim
from slidesim import _threads
from slidesim.kernels import numba_ops

numba = pytest.importorskip("numba")

CORES = _threads.available_cores()


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """Counts as on an idle machine (other processes' runnable threads would lower them), the default knob, and
    the caller's torch count put back."""
    monkeypatch.setattr(_threads, "_busy_cores", lambda: 0)
    monkeypatch.delenv(_threads.ENV_VARIABLE, raising=False)
    before = torch.get_num_threads()
    slidesim.set_num_threads(None)
    yield
    slidesim.set_num_threads(None)
    torch.set_num_threads(before)


@pytest.fixture
def seen(monkeypatch) -> list[tuple[int, int]]:
    """(torch's, numba's) thread count on the calling thread each time the numba distance tiles run."""
    counts: list[tuple[int, int]] = []
    run_tiles = numba_ops._run_tiles

    def spy(*args, **kwargs):
        counts.append((torch.get_num_threads(), numba.get_num_threads()))
        return run_tiles(*args, **kwargs)

    monkeypatch.setattr(numba_ops, "_run_tiles", spy)
    return counts


def _sad() -> None:
    image = np.random.default_rng(0).random((64, 80), dtype=np.float32)
    slidesim.similarity(image, image[10:20, 5:17], metric="sad", method="numba")


def test_a_call_uses_every_core_the_process_may_use_by_default(seen):
    torch.set_num_threads(1)
    _sad()
    assert seen == [(CORES, CORES)]
    assert torch.get_num_threads() == 1  # the caller's count, back after the call


def test_thread_limit_sets_torch_and_numba_counts_inside_calls_of_its_block(seen):
    with slidesim.thread_limit(1):
        assert slidesim.get_num_threads() == 1
        _sad()
    _sad()
    assert seen == [(1, 1), (CORES, CORES)]


def test_thread_limits_nest_and_belong_to_their_thread(seen):
    inner: list[int] = []
    with slidesim.thread_limit(CORES), slidesim.thread_limit(1):
        worker = threading.Thread(target=lambda: inner.append(slidesim.get_num_threads()))
        worker.start()
        worker.join()
        _sad()
    assert inner == [CORES]
    assert seen == [(1, 1)]


def test_set_num_threads_holds_for_later_calls_and_none_restores_the_default(seen):
    slidesim.set_num_threads(1)
    _sad()
    slidesim.set_num_threads(None)
    _sad()
    assert seen == [(1, 1), (CORES, CORES)]


def test_the_environment_variable_sets_the_count(monkeypatch, seen):
    monkeypatch.setenv("SLIDESIM_NUM_THREADS", "1")
    assert slidesim.get_num_threads() == 1
    _sad()
    assert seen == [(1, 1)]


def test_counts_are_bounded_by_the_cores_the_process_may_use(monkeypatch, seen):
    slidesim.set_num_threads(10_000)
    assert slidesim.get_num_threads() == CORES
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    _threads.available_cores.cache_clear()
    try:
        assert slidesim.get_num_threads() == 1
        _sad()
    finally:
        _threads.available_cores.cache_clear()
    assert seen == [(1, 1)]


def test_a_call_uses_fewer_threads_while_other_threads_hold_the_cores(monkeypatch, seen):
    monkeypatch.setattr(_threads, "_busy_cores", lambda: os.cpu_count())
    _sad()
    assert seen == [(1, 1)]
    assert slidesim.get_num_threads() == CORES  # the knob itself is unchanged


def test_calls_on_other_threads_get_the_cores_that_running_calls_leave(seen):
    with _threads.call_scope() as count:
        worker = threading.Thread(target=_sad)
        worker.start()
        worker.join()
    assert count == CORES
    assert seen == [(1, 1)]


def test_cgroup_quotas_are_read_in_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _threads._quota_v2(tmp_path / "cpu.max") == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _threads._quota_v2(tmp_path / "cpu.max") == 0.0
    (tmp_path / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert _threads._quota_v1(tmp_path) == 0.5
    assert _threads._quota_v1(tmp_path / "missing") is None


@pytest.mark.parametrize("value", [0, -2])
def test_counts_below_one_are_refused_naming_the_argument(value):
    with pytest.raises(slidesim.SlidesimValueError, match="`count`"):
        slidesim.set_num_threads(value)
    with pytest.raises(slidesim.SlidesimValueError, match="`count`"), slidesim.thread_limit(value):
        pass


@pytest.mark.parametrize("value", [2.0, "2", True])
def test_counts_that_are_not_ints_are_refused_naming_the_argument(value):
    with pytest.raises(slidesim.SlidesimTypeError, match="`count`"):
        slidesim.set_num_threads(value)


@pytest.mark.parametrize("text", ["0", "two", "-1", "1.5"])
def test_a_bad_environment_variable_is_refused_naming_it(monkeypatch, text):
    monkeypatch.setenv("SLIDESIM_NUM_THREADS", text)
    with pytest.raises(slidesim.SlidesimValueError, match="`SLIDESIM_NUM_THREADS`.*" + repr(text).replace(".", r"\.")):
        _sad()


def test_the_first_numba_kernel_leaves_the_callers_torch_count_alone():
    """numba's OpenMP layer sets the starting thread's OpenMP count to its own default when its threads start,
    which torch reads back as its count: a fresh process shows whether slidesim puts the caller's back."""
    script = textwrap.dedent(
        """
        import numpy as np, torch, slidesim
        torch.set_num_threads(1)
        image = np.random.default_rng(0).random((200, 200), dtype=np.float32)  # enough work for the threads
        slidesim.similarity(image, image[10:30, 5:25], metric="sad", method="numba")
        print(torch.get_num_threads())
        """
    )
    src = str(Path(slidesim.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "NUMBA_NUM_THREADS": "2"}
    env.pop("SLIDESIM_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "1"


def test_match_runs_its_inner_calls_at_its_count(seen):
    image = np.random.default_rng(1).random((48, 56), dtype=np.float32)
    with slidesim.thread_limit(1):
        slidesim.match(image, image[10:20, 5:17], metric="sad", method="numba", subpixel=False)
    assert seen and set(seen) == {(1, 1)}
