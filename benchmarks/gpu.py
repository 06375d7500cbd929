"""slidesim on a CUDA GPU against the torch recipes people use there, side by side in one process.

Run: python benchmarks/gpu.py [--quick]
     (needs a CUDA GPU; rewrites the GPU section of BENCHMARKS.md; a few minutes on an H100)

Cases:
- sad, 1×3×2048² image, 64 templates 32×32, float32 (and float16 / bfloat16 operands, and the backward pass):
  the Triton kernel against the unfold recipe on the same GPU. The recipe's windows would take 3·32·32·2017²·4 B
  = 50 GB per template (and as much again for the difference), beyond the GPU, so it runs one template and a band
  of output rows at a time, each band's windows under 4 GiB: the report says so. Throughput in abs-diffs/s
  (templates × taps × outputs / time) and its fraction of 16.7 T/s, the float32 limit of an H100 or H200 for
  |a − b| + acc (two instructions per difference at 67 TFLOP/s).
- zncc, 1×1×2048², a bank of 256 templates 32×32: slidesim (auto) against a loop over the templates of the best
  single-template path built from torch: cross term by cuDNN conv2d (TF32 off), window means and energies by
  box filters of the centred image in float64, the zncc finish in float32.
Time: CUDA events around each call after warm-up, best of a few rounds, tools interleaved. Memory: peak
torch.cuda.max_memory_allocated above what the inputs hold.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import slidesim

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "BENCHMARKS.md"
START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"
ABS_DIFF_LIMIT = 16.7e12  # float32 |a − b| + acc per second on an H100 / H200 (67 TFLOP/s, two instructions)
BAND_BYTES = 4 * 2**30  # the unfold recipe's windows per band of output rows


def unfold_sad_chunked(image: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The unfold recipe (windows − template, |.|, sum), one template and one band of output rows at a time."""
    _, C, H, W = image.shape
    T, _, h, w = bank.shape
    Ho, Wo = H - h + 1, W - w + 1
    out = torch.empty(1, T, Ho, Wo, device=image.device)
    rows = max(1, BAND_BYTES // (C * h * w * Wo * 4))
    for t in range(T):
        for r0 in range(0, Ho, rows):
            r1 = min(Ho, r0 + rows)
            band = image[:, :, r0 : r1 + h - 1]
            windows = band.unfold(-2, h, 1).unfold(-2, w, 1).movedim(1, -3)  # [1, r, Wo, C, h, w]
            out[:, t, r0:r1] = windows.sub(bank[t]).abs().sum((-3, -2, -1))
    return out


def _box(plane: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Window sums of a [1, 1, H, W] float64 plane by cumulative sums."""
    s = F.pad(plane, (1, 0, 1, 0)).cumsum(-2).cumsum(-1)
    return s[..., h:, w:] - s[..., :-h, w:] - s[..., h:, :-w] + s[..., :-h, :-w]


def torch_zncc_single(image: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """zncc of one template [h, w] on [1, 1, H, W]: the best single-template path from torch's own pieces."""
    h, w = template.shape
    n = h * w
    centred = image - image.mean()
    t = template - template.mean()
    t_norm = t.double().square().sum().sqrt()
    cudnn = torch.backends.cudnn
    with cudnn.flags(enabled=True, benchmark=cudnn.benchmark, deterministic=False, allow_tf32=False):
        cross = F.conv2d(centred, t[None, None])
    plane = centred.double()
    sums, squares = _box(plane, h, w), _box(plane.square(), h, w)
    variance = (squares - sums.square() / n).clamp_min(0)
    return (cross.double() / (variance.sqrt() * t_norm).clamp_min(1e-12)).float()


def torch_zncc_loop(image: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch_zncc_single(image, bank[t, 0]) for t in range(bank.shape[0])], dim=1)[:, :, 0]


def timed(call: Callable[[], object], rounds: int) -> tuple[float, float]:
    """(best seconds of ``rounds`` calls after a warm-up, peak bytes allocated during one call above the start)."""
    call()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller cases, one round (a smoke test)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU; none is visible to torch.")
    import triton

    rounds = 1 if args.quick else 5
    size, n_templates, bank_size = (512, 8, 32) if args.quick else (2048, 64, 256)
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    rows: list[str] = []

    image = torch.rand(1, 3, size, size, device=device, generator=generator)
    bank = torch.rand(n_templates, 3, 32, 32, device=device, generator=generator)
    outputs = (size - 31) ** 2
    work = n_templates * 3 * 32 * 32 * outputs

    ours, ours_peak = timed(lambda: slidesim.similarity(image, bank, metric="sad", method="triton"), rounds)
    recipe, recipe_peak = timed(lambda: unfold_sad_chunked(image, bank), 1)
    check = (slidesim.similarity(image, bank[:2], metric="sad") - unfold_sad_chunked(image, bank[:2])).abs().max()
    rate = work / ours
    rows.append(
        f"| sad 1×3×{size}² vs {n_templates}×32², float32 | {ours * 1e3:.1f} ms, {ours_peak / 2**20:.0f} MiB | "
        f"unfold recipe in chunks (one template, bands of ≤ 4 GiB windows): {recipe * 1e3:.0f} ms, "
        f"{recipe_peak / 2**20:.0f} MiB | **{recipe / ours:.0f}×** | {rate / 1e12:.2f} T abs-diffs/s = "
        f"{rate / ABS_DIFF_LIMIT:.0%} of 16.7 T/s; max difference {float(check):.2g} |"
    )
    for dtype in (torch.float16, torch.bfloat16):
        low_image, low_bank = image.to(dtype), bank.to(dtype)
        low, low_peak = timed(
            lambda x=low_image, t=low_bank: slidesim.similarity(x, t, metric="sad", method="triton"), rounds
        )
        rows.append(
            f"| sad, {str(dtype).replace('torch.', '')} operands | {low * 1e3:.1f} ms, {low_peak / 2**20:.0f} MiB |"
            f" — | — | {work / low / 1e12:.2f} T abs-diffs/s (slidesim converts to float32 before the kernel) |"
        )
    x, t = image.clone().requires_grad_(), bank.clone().requires_grad_()

    def forward_backward() -> None:
        scores = slidesim.similarity(x, t, metric="sad", method="triton")
        torch.autograd.grad(scores.sum(), (x, t))

    both, both_peak = timed(forward_backward, max(1, rounds // 2))
    rows.append(
        f"| sad forward + backward (images and templates) | {both * 1e3:.1f} ms, {both_peak / 2**20:.0f} MiB | — |"
        f" — | {3 * work / both / 1e12:.2f} T abs-diffs/s over the three passes |"
    )

    plane = torch.rand(1, 1, size, size, device=device, generator=generator)
    zbank = torch.rand(bank_size, 1, 32, 32, device=device, generator=generator)
    plan = slidesim.plan(plane, zbank, metric="zncc")
    ours, ours_peak = timed(lambda: slidesim.similarity(plane, zbank, metric="zncc"), rounds)
    loop, loop_peak = timed(lambda: torch_zncc_loop(plane, zbank), rounds)
    gap = (slidesim.similarity(plane, zbank[:4], metric="zncc") - torch_zncc_loop(plane, zbank[:4])).abs().max()
    rows.append(
        f"| zncc 1×1×{size}² vs {bank_size}×32² | {ours * 1e3:.1f} ms, {ours_peak / 2**20:.0f} MiB ({plan.engine}) |"
        f" loop of conv2d + float64 box statistics per template: {loop * 1e3:.1f} ms, {loop_peak / 2**20:.0f} MiB |"
        f" **{loop / ours:.1f}×** | max difference {float(gap):.2g} |"
    )

    header = (
        f"Measured {datetime.date.today().isoformat()} by `python benchmarks/gpu.py`"
        f"{' --quick' if args.quick else ''} on {torch.cuda.get_device_name()} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}, "
        f"Python {platform.python_version()}).\n\n"
        "| case | slidesim (time, peak GPU memory) | peer | ratio | note |\n|---|---|---|---|---|\n"
    )
    section = f"{START}\n{header}" + "\n".join(rows) + f"\n{END}"
    text = REPORT.read_text()
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    REPORT.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
