"""slidesim against its peers, side by side in one process, on the targets of the CPU-speed work.

Run: python benchmarks/compare.py   (prints a Markdown section; about two minutes on 2 cores)

Every case times each tool several times and keeps the best run; ratios compare tools measured in this process.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

import slidesim

torch.set_num_threads(2)


def best_ms(fn: Callable[[], object], repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def unfold_l1(image: torch.Tensor, template: torch.Tensor, stride: int) -> torch.Tensor:
    h, w = template.shape[-2:]
    windows = image.unfold(-2, h, stride).unfold(-2, w, stride).movedim(1, -3)
    return 1 - windows.sub(template).abs().mean((-3, -2, -1))


def main() -> None:
    import cv2
    from skimage.feature import match_template

    cv2.setNumThreads(2)
    rng = np.random.default_rng(0)
    rows: list[str] = []

    # l1_similarity, one 32x32 template on 1x3x512x512
    image = torch.from_numpy(rng.random((1, 3, 512, 512), dtype=np.float32))
    template = image[:, :, 100:132, 200:232].clone()
    ours = best_ms(lambda: slidesim.similarity(image, template, metric="l1_similarity"))
    unfold = best_ms(lambda: unfold_l1(image, template, 1), repeat=1)
    rate = 3 * 32 * 32 * 481 * 481 / (ours / 1e3) / 1e9
    rows.append(
        f"| l1_similarity 1×3×512², one 32² | {ours:.1f} ms | unfold recipe {unfold:.0f} ms | {unfold / ours:.0f}× "
        f"| {rate:.1f} G abs-diffs/s |"
    )

    # the small case: 1x3x101x101, one 10x9 template, stride 2
    small = torch.from_numpy(rng.random((1, 3, 101, 101), dtype=np.float32))
    small_t = small[:, :, 10:20, 30:39].clone()
    ours = best_ms(lambda: slidesim.similarity(small, small_t, metric="l1_similarity", stride=2), repeat=20)
    unfold = best_ms(lambda: unfold_l1(small, small_t, 2), repeat=20)
    rows.append(
        f"| l1_similarity 1×3×101², 10×9, stride 2 | {ours:.2f} ms | unfold recipe {unfold:.2f} ms | "
        f"{unfold / ours:.1f}× | |"
    )

    # zncc against OpenCV and scikit-image
    for channels, size, tsize in [(1, 1024, 32), (3, 512, 32), (1, 2048, 64)]:
        img = rng.random((1, channels, size, size), dtype=np.float32)
        tpl = img[:, :, 100 : 100 + tsize, 50 : 50 + tsize].copy()
        hwc = np.ascontiguousarray(img[0].transpose(1, 2, 0))
        thwc = np.ascontiguousarray(tpl[0].transpose(1, 2, 0))
        opencv = best_ms(lambda hwc=hwc, thwc=thwc: cv2.matchTemplate(hwc, thwc, cv2.TM_CCOEFF_NORMED))
        timg, ttpl = torch.from_numpy(img), torch.from_numpy(tpl)
        auto = best_ms(lambda timg=timg, ttpl=ttpl: slidesim.similarity(timg, ttpl), repeat=1)
        fft = best_ms(lambda timg=timg, ttpl=ttpl: slidesim.similarity(timg, ttpl, method="fft"))
        sk = ""
        if channels == 1:
            scikit = best_ms(lambda img=img, tpl=tpl: match_template(img[0, 0], tpl[0, 0]), repeat=1)
            sk = f"skimage {scikit:.0f} ms ({scikit / fft:.1f}× fft)"
        rows.append(
            f"| zncc {channels}×{size}², one {tsize}² | auto {auto:.0f} ms, fft {fft:.0f} ms "
            f"| cv2 {opencv:.1f} ms; {sk} | cv2 / fft = {opencv / fft:.2f} | |"
        )

    # a bank of 64 templates 16x16 on 1x1x512x512
    img = rng.random((1, 1, 512, 512), dtype=np.float32)
    bank = np.stack([img[0, :, y : y + 16, y : y + 16] for y in range(0, 64 * 7, 7)])
    for metric, method in (("zncc", cv2.TM_CCOEFF_NORMED), ("ssd", cv2.TM_SQDIFF)):
        loop = best_ms(lambda method=method: [cv2.matchTemplate(img[0, 0], t[0], method) for t in bank])
        named = "conv" if metric == "zncc" else "numba"

        def run(metric: str = metric, method: str = "auto") -> object:
            return slidesim.similarity(torch.from_numpy(img), torch.from_numpy(bank), metric=metric, method=method)

        auto = best_ms(run, repeat=1)
        fast = best_ms(lambda metric=metric, named=named: run(metric, named))
        rows.append(
            f"| {metric}, 64 templates 16² on 512² | auto {auto:.0f} ms, {named} {fast:.0f} ms | cv2 loop "
            f"{loop:.0f} ms | cv2 loop / {named} = {loop / fast:.2f} | |"
        )

    code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    torch_import = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    code = "import time, torch; t = time.perf_counter(); import slidesim; print(time.perf_counter() - t)"
    imported = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    code = (
        "import time, torch, slidesim; x = torch.rand(1, 3, 64, 64); t = time.perf_counter(); "
        "slidesim.similarity(x, x[:, :, :8, :8], metric='sad'); print(time.perf_counter() - t)"
    )
    first = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    rows.append(
        f"| import slidesim after torch; first fused call in a new process (warm cache) | {imported:.2f} s; "
        f"{first:.2f} s | import torch alone {torch_import:.2f} s | | |"
    )

    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, 2 threads, torch {torch.__version__}, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}, Python {platform.python_version()}.\n"
    )
    print("| case | slidesim | peer | ratio | note |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
