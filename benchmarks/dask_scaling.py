"""slidesim.dask on a dask.distributed cluster of this machine: a 12000×12000 uint8 zarr image on disk matched
against 8 templates, with 1 and 2 worker processes limited to 3 GB each, and the per-chunk overhead.

Run: python benchmarks/dask_scaling.py [--size 12000] [--chunk 2000]
     (writes the Dask section of BENCHMARKS.md; several minutes on 2 cores)

Each worker runs one thread with torch, OpenMP, numba and slidesim limited to one thread, so that 1 and 2 workers
compare processes rather than threads fighting over the cores. Time: wall time of slidesim.dask.match (peaks and
sub-pixel refinement included) after a warm-up call on a small array (numba's cache, imports), twice: the first
call on the fresh workers, and the same call again (the steady state). Memory: the peak resident memory of each
worker process (ru_maxrss), which the 3 GB limit applies to.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from real_images import cpu_model

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
START, END = "<!-- dask:start -->", "<!-- dask:end -->"
# slidesim sizes its calls to the free cores (2 on an idle 2-core machine) unless told: one thread per worker
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "SLIDESIM_NUM_THREADS": "1"}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def scene(path: Path, size: int, chunk: int) -> tuple[object, np.ndarray]:
    """A textured uint8 scene written to zarr in chunks, and 8 templates cut from it (32×32)."""
    import dask.array as da

    rng = np.random.default_rng(0)
    noise = da.random.default_rng(1).integers(0, 256, (size, size), chunks=chunk, dtype=np.uint8)
    noise.to_zarr(str(path), overwrite=True)
    image = da.from_zarr(str(path))
    corners = rng.integers(0, size - 32, (8, 2))
    templates = np.stack([np.asarray(image[y : y + 32, x : x + 32]) for y, x in corners])[:, None]
    return image, templates


def run(
    workers: int, image, templates: np.ndarray, memory: str, chunk: int
) -> tuple[float, float, list[int], object, float]:
    """(seconds of the first slidesim.dask.match on fresh workers, seconds of the same call again, each worker's
    peak resident bytes, the matches, seconds of one chunk's in-memory match run inside a worker process).

    The first call pays each worker process's warm-up on full-size chunks (its first two chunks took 1.0-1.3 s
    against 0.4-0.5 s for the rest: memory the process has not mapped yet, plans for the transform sizes); the
    second is the steady state that the warm in-memory time is compared with."""
    import dask
    import distributed

    import slidesim.dask

    # distributed's nannies give workers MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's adaptive mmap
    # threshold: every large temporary is then a fresh page-aligned mapping, and FFTs between two of them run
    # about twice as slow (page faults, and 4 KiB aliasing of input and output); see the README's Dask section
    spawn_environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    spawn_environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_environ}),
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory,
            dashboard_address=None,
            env=ONE_THREAD,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(_one_thread)
        small = image[None, None, :512, :512]
        slidesim.dask.match(small, templates, k=1)  # warm-up: imports and numba's cache on every worker
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            found = slidesim.dask.match(image[None, None], templates, k=1)
            seconds.append(time.perf_counter() - start)
        peaks = list(client.run(_peak_rss).values())
        in_worker = client.submit(in_memory_chunk, image, templates, chunk, pure=False).result()
    return seconds[0], seconds[1], peaks, found, in_worker


def in_memory_chunk(image, templates: np.ndarray, chunk: int) -> float:
    """Best of 3 wall times of the in-memory `slidesim.match` of one chunk-sized piece of the image (one thread,
    as a worker runs it): the work a worker does per chunk, without dask."""
    import slidesim

    piece = np.asarray(image[:chunk, :chunk])[None, None]
    with slidesim.thread_limit(1):  # as the worker's tasks run (SLIDESIM_NUM_THREADS=1)
        slidesim.match(piece, templates, k=1)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            slidesim.match(piece, templates, k=1)
            times.append(time.perf_counter() - start)
    return min(times)


def chunk_overhead() -> tuple[float, float, int]:
    """(seconds in memory, seconds through slidesim.dask, chunks) for a problem whose arithmetic is negligible
    (sad of a 3×3 template on 512² in 64² chunks, dask's synchronous scheduler): the difference per chunk is
    the cost of a chunk (task, halo reads, one in-memory call)."""
    import dask
    import dask.array as da

    import slidesim
    import slidesim.dask

    image = np.random.default_rng(2).random((512, 512), dtype=np.float32)
    template = image[100:103, 200:203].copy()
    lazy = da.from_array(image, chunks=64)

    def best(call) -> float:
        call()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    with dask.config.set(scheduler="synchronous"):
        whole = best(lambda: slidesim.similarity(image, template, metric="sad"))
        split = best(lambda: slidesim.dask.similarity(lazy, template, metric="sad").compute())
    return whole, split, lazy.npartitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=12000)
    parser.add_argument("--chunk", type=int, default=2000)
    parser.add_argument("--memory", default="3GB", help="memory limit per worker")
    args = parser.parse_args()
    os.environ.update(ONE_THREAD)
    import dask
    import distributed
    import torch
    import zarr

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        image, templates = scene(Path(folder) / "scene.zarr", args.size, args.chunk)
        one_chunk = in_memory_chunk(image, templates, args.chunk)
        chunks = image.npartitions
        rows = []
        times = {}
        in_workers = []
        for workers in (1, 2):
            first, seconds, peaks, found, in_worker = run(workers, image, templates, args.memory, args.chunk)
            in_workers.append(in_worker)
            times[workers] = seconds
            # the stricter of the two in-memory times: this process's, or the same call inside a worker
            ideal = min(one_chunk, in_worker) * chunks / workers
            rows.append(
                f"| {workers} | {seconds:.1f} s (first call {first:.1f} s) | {ideal:.1f} s | {seconds / ideal:.2f} "
                f"({first / ideal:.2f}) | "
                f"{', '.join(f'{p / 2**30:.2f} GiB' for p in peaks)} | "
                f"{len(found)} matches, scores {float(np.min(found.score)):.4f}–{float(np.max(found.score)):.4f} |"
            )
            print(rows[-1], flush=True)
        whole, split, parts = chunk_overhead()
    text = (
        f"{START}\nMeasured {datetime.date.today().isoformat()} by `python benchmarks/dask_scaling.py` on "
        f"{cpu_model()}, {os.cpu_count()} cores (Python {platform.python_version()}, torch {torch.__version__}, "
        f"dask {dask.__version__}, distributed {distributed.__version__}, zarr {zarr.__version__}).\n\n"
        f"A {args.size}×{args.size} uint8 zarr image on disk in {args.chunk}² chunks, 8 templates of 32×32 (zncc, "
        f"k = 1, sub-pixel refinement), `slidesim.dask.match` on a LocalCluster of worker processes with one "
        f"thread each and a {args.memory} memory limit, started without distributed's MALLOC_TRIM_THRESHOLD_ "
        f"(see the README's Dask section). The in-memory cost per worker is one chunk's in-memory "
        f"`slidesim.match` on one thread (the faster of this process's {one_chunk:.2f} s and the same call's time "
        f"inside a worker process: {' and '.join(f'{t:.2f} s' for t in in_workers)} with 1 and 2 workers) times the "
        f"{chunks} chunks, divided by the workers; the target is at most 1.5 times it, with each worker's peak "
        "resident memory under 1 GiB. Time: the second of two calls on the same workers, as the in-memory time is "
        "a warm one (the first call, in brackets, also pays each worker process's warm-up: its first two "
        "full-size chunks take 1.0-1.3 s against 0.4-0.5 s for the rest):\n\n"
        "| workers | time | in-memory cost per worker | ratio (first call) | peak resident memory per worker | result "
        "|\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Speed-up from 1 to 2 workers: {times[1] / times[2]:.2f}×. Cost of a chunk (sad of a 3×3 template on "
        f"512², where the arithmetic is negligible; synchronous scheduler, one thread): in memory "
        f"{whole * 1e3:.1f} ms, through slidesim.dask in {parts} chunks of 64² {split * 1e3:.0f} ms: "
        f"{(split - whole) / parts * 1e3:.2f} ms per chunk (task, halo reads, one in-memory call).\n{END}"
    )
    report = REPORT.read_text()
    REPORT.write_text(re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: text, report, flags=re.S))
    print(text)


if __name__ == "__main__":
    main()
