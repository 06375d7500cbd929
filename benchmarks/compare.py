"""slidesim against its peers, side by side in one process, on the targets of the CPU-speed work.

Run: python benchmarks/compare.py [--quick]
     (rewrites the speed section of BENCHMARKS.md and benchmarks/compare.png; about fifteen minutes on 2 cores)

Time: the tools of a case run in interleaved rounds (tool A, tool B, tool A, ...) in this process and each keeps
its best round, so a slow spell of a shared machine hits all of them alike. Memory: each tool's call runs once
more in a fresh process (after one warm-up call there) and reports its peak resident memory above what the
process held before it (tests/memory_probe.py: VmHWM reset through /proc/self/clear_refs, freed blocks returned
to the system), so neither the allocator's caches nor the other tools distort it.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import slidesim

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))
from ceiling import abs_diff_ceiling, squared_diff_ceiling  # noqa: E402

from tests.memory_probe import available, peak_bytes  # noqa: E402

REPORT = ROOT / "BENCHMARKS.md"
PLOT = HERE / "compare.png"
START, END = "<!-- compare:start -->", "<!-- compare:end -->"
PRELUDE = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import numpy as np, torch, cv2, scipy.signal, slidesim
import torch.nn.functional as F
from skimage.feature import match_template
from compare import unfold_l1, loop_l1, grouped_conv_cross, cv2_rotation_search
torch.set_num_threads(2)
cv2.setNumThreads(2)
rng = np.random.default_rng(0)
"""


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


def grouped_conv_cross(image: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The grouped-conv2d recipe: the image repeated once per kernel (the cross term only)."""
    T = bank.shape[0]
    return F.conv2d(image.repeat(1, T, 1, 1), bank, groups=T)


def cv2_rotation_search(image: np.ndarray, template: np.ndarray, angles, masked: bool) -> np.ndarray:
    """The obvious rotation search: turn the template with cv2.warpAffine onto a canvas that holds every angle,
    run cv2.matchTemplate per angle (masked by the turned footprint, or unmasked with black corners) and keep the
    best score per position."""
    import cv2

    h, w = template.shape
    side = int(np.ceil(np.hypot(h, w))) | 1
    shift = np.array([[0, 0, (side - w) / 2], [0, 0, (side - h) / 2]])
    canvas_t = cv2.warpAffine(template, np.eye(2, 3) + shift, (side, side))
    canvas_m = cv2.warpAffine(np.ones_like(template), np.eye(2, 3) + shift, (side, side))
    best = None
    for angle in angles:
        turn = cv2.getRotationMatrix2D(((side - 1) / 2, (side - 1) / 2), angle, 1.0)
        turned = cv2.warpAffine(canvas_t, turn, (side, side), flags=cv2.INTER_LINEAR)
        if masked:
            footprint = (cv2.warpAffine(canvas_m, turn, (side, side)) > 0.999).astype(np.float32)
            scores = cv2.matchTemplate(image, turned, cv2.TM_CCOEFF_NORMED, mask=footprint)
        else:
            scores = cv2.matchTemplate(image, turned, cv2.TM_CCOEFF_NORMED)
        best = scores if best is None else np.maximum(best, scores)
    return best


@dataclass
class Timed:
    ms: float
    mib: float


def race(setup: str, tools: dict[str, str], rounds: int, slow: tuple[str, ...] = (), memory: bool = True) -> dict:
    """Best time (ms) and peak memory (MiB) of each tool's call expression after ``setup``."""
    namespace: dict = {}
    exec(PRELUDE + setup, namespace)
    calls = {name: eval(f"lambda: {expr}", namespace) for name, expr in tools.items()}
    best = {name: float("inf") for name in tools}
    for name, fn in calls.items():  # warm-up: compilation, FFT plans, caches
        if name not in slow:
            fn()
    for round_ in range(rounds):
        for name, fn in calls.items():
            if name in slow and round_ > 0:
                continue
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    del namespace, calls
    result = {}
    for name, expr in tools.items():
        mib = float("nan")
        if memory and available():
            warm = "" if name in slow else expr
            # the probe reports a tensor's size: wrap calls that return numpy arrays or lists (the peak still
            # includes their result, which exists until the tuple is indexed)
            probe = f"({expr}, torch.zeros(0))[1]"
            mib = peak_bytes(PRELUDE + setup, probe, warm)["peak"] / 2**20
        result[name] = Timed(best[name], mib)
    return result


def fmt(t: Timed) -> str:
    memory = "" if t.mib != t.mib else f", {t.mib:.0f} MiB"
    return f"{t.ms:.2f} ms{memory}" if t.ms < 10 else f"{t.ms:.0f} ms{memory}"


def engine_of(setup: str, call: str) -> str:
    namespace: dict = {}
    exec(PRELUDE + setup, namespace)
    return eval(call.replace("slidesim.similarity(", "slidesim.plan(", 1), namespace).engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no memory, no plot")
    args = parser.parse_args()
    import cv2
    import scipy
    import skimage

    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    rounds = 3 if args.quick else 7
    memory = not args.quick
    rows: list[str] = []

    def row(case: str, ours: str, peers: str, ratio: str, note: str = "") -> None:
        rows.append(f"| {case} | {ours} | {peers} | {ratio} | {note} |")
        print(rows[-1], flush=True)

    # l1_similarity, one 32x32 template on 1x3x512x512
    setup = """
image = torch.from_numpy(rng.random((1, 3, 512, 512), dtype=np.float32))
template = image[:, :, 100:132, 200:232].clone()
"""
    call = "slidesim.similarity(image, template, metric='l1_similarity')"
    before = abs_diff_ceiling()  # measured around the race and the best kept, like every other time here
    got = race(setup, {"slidesim": call, "unfold": "unfold_l1(image, template, 1)"}, rounds, ("unfold",), memory)
    rate = 3 * 32 * 32 * 481 * 481 / (got["slidesim"].ms / 1e3) / 1e9
    ceiling = max(before, abs_diff_ceiling()) / 1e9
    row(
        "l1_similarity 1×3×512², one 32²",
        f"{fmt(got['slidesim'])} ({engine_of(setup, call)})",
        f"unfold recipe {fmt(got['unfold'])}",
        f"unfold / slidesim = {got['unfold'].ms / got['slidesim'].ms:.0f}",
        f"{rate:.1f} G abs-diffs/s: {rate / ceiling:.0%} of this machine's abs-diff ceiling ({ceiling:.0f} G/s, "
        "benchmarks/ceiling.py)",
    )

    # the small case: 1x3x101x101, one 10x9 template, stride 2
    setup = """
small = torch.from_numpy(rng.random((1, 3, 101, 101), dtype=np.float32))
small_t = small[:, :, 10:20, 30:39].clone()
small_np, small_tnp = small[0].numpy(), small_t[0].numpy()
"""
    call = "slidesim.similarity(small, small_t, metric='l1_similarity', stride=2)"
    tools = {"slidesim": call, "unfold": "unfold_l1(small, small_t, 2)", "loop": "loop_l1(small_np, small_tnp, 2)"}
    got = race(setup, tools, rounds * 20, ("loop",), memory)
    row(
        "l1_similarity 1×3×101², 10×9, stride 2",
        f"{fmt(got['slidesim'])} ({engine_of(setup, call)})",
        f"unfold recipe {fmt(got['unfold'])}; per-window loop {got['loop'].ms:.0f} ms",
        f"unfold / slidesim = {got['unfold'].ms / got['slidesim'].ms:.2f}",
    )

    # zncc against OpenCV and scikit-image (a 3-D template on a 3-D image: the joint score for equal depths)
    for channels, size, tsize in [(1, 1024, 32), (3, 512, 32), (1, 2048, 64)]:
        setup = f"""
img = rng.random((1, {channels}, {size}, {size}), dtype=np.float32)
tpl = img[:, :, 100 : 100 + {tsize}, 50 : 50 + {tsize}].copy()
hwc = np.ascontiguousarray(img[0].transpose(1, 2, 0))
thwc = np.ascontiguousarray(tpl[0].transpose(1, 2, 0))
sk_image, sk_template = (hwc, thwc) if {channels} > 1 else (img[0, 0], tpl[0, 0])
timg, ttpl = torch.from_numpy(img), torch.from_numpy(tpl)
"""
        call = "slidesim.similarity(timg, ttpl)"
        tools = {
            "slidesim": call,
            "cv2": "cv2.matchTemplate(hwc, thwc, cv2.TM_CCOEFF_NORMED)",
            "skimage": "match_template(sk_image, sk_template)",
        }
        got = race(setup, tools, rounds, (), memory)
        ours, sk = got["slidesim"], got["skimage"]
        row(
            f"zncc {channels}×{size}², one {tsize}²",
            f"{fmt(ours)} ({engine_of(setup, call)})",
            f"cv2 {fmt(got['cv2'])}; skimage {fmt(sk)}",
            f"cv2 / slidesim = {got['cv2'].ms / ours.ms:.2f}; skimage / slidesim = {sk.ms / ours.ms:.1f}",
        )

    # banks of 64 templates 16x16 on 1x1x512x512
    setup = """
img = rng.random((1, 1, 512, 512), dtype=np.float32)
bank = np.stack([img[0, :, y : y + 16, y : y + 16] for y in range(0, 64 * 7, 7)])
timg, tbank = torch.from_numpy(img), torch.from_numpy(bank)
"""
    for metric, method in (("zncc", "TM_CCOEFF_NORMED"), ("ssd", "TM_SQDIFF")):
        call = f"slidesim.similarity(timg, tbank, metric={metric!r})"
        tools = {
            "slidesim": call,
            "cv2": f"[cv2.matchTemplate(img[0, 0], t[0], cv2.{method}) for t in bank]",
            "grouped": "grouped_conv_cross(timg, tbank)",
        }
        before = squared_diff_ceiling() if metric == "ssd" else 0.0
        got = race(setup, tools, rounds, (), memory)
        ours = got["slidesim"]
        note = ""
        if metric == "ssd":
            rate = 64 * 16 * 16 * 497 * 497 / (ours.ms / 1e3) / 1e9
            ceiling = max(before, squared_diff_ceiling()) / 1e9
            note = (
                f"exact Σ (I − T)² (OpenCV expands it into correlations): {rate:.1f} G squared differences/s, "
                f"{rate / ceiling:.0%} of this machine's float32 multiply-add rate ({ceiling:.0f} G/s, torch.mm), "
                "one multiply-add per squared difference"
            )
        row(
            f"{metric}, 64 templates 16² on 512²",
            f"{fmt(ours)} ({engine_of(setup, call)})",
            f"cv2 loop {fmt(got['cv2'])}; grouped conv2d, image repeated (cross term only) {fmt(got['grouped'])}",
            f"cv2 loop / slidesim = {got['cv2'].ms / ours.ms:.2f}",
            note,
        )

    # masked zncc and ssd: OpenCV's masked paths against slidesim
    setup = """
img = rng.random((512, 512), dtype=np.float32)
tpl = img[40:72, 60:92].copy()
mask = (rng.random((32, 32)) > 0.3).astype(np.float32)
timg, ttpl, tmask = torch.from_numpy(img), torch.from_numpy(tpl), torch.from_numpy(mask)
"""
    for metric, method in (("zncc", "TM_CCOEFF_NORMED"), ("ssd", "TM_SQDIFF")):
        call = f"slidesim.similarity(timg, ttpl, metric={metric!r}, mask=tmask)"
        tools = {
            "slidesim": call,
            "slidesim unmasked": f"slidesim.similarity(timg, ttpl, metric={metric!r})",
            "cv2": f"cv2.matchTemplate(img, tpl, cv2.{method}, mask=mask)",
            "cv2 unmasked": f"cv2.matchTemplate(img, tpl, cv2.{method})",
        }
        got = race(setup, tools, rounds, (), memory)
        ours, theirs = got["slidesim"], got["cv2"]
        row(
            f"masked {metric} 512², one 32² (70% of the taps)",
            f"{fmt(ours)} ({engine_of(setup, call)}); unmasked {fmt(got['slidesim unmasked'])}",
            f"cv2 masked {fmt(theirs)}; unmasked {fmt(got['cv2 unmasked'])}",
            f"cv2 masked / slidesim = {theirs.ms / ours.ms:.2f}",
            f"masked / unmasked: slidesim {ours.ms / got['slidesim unmasked'].ms:.1f}×, "
            f"OpenCV {theirs.ms / got['cv2 unmasked'].ms:.1f}×",
        )

    # rotation search: 72 rotations of a 64x64 template on 1024x1024
    setup = """
from skimage import data
from skimage.transform import resize
photo = resize(data.camera(), (1024, 1024)).astype(np.float32)
tpl = photo[400:464, 500:564].copy()
angles = np.arange(0, 360, 5.0)
"""
    call = "slidesim.match(photo, tpl, rotations=angles)"
    tools = {
        "slidesim": call,
        "cv2": "cv2_rotation_search(photo, tpl, angles, masked=False)",
        "cv2 masked": "cv2_rotation_search(photo, tpl, angles, masked=True)",
    }
    got = race(setup, tools, max(2, rounds // 3), (), memory)
    ours = got["slidesim"]
    row(
        "rotation search: 72 rotations (every 5°) of a 64² template on 1024², zncc",
        f"{fmt(ours)} (match: masked rotations, best-of-bank, peak and sub-pixel refinement)",
        f"cv2.warpAffine + cv2.matchTemplate per angle: unmasked (black corners) {fmt(got['cv2'])}; "
        f"masked {fmt(got['cv2 masked'])}",
        f"cv2 unmasked / slidesim = {got['cv2'].ms / ours.ms:.2f}; cv2 masked / slidesim = "
        f"{got['cv2 masked'].ms / ours.ms:.2f}",
        "the peers return the best map only",
    )

    # ccorr against scipy.signal.correlate
    setup = """
img = rng.random((1024, 1024), dtype=np.float32)
tpl = img[:32, :32].copy()
timg, ttpl = torch.from_numpy(img), torch.from_numpy(tpl)
"""
    call = "slidesim.similarity(timg, ttpl, metric='ccorr')"
    tools = {"slidesim": call, "scipy": "scipy.signal.correlate(img, tpl, mode='valid', method='fft')"}
    got = race(setup, tools, rounds, (), memory)
    row(
        "ccorr 1024², one 32²",
        f"{fmt(got['slidesim'])} ({engine_of(setup, call)})",
        f"scipy.signal.correlate (fft) {fmt(got['scipy'])}",
        f"scipy / slidesim = {got['scipy'].ms / got['slidesim'].ms:.2f}",
    )

    def seconds(code: str) -> float:
        return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)

    torch_import = seconds("import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)")
    imported = seconds("import time; t = time.perf_counter(); import slidesim; print(time.perf_counter() - t)")
    first_use = seconds(
        "import time; t = time.perf_counter(); import slidesim; slidesim.similarity; print(time.perf_counter() - t)"
    )
    first_fused = seconds(
        "import time, torch, slidesim; x = torch.rand(1, 3, 64, 64); t = time.perf_counter(); "
        "slidesim.similarity(x, x[:, :, :8, :8], metric='sad'); print(time.perf_counter() - t)"
    )
    row(
        "import slidesim; first use of slidesim.similarity (imports torch); first fused call in a new process "
        "(warm cache)",
        f"{imported:.2f} s; {first_use:.2f} s; {first_fused:.2f} s",
        f"import torch alone {torch_import:.2f} s",
        "",
    )

    plotted = False if args.quick else plot_curves(max(2, rounds // 2))
    versions = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({os.cpu_count()} cores), 2 threads for every "
        f"tool, Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, OpenCV "
        f"{cv2.__version__}, scikit-image {skimage.__version__}, scipy {scipy.__version__}, slidesim "
        f"{slidesim.__version__}. Times are the best of {rounds} interleaved rounds; memory is the peak above the "
        "inputs in a fresh process."
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
            *(["![time against template size and bank size](benchmarks/compare.png)", ""] if plotted else []),
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


def plot_curves(rounds: int) -> bool:
    """zncc time against template size (one template on 512²) and against bank size (16² templates on 512²)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = "img = np.random.default_rng(1).random((512, 512), dtype=np.float32); timg = torch.from_numpy(img)\n"
    sizes = [4, 8, 16, 32, 64, 128]
    by_size: dict[str, list[float]] = {"slidesim": [], "cv2": [], "skimage": [], "unfold recipe (l1)": []}
    for s in sizes:
        setup = base + f"tpl = img[:{s}, :{s}].copy(); ttpl = torch.from_numpy(tpl)\n"
        tools = {
            "slidesim": "slidesim.similarity(timg, ttpl)",
            "cv2": "cv2.matchTemplate(img, tpl, cv2.TM_CCOEFF_NORMED)",
            "skimage": "match_template(img, tpl)",
        }
        if s <= 32:
            tools["unfold recipe (l1)"] = "unfold_l1(timg[None, None], ttpl[None, None], 1)"
        got = race(setup, tools, rounds, ("unfold recipe (l1)",), memory=False)
        for name in by_size:
            by_size[name].append(got[name].ms if name in got else float("nan"))
    banks = [1, 4, 16, 64, 128]
    by_bank: dict[str, list[float]] = {"slidesim": [], "cv2 loop": [], "grouped conv2d, image repeated": []}
    for n in banks:
        setup = base + (
            f"bank = np.stack([img[None, y : y + 16, y : y + 16] for y in range(0, 3 * {n}, 3)])\n"
            "tbank = torch.from_numpy(bank)\n"
        )
        tools = {
            "slidesim": "slidesim.similarity(timg[None, None], tbank)",
            "cv2 loop": "[cv2.matchTemplate(img, t[0], cv2.TM_CCOEFF_NORMED) for t in bank]",
            "grouped conv2d, image repeated": "grouped_conv_cross(timg[None, None], tbank)",
        }
        got = race(setup, tools, rounds, (), memory=False)
        for name in by_bank:
            by_bank[name].append(got[name].ms)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, values in by_size.items():
        left.plot(sizes, values, marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="template size (pixels per side)", ylabel="time (ms)")
    left.set_title("zncc, one template on 512², float32")
    left.set_xticks(sizes, [str(s) for s in sizes])
    for name, values in by_bank.items():
        right.plot(banks, values, marker="o", label=name + (" (cross term only)" if "grouped" in name else ""))
    right.set(xscale="log", yscale="log", xlabel="templates in the bank", ylabel="time (ms)")
    right.set_title("zncc, 16² templates on 512², float32")
    right.set_xticks(banks, [str(b) for b in banks])
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    print(f"wrote {PLOT}")
    return True


if __name__ == "__main__":
    main()
