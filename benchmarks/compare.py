"""slidesim against its peers, side by side in one process, on the targets of the CPU-speed work.

Run: python benchmarks/compare.py [--quick]
     (rewrites the speed section of BENCHMARKS.md and benchmarks/compare.png; about ten minutes on 2 cores)

Tools of a case run in interleaved rounds (tool A, tool B, tool A, ...) and each keeps its best round, so a slow
spell of a shared machine hits all of them alike. Peak memory is measured on one more call per tool: the resident
high-water mark above the memory held just before it (Linux VmHWM, reset through /proc/self/clear_refs), with
MALLOC_MMAP_THRESHOLD_ set so that freed blocks leave the process.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import slidesim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import abs_diff_ceiling

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
PLOT = Path(__file__).resolve().parent / "compare.png"
START, END = "<!-- compare:start -->", "<!-- compare:end -->"


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory of one call above what the process held before it, in MiB (nan off Linux)."""
    try:
        base = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    result = fn()
    peak = _status("VmHWM") - base
    del result
    return peak / 2**20


@dataclass
class Timed:
    ms: float
    mib: float


def race(tools: dict[str, Callable[[], object]], rounds: int = 5, slow: frozenset[str] = frozenset()) -> dict:
    """Best time (ms) and peak memory (MiB) per tool; tools in ``slow`` run one round only."""
    best = {name: float("inf") for name in tools}
    for name, fn in tools.items():  # warm-up: compilation, FFT plans, caches
        if name not in slow:
            fn()
    for round_ in range(rounds):
        for name, fn in tools.items():
            if name in slow and round_ > 0:
                continue
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return {name: Timed(best[name], peak_mib(fn) if name not in slow else float("nan")) for name, fn in tools.items()}


def unfold_l1(image: torch.Tensor, template: torch.Tensor, stride: int) -> torch.Tensor:
    """The unfold recipe of the issue tracker, as users write it."""
    h, w = template.shape[-2:]
    windows = image.unfold(-2, h, stride).unfold(-2, w, stride).movedim(1, -3)
    return 1 - windows.sub(template).abs().mean((-3, -2, -1))


def loop_l1(image: np.ndarray, template: np.ndarray, stride: int) -> np.ndarray:
    """The per-window Python loop."""
    _, H, W = image.shape
    _, h, w = template.shape
    out = np.empty(((H - h) // stride + 1, (W - w) // stride + 1), np.float32)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            window = image[:, y * stride : y * stride + h, x * stride : x * stride + w]
            out[y, x] = 1 - np.abs(window - template).mean()
    return out


def grouped_conv_zncc_cross(image: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The grouped-conv2d recipe: the image repeated once per kernel (the cross term only)."""
    T = bank.shape[0]
    return F.conv2d(image.repeat(1, T, 1, 1), bank, groups=T)


def fmt(t: Timed) -> str:
    memory = "" if t.mib != t.mib else f", {t.mib:.0f} MiB"
    return f"{t.ms:.2f} ms{memory}" if t.ms < 10 else f"{t.ms:.0f} ms{memory}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no plot")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # restart with freed blocks returned to the system
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))

    import cv2
    import scipy
    import scipy.signal
    import skimage
    from skimage.feature import match_template

    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    rounds = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    rows: list[str] = []

    def row(case: str, ours: str, peers: str, ratio: str, note: str = "") -> None:
        rows.append(f"| {case} | {ours} | {peers} | {ratio} | {note} |")
        print(rows[-1], flush=True)

    # l1_similarity, one 32x32 template on 1x3x512x512
    image = torch.from_numpy(rng.random((1, 3, 512, 512), dtype=np.float32))
    template = image[:, :, 100:132, 200:232].clone()
    got = race(
        {
            "slidesim": lambda: slidesim.similarity(image, template, metric="l1_similarity"),
            "unfold": lambda: unfold_l1(image, template, 1),
        },
        rounds,
        slow=frozenset({"unfold"}),
    )
    rate = 3 * 32 * 32 * 481 * 481 / (got["slidesim"].ms / 1e3) / 1e9
    ceiling = abs_diff_ceiling() / 1e9
    row(
        "l1_similarity 1×3×512², one 32²",
        fmt(got["slidesim"]),
        f"unfold recipe {fmt(got['unfold'])}",
        f"unfold / slidesim = {got['unfold'].ms / got['slidesim'].ms:.0f}",
        f"{rate:.1f} G abs-diffs/s: {rate / ceiling:.0%} of this machine's abs-diff ceiling ({ceiling:.0f} G/s, "
        "benchmarks/ceiling.py)",
    )

    # the small case: 1x3x101x101, one 10x9 template, stride 2
    small = torch.from_numpy(rng.random((1, 3, 101, 101), dtype=np.float32))
    small_t = small[:, :, 10:20, 30:39].clone()
    small_np, small_tnp = small[0].numpy(), small_t[0].numpy()
    got = race(
        {
            "slidesim": lambda: slidesim.similarity(small, small_t, metric="l1_similarity", stride=2),
            "unfold": lambda: unfold_l1(small, small_t, 2),
            "loop": lambda: loop_l1(small_np, small_tnp, 2),
        },
        rounds * 10,
        slow=frozenset({"loop"}),
    )
    row(
        "l1_similarity 1×3×101², 10×9, stride 2",
        fmt(got["slidesim"]),
        f"unfold recipe {fmt(got['unfold'])}; per-window loop {got['loop'].ms:.0f} ms",
        f"unfold / slidesim = {got['unfold'].ms / got['slidesim'].ms:.2f}",
    )

    # zncc against OpenCV and scikit-image
    for channels, size, tsize in [(1, 1024, 32), (3, 512, 32), (1, 2048, 64)]:
        img = rng.random((1, channels, size, size), dtype=np.float32)
        tpl = img[:, :, 100 : 100 + tsize, 50 : 50 + tsize].copy()
        hwc = np.ascontiguousarray(img[0].transpose(1, 2, 0))
        thwc = np.ascontiguousarray(tpl[0].transpose(1, 2, 0))
        timg, ttpl = torch.from_numpy(img), torch.from_numpy(tpl)
        engine = slidesim.plan(timg, ttpl).engine
        # scikit-image matches a 3-D template against a 3-D image: with equal depths that is the joint score
        sk_image, sk_template = (hwc, thwc) if channels > 1 else (img[0, 0], tpl[0, 0])
        got = race(
            {
                "slidesim": lambda timg=timg, ttpl=ttpl: slidesim.similarity(timg, ttpl),
                "cv2": lambda hwc=hwc, thwc=thwc: cv2.matchTemplate(hwc, thwc, cv2.TM_CCOEFF_NORMED),
                "skimage": lambda a=sk_image, b=sk_template: match_template(a, b),
            },
            rounds,
        )
        sk = got["skimage"]
        ours = got["slidesim"]
        row(
            f"zncc {channels}×{size}², one {tsize}²",
            f"{fmt(ours)} ({engine})",
            f"cv2 {fmt(got['cv2'])}; skimage {fmt(sk)}",
            f"cv2 / slidesim = {got['cv2'].ms / ours.ms:.2f}; skimage / slidesim = {sk.ms / ours.ms:.1f}",
        )

    # banks of 64 templates 16x16 on 1x1x512x512
    img = rng.random((1, 1, 512, 512), dtype=np.float32)
    bank = np.stack([img[0, :, y : y + 16, y : y + 16] for y in range(0, 64 * 7, 7)])
    timg, tbank = torch.from_numpy(img), torch.from_numpy(bank)
    for metric, method in (("zncc", cv2.TM_CCOEFF_NORMED), ("ssd", cv2.TM_SQDIFF)):
        engine = slidesim.plan(timg, tbank, metric=metric).engine
        got = race(
            {
                "slidesim": lambda metric=metric: slidesim.similarity(timg, tbank, metric=metric),
                "cv2": lambda method=method: [cv2.matchTemplate(img[0, 0], t[0], method) for t in bank],
                "grouped": lambda: grouped_conv_zncc_cross(timg, tbank),
            },
            rounds,
        )
        ours = got["slidesim"]
        row(
            f"{metric}, 64 templates 16² on 512²",
            f"{fmt(ours)} ({engine})",
            f"cv2 loop {fmt(got['cv2'])}; grouped conv2d, image repeated (cross term only) {fmt(got['grouped'])}",
            f"cv2 loop / slidesim = {got['cv2'].ms / ours.ms:.2f}",
            "ssd is exact (Σ (I − T)²); cv2 expands it" if metric == "ssd" else "",
        )

    # masked zncc: OpenCV's masked path against slidesim
    img = rng.random((512, 512), dtype=np.float32)
    tpl = img[40:72, 60:92].copy()
    mask = (rng.random((32, 32)) > 0.3).astype(np.float32)
    timg, ttpl, tmask = torch.from_numpy(img), torch.from_numpy(tpl), torch.from_numpy(mask)
    engine = slidesim.plan(timg, ttpl, mask=tmask).engine
    got = race(
        {
            "slidesim": lambda: slidesim.similarity(timg, ttpl, mask=tmask),
            "cv2": lambda: cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED, mask=mask),
            "cv2 unmasked": lambda: cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED),
        },
        rounds,
    )
    row(
        "masked zncc 512², one 32²",
        f"{fmt(got['slidesim'])} ({engine})",
        f"cv2 masked {fmt(got['cv2'])} (unmasked {fmt(got['cv2 unmasked'])})",
        f"cv2 masked / slidesim = {got['cv2'].ms / got['slidesim'].ms:.2f}",
    )

    # ccorr against scipy.signal.correlate
    img = rng.random((1024, 1024), dtype=np.float32)
    tpl = img[:32, :32].copy()
    got = race(
        {
            "slidesim": lambda: slidesim.similarity(torch.from_numpy(img), torch.from_numpy(tpl), metric="ccorr"),
            "scipy": lambda: scipy.signal.correlate(img, tpl, mode="valid", method="fft"),
        },
        rounds,
    )
    row(
        "ccorr 1024², one 32²",
        fmt(got["slidesim"]),
        f"scipy.signal.correlate (fft) {fmt(got['scipy'])}",
        f"scipy / slidesim = {got['scipy'].ms / got['slidesim'].ms:.2f}",
    )

    code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    torch_import = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    code = "import time; t = time.perf_counter(); import slidesim; print(time.perf_counter() - t)"
    imported = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    code = "import time; t = time.perf_counter(); import slidesim; slidesim.similarity; print(time.perf_counter() - t)"
    with_torch = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    code = (
        "import time, torch, slidesim; x = torch.rand(1, 3, 64, 64); t = time.perf_counter(); "
        "slidesim.similarity(x, x[:, :, :8, :8], metric='sad'); print(time.perf_counter() - t)"
    )
    first = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    row(
        "import slidesim; first use of slidesim.similarity (loads torch); first fused call in a new process with "
        "torch loaded (warm cache)",
        f"{imported:.2f} s; {with_torch:.2f} s; {first:.2f} s",
        f"import torch alone {torch_import:.2f} s",
        "",
    )

    curves = {} if args.quick else plot_curves(rounds, cv2, match_template)
    versions = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} cores), 2 threads for every "
        f"tool, Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, OpenCV "
        f"{cv2.__version__}, scikit-image {skimage.__version__}, scipy {scipy.__version__}, slidesim "
        f"{slidesim.__version__}."
    )
    section = "\n".join(
        [
            START,
            versions,
            "",
            "| case | slidesim (engine auto picked) | peers | ratio | note |",
            "|---|---|---|---|---|",
            *rows,
            "",
            *(["![time against template size and bank size](benchmarks/compare.png)", ""] if curves else []),
            END,
        ]
    )
    text = REPORT.read_text()
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text += "\n" + section + "\n"
    REPORT.write_text(text)
    print(f"updated {REPORT}")


def plot_curves(rounds: int, cv2, match_template) -> dict:
    """zncc time against template size (one template on 512²) and against bank size (16² templates on 512²)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(1)
    img = rng.random((512, 512), dtype=np.float32)
    timg = torch.from_numpy(img)
    sizes = [4, 8, 16, 32, 64, 128]
    by_size: dict[str, list[float]] = {"slidesim": [], "cv2": [], "skimage": [], "unfold": []}
    for s in sizes:
        tpl = img[:s, :s].copy()
        ttpl = torch.from_numpy(tpl)
        tools = {
            "slidesim": lambda ttpl=ttpl: slidesim.similarity(timg, ttpl),
            "cv2": lambda tpl=tpl: cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED),
            "skimage": lambda tpl=tpl: match_template(img, tpl),
        }
        if s <= 32:
            tools["unfold"] = lambda ttpl=ttpl: unfold_l1(timg[None, None], ttpl[None, None], 1)
        got = race(tools, max(2, rounds // 2), slow=frozenset({"unfold"}))
        for name in by_size:
            by_size[name].append(got[name].ms if name in got else float("nan"))
    banks = [1, 4, 16, 64, 128]
    by_bank: dict[str, list[float]] = {"slidesim": [], "cv2 loop": [], "grouped conv2d": []}
    for n in banks:
        bank = np.stack([img[None, y : y + 16, y : y + 16] for y in range(0, 3 * n, 3)])
        tbank = torch.from_numpy(bank)
        got = race(
            {
                "slidesim": lambda tbank=tbank: slidesim.similarity(timg[None, None], tbank),
                "cv2 loop": lambda bank=bank: [cv2.matchTemplate(img, t[0], cv2.TM_CCOEFF_NORMED) for t in bank],
                "grouped conv2d": lambda tbank=tbank: grouped_conv_zncc_cross(timg[None, None], tbank),
            },
            max(2, rounds // 2),
        )
        for name in by_bank:
            by_bank[name].append(got[name].ms)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, values in by_size.items():
        label = "unfold recipe (l1)" if name == "unfold" else name
        left.plot(sizes, values, marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="template size (pixels per side)", ylabel="time (ms)")
    left.set_title("zncc, one template on 512², float32")
    left.set_xticks(sizes, [str(s) for s in sizes])
    for name, values in by_bank.items():
        label = "grouped conv2d, image repeated (cross term only)" if name == "grouped conv2d" else name
        right.plot(banks, values, marker="o", label=label)
    right.set(xscale="log", yscale="log", xlabel="templates in the bank", ylabel="time (ms)")
    right.set_title("zncc, 16² templates on 512², float32")
    right.set_xticks(banks, [str(b) for b in banks])
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")
    return {"size": by_size, "bank": by_bank}


if __name__ == "__main__":
    main()
