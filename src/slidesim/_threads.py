"""How many threads slidesim's calls use (floor L1): one count, sized to the cores this process may use, shared by
torch's intra-op threads and the numba kernels for the length of each call.

torch and numba's OpenMP layer run their parallel regions on the same libgomp thread team (numba's layer binds
the copy torch loaded), whose threads busy-wait for the next region before they sleep; libgomp reads its wait
policy once, when torch is imported, so slidesim cannot make it passive. What it can decide is how many threads
each region asks for. A call therefore:

* asks for at most the cores the process may use: its CPU affinity, and a cgroup CPU quota where one is set
  (:func:`available_cores`), never the machine's count;
* asks for fewer when other processes' runnable threads already hold cores (the running count of
  ``/proc/loadavg``), or other threads of this process run slidesim calls (Dask's workers): a region whose threads
  cannot all run at once waits at its barrier, spinning, for a time slice of the one that was preempted, which
  made a 10 ms call take a second beside one busy process;
* sets torch's count on the calling thread (an OpenMP setting of that thread) and numba's (also per thread) for
  the call only, and puts torch's back afterwards, so the caller's ``torch.set_num_threads`` holds before and
  after every call, even the one that first starts numba's threads (numba's start-up sets the calling thread's
  OpenMP count to its own default).

The count is ``SLIDESIM_NUM_THREADS`` (read on first use), :func:`set_num_threads`, or :func:`thread_limit` on
the calling thread, the innermost first; each is a maximum that the cores bound.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

from ._heap import keep_freed_memory
from .errors import SlidesimTypeError, SlidesimValueError

ENV_VARIABLE = "SLIDESIM_NUM_THREADS"

_Function = TypeVar("_Function", bound=Callable)

_chosen: int | None = None  # set_num_threads; None: the variable, else every core the process may use
_local = threading.local()  # limits: thread_limit's stack; depth and count: the call running on this thread
_claimed = 0  # threads of the slidesim calls running now in this process
_claims = threading.Lock()


def _checked(value: object, name: str) -> int:
    """A thread count as given by the user -> int, or a SlidesimTypeError / SlidesimValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SlidesimTypeError(
            f"`{name}` must be a positive int (a thread count), got {type(value).__name__} "
            f"{value!r}; pass e.g. 1 or {available_cores()}"
        )
    if value < 1:
        raise SlidesimValueError(
            f"`{name}` must be a positive thread count, got {value}; pass 1 for one thread "
            f"or {available_cores()} for every core this process may use"
        )
    return value


def _from_environment() -> int | None:
    """SLIDESIM_NUM_THREADS as a count, None when unset or empty; a SlidesimValueError naming it otherwise."""
    text = os.environ.get(ENV_VARIABLE, "").strip()
    if not text:
        return None
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise SlidesimValueError(
            f"`{ENV_VARIABLE}` must be a positive integer (a thread count), got "
            f"{os.environ[ENV_VARIABLE]!r}; set it to e.g. 1, or unset it to use every core "
            f"this process may use ({available_cores()})"
        )
    return count


def _cgroup_quota() -> float | None:
    """CPUs' worth of time the process's cgroup may use (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``), None without a quota or where none can be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy, mounted at /sys/fs/cgroup (inside a container: its own)
            folders = [Path("/sys/fs/cgroup" + path), Path("/sys/fs/cgroup")]
            quotas = (_quota_v2(folder / "cpu.max") for folder in folders)
        elif "cpu" in controllers.split(","):
            root = Path("/sys/fs/cgroup", controllers)
            folders = [Path(str(root) + path), root, Path("/sys/fs/cgroup/cpu")]
            quotas = (_quota_v1(folder) for folder in folders)
        else:
            continue
        for quota in quotas:
            if quota is not None:
                return quota if quota > 0 else None
    return None


def _quota_v2(file: Path) -> float | None:
    """A v2 ``cpu.max`` ("max 100000" or "150000 100000") in CPUs, 0.0 for no quota, None where unreadable."""
    try:
        quota, period = file.read_text().split()
        return 0.0 if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _quota_v1(folder: Path) -> float | None:
    """A v1 quota over period in CPUs, 0.0 for no quota (−1), None where unreadable."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else 0.0
    except (OSError, ValueError, ZeroDivisionError):
        return None


@functools.cache  # affinity and quota are set when a process starts; a call should not re-read them
def available_cores() -> int:
    """The cores this process may use: its CPU affinity, lowered to a cgroup CPU quota (rounded up) where one is
    set. At least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


@functools.cache  # os.cpu_count() reads sysfs: tens of microseconds
def _online_cpus() -> int:
    """The machine's CPUs, over which /proc/loadavg counts runnable threads."""
    return os.cpu_count() or 1


def get_num_threads() -> int:
    """The most threads a slidesim call on this thread uses now.

    The innermost :func:`thread_limit` of this thread, else :func:`set_num_threads`'s count, else the variable
    ``SLIDESIM_NUM_THREADS``, else every core the process may use (its CPU affinity and cgroup CPU quota; not
    the machine's count), bounded by those cores. A call uses fewer while other runnable threads hold cores.

    Returns:
        A count ≥ 1.

    Raises:
        SlidesimValueError: ``SLIDESIM_NUM_THREADS`` is set but not a positive integer.
    """
    limits = getattr(_local, "limits", None)
    wanted = limits[-1] if limits else _chosen if _chosen is not None else _from_environment()
    cores = available_cores()
    return cores if wanted is None else min(wanted, cores)


def set_num_threads(count: int | None) -> None:
    """Set the most threads slidesim's calls use, in every thread of the process (:func:`thread_limit` scopes a
    count to a block of one thread instead). torch's own count outside slidesim's calls is left alone.

    Args:
        count: A positive thread count (more than the cores the process may use counts as those cores), or None
            for the default: ``SLIDESIM_NUM_THREADS``, else every core the process may use.

    Raises:
        SlidesimTypeError: ``count`` is not an int or None.
        SlidesimValueError: ``count`` is below 1.

    Examples:
        >>> import slidesim
        >>> slidesim.set_num_threads(1)
        >>> slidesim.get_num_threads()
        1
        >>> slidesim.set_num_threads(None)
    """
    global _chosen
    _chosen = None if count is None else _checked(count, "count")


@contextlib.contextmanager
def thread_limit(count: int) -> Iterator[None]:
    """Within the block, slidesim's calls on this thread use at most ``count`` threads (e.g. 1 on each of several
    threads that call slidesim at once, such as Dask's workers); blocks nest, the innermost counts.

    Args:
        count: A positive thread count.

    Raises:
        SlidesimTypeError: ``count`` is not an int.
        SlidesimValueError: ``count`` is below 1.

    Examples:
        >>> import slidesim
        >>> with slidesim.thread_limit(1):
        ...     slidesim.get_num_threads()
        1
    """
    limits = _local.__dict__.setdefault("limits", [])
    limits.append(_checked(count, "count"))
    try:
        yield
    finally:
        limits.pop()


_LOAD_SAMPLE_SECONDS = 0.1  # how long one reading of the load stands: reading /proc costs 0.1-0.5 ms on a busy host
_load_sample: tuple[float, int] = (-math.inf, 0)  # (when, busy cores)


def _busy_cores() -> int:
    """Runnable threads of other processes, read at most every _LOAD_SAMPLE_SECONDS (see _read_busy_cores)."""
    global _load_sample
    when, busy = _load_sample
    now = time.monotonic()
    if now - when > _LOAD_SAMPLE_SECONDS:
        busy = _read_busy_cores()
        _load_sample = (now, busy)
    return busy


def _read_busy_cores() -> int:
    """Runnable threads of other processes (the running count of /proc/loadavg less this process's runnable
    threads), 0 where it cannot be read. This process's own threads do not count: its thread team busy-waits for
    a few milliseconds after each region, and back-to-back calls would otherwise see it as load."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    if running <= 1:  # only the caller: no need to look at this process's threads
        return 0
    return max(0, running - _own_runnable_threads())


def _own_runnable_threads() -> int:
    """This process's threads in state R (running or runnable), at least 1 (the caller)."""
    count = 0
    with contextlib.suppress(OSError):
        for task in os.scandir("/proc/self/task"):
            with contextlib.suppress(OSError, IndexError):
                stat = Path(task.path, "stat").read_text()
                count += stat[stat.rindex(")") + 2] == "R"
    return max(1, count)


def _threads_for_call() -> int:
    """get_num_threads(), lowered to the cores that neither other processes' runnable threads nor this process's
    running slidesim calls (on other threads, e.g. Dask's) hold; at least 1."""
    wanted = get_num_threads()
    free = min(available_cores(), _online_cpus() - _busy_cores()) - _claimed
    return max(1, min(wanted, free))


def current_count() -> int:
    """The threads of the call running on this thread (get_num_threads() outside one)."""
    count = getattr(_local, "count", None)
    return count if count is not None else get_num_threads()


def numba_threads() -> int:
    """Set numba's count for kernels launched from this thread to the call's count (numba keeps it per thread)
    and return it; numba must be importable.

    numba starts its threads on first use, and its OpenMP layer then sets the calling thread's OpenMP count (which
    torch's regions on this thread follow) to numba's own default: the call's count is put back at once, and the
    caller's when the call returns (:func:`call_scope`).
    """
    import numba

    count = min(current_count(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != count:
        numba.set_num_threads(count)
    if getattr(_local, "depth", 0) and torch.get_num_threads() != _local.count:
        torch.set_num_threads(_local.count)
    return count


@contextlib.contextmanager
def call_scope() -> Iterator[int]:
    """Run a slidesim call with its thread count (yielded): torch's count on this thread is set for the call and
    put back afterwards; nested calls keep the outer call's count."""
    global _claimed
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield _local.count
        finally:
            _local.depth -= 1
        return
    with _claims:
        count = _threads_for_call()
        _claimed += count
    before = torch.get_num_threads()
    _local.depth, _local.count = 1, count
    if before != count:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        _local.depth, _local.count = 0, None
        with _claims:
            _claimed -= count
        # unconditionally: numba's start-up may have changed this thread's OpenMP count inside the call
        torch.set_num_threads(before)


def for_calls(function: _Function) -> _Function:
    """Decorate a public operation so that it runs in :func:`call_scope`."""

    @functools.wraps(function)
    def scoped(*args, **kwargs):
        keep_freed_memory()  # once per process: temporaries reuse the pages the last call freed (slidesim._heap)
        with call_scope():
            return function(*args, **kwargs)

    return scoped  # type: ignore[return-value]
