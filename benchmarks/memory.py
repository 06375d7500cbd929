"""Peak memory of slidesim against the memory targets of the core contract, each case in a fresh process.

Run: python benchmarks/memory.py [--quick]   (prints a Markdown table; --quick skips the 1024² SAD case)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.memory_probe import peak_bytes, warm_every_engine

MIB = 2**20

WIDE = """
import torch, slidesim
import torch.nn.functional as F
torch.manual_seed(0)
x = torch.rand(1, 128, 200, 200); k = torch.rand(50, 128, 9, 9)
"""
LARGE = """
import torch, slidesim
torch.manual_seed(0)
x = torch.rand(1, 3, 1024, 1024); k = torch.rand(16, 3, 64, 64)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the 1024x1024 SAD case (minutes on 2 cores)")
    args = parser.parse_args()
    rows = []
    conv = peak_bytes(WIDE, "F.conv2d(x, k)", "F.conv2d(x[:, :, :20, :20], k)")
    rows.append(("1×128×200² vs 50 × 9², F.conv2d", conv["peak"], conv["output"], "(baseline)", 0.0))
    for metric in ("ccorr", "zncc", "sad"):
        start = time.perf_counter()
        got = peak_bytes(
            WIDE,
            f"slidesim.similarity(x, k, metric='{metric}')",
            warm_every_engine("x[:, :, :12, :12]", "k[:1]", metric),
        )
        bound = 2 * conv["peak"]
        verdict = f"≤ 2 × conv2d = {bound / MIB:.1f} MiB: {'yes' if got['peak'] <= bound else 'NO'}"
        rows.append(
            (f"1×128×200² vs 50 × 9², {metric}", got["peak"], got["output"], verdict, time.perf_counter() - start)
        )
    if not args.quick:
        start = time.perf_counter()
        got = peak_bytes(
            LARGE,
            "slidesim.similarity(x, k, metric='sad')",
            warm_every_engine("x[..., :80, :80]", "k[:1]", "sad"),
        )
        bound = got["output"] + 512 * MIB + 128 * MIB
        verdict = f"≤ output + 512 + 128 MiB = {bound / MIB:.0f} MiB: {'yes' if got['peak'] <= bound else 'NO'}"
        unfold = 961 * 961 * 3 * 64 * 64 * 4  # the windows alone, before any template
        rows.append(
            (
                f"1×3×1024² vs 16 × 64², sad (unfold windows: {unfold / 2**30:.0f} GiB)",
                got["peak"],
                got["output"],
                verdict,
                time.perf_counter() - start,
            )
        )
    if not args.quick:
        start = time.perf_counter()
        setup = """
import numpy as np, slidesim
from skimage import data
from skimage.transform import resize
photo = resize(data.camera(), (1024, 1024)).astype(np.float32)
template = photo[300:348, 500:548].copy()
"""
        call = "(slidesim.match(photo, template, rotations=np.arange(0, 360, 1.0)), torch.zeros(0))[1]"
        got = peak_bytes(setup, call, "slidesim.match(photo[:200, :200].copy(), template, rotations=[0, 45])")
        verdict = f"< 700 MB: {'yes' if got['peak'] < 700e6 else 'NO'}"
        rows.append(
            (
                "match: 360 rotations of a 48² template on 1024² (zncc, best-of-bank streamed)",
                got["peak"],
                0,
                verdict,
                time.perf_counter() - start,
            )
        )
    print(
        f"Peak resident memory above the inputs ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')})\n"
    )
    print("| case | peak | output | target | wall time |")
    print("|---|---|---|---|---|")
    for name, peak, output, verdict, seconds in rows:
        print(f"| {name} | {peak / MIB:.1f} MiB | {output / MIB:.1f} MiB | {verdict} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
