"""Search of one template in a turned (and scaled) photograph: slidesim's pyramid, slidesim's exhaustive search
and corrmatch, side by side in one process (not run in CI).

The scene is scikit-image's astronaut (grey, upscaled with cubic interpolation) turned, and for ``--case scale``
scaled, about the centre of a cut of itself by a known pose (OpenCV's cubic warp); every method gets the same
uint8 data (corrmatch takes uint8 only). Each method runs ``--repeats`` times after one warm-up call,
alternating; the best time and the spread are reported with each one's position, angle and scale errors against
the known pose. Cases:

- ``circle``: a ``--size``² template in a 1024² photo at any angle (the full circle); with the exhaustive search
  over 1° steps, timed on a sample of ``--exhaustive-sample`` rotations and scaled to 360 (its cost is linear in
  the rotations), unless ``--exhaustive-full``.
- ``scale``: the same at any angle and a scale in 0.7–1.4 (rotation × scale ranges; corrmatch has no scale).
- ``large``: a 700 × 500 template in a 4000 × 3000 photo at any angle.

Usage: PYTHONPATH=src python benchmarks/pose_search.py [--case circle|scale|large] [--size 96] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import time

import cv2
import numpy as np
import torch
from skimage import data

import slidesim


def scene_and_template(
    angle: float,
    size: int | tuple[int, int],
    seed: int,
    scale: float = 1.0,
    scene_size: tuple[int, int] = (1024, 1024),
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(scene [H, W] uint8, template [h, w] uint8, true centre (y, x)) of a textured cut, the scene turned by
    ``angle`` and scaled by ``scale`` about the cut's centre; ``size`` is a side or (h, w), ``scene_size`` (H, W)."""
    h, w = (size, size) if isinstance(size, int) else size
    H, W = scene_size
    photo = cv2.resize(data.astronaut().mean(axis=-1).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo, 0, 255)
    rng = np.random.default_rng(seed)
    margin = int(0.75 * max(h, w) * scale) + 8
    while True:
        y, x = int(rng.integers(margin, H - margin - h)), int(rng.integers(margin, W - margin - w))
        if photo[y : y + h, x : x + w].std() > 25:
            break
    centre = (y + (h - 1) / 2, x + (w - 1) / 2)
    turn = cv2.getRotationMatrix2D((centre[1], centre[0]), angle, scale)
    scene = cv2.warpAffine(photo, turn, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    as_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return as_u8(scene), as_u8(photo[y : y + h, x : x + w]), centre


def _turn(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def run_pyramid(scene: np.ndarray, template: np.ndarray, scales: bool = False) -> tuple[float, ...]:
    ranges = {"scales": slidesim.interval(0.7, 1.4)} if scales else {}
    found = slidesim.match(scene, template, rotations=slidesim.interval(0, 360), search="pyramid", **ranges)
    return float(found.y[0]), float(found.x[0]), float(found.angle[0]), float(found.scale[0])


def run_exhaustive(scene: np.ndarray, template: np.ndarray, angles: list[float]) -> tuple[float, ...]:
    found = slidesim.match(scene, template, rotations=angles, search="exhaustive")
    return float(found.y[0]), float(found.x[0]), float(found.angle[0]), float(found.scale[0])


def corrmatch_matcher(template: np.ndarray):
    import corrmatch
    from corrmatch.config import CompileConfig, MatchConfig

    # its default of 6 levels leaves a 96² template 3 pixels wide, which it refuses as degenerate: the most levels
    # that keep the smaller side at 12 pixels or more (4 for 96², 5 for 700 × 500)
    levels = 1 + int(np.log2(min(template.shape) / 12))
    compiled = corrmatch.Template(template).compile(CompileConfig(max_levels=levels))
    return compiled.matcher(MatchConfig(rotation="enabled", parallel=True))


def run_corrmatch(matcher, scene: np.ndarray, shape: tuple[int, int]) -> tuple[float, ...]:
    found = matcher.match_image(scene)
    # corrmatch reports the top-left corner (x, y) of the unturned template's frame, whose centre is half a side on,
    # and angles clockwise as displayed
    h, w = shape
    return float(found.y) + (h - 1) / 2, float(found.x) + (w - 1) / 2, -float(found.angle_deg), 1.0


def timed(call, repeats: int) -> tuple[list[float], tuple]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("circle", "scale", "large"), default="circle")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--exhaustive-sample", type=int, default=8)
    parser.add_argument("--exhaustive-full", action="store_true")
    parser.add_argument("--no-exhaustive", action="store_true")
    args = parser.parse_args()
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
        f"slidesim {slidesim.__version__}, torch {torch.__version__}; case {args.case}"
    )
    rng = np.random.default_rng(0)
    rows = []
    for trial in range(args.trials):
        angle = float(rng.uniform(0, 360))
        scale = float(rng.uniform(0.75, 1.3)) if args.case == "scale" else 1.0
        shape = (500, 700) if args.case == "large" else (args.size, args.size)
        scene_size = (3000, 4000) if args.case == "large" else (1024, 1024)
        scene, template, (cy, cx) = scene_and_template(angle, shape, trial, scale, scene_size)
        calls = {"slidesim pyramid": lambda s=scene, t=template: run_pyramid(s, t, args.case == "scale")}
        if args.case != "scale":  # corrmatch searches no scale
            matcher = corrmatch_matcher(template)
            calls["corrmatch parallel"] = lambda m=matcher, s=scene, hw=shape: run_corrmatch(m, s, hw)
        first = round(angle) - args.exhaustive_sample // 2
        sample = list(range(360)) if args.exhaustive_full else list(range(first, first + args.exhaustive_sample))
        if args.case == "circle" and not args.no_exhaustive:
            calls["slidesim exhaustive 1°"] = lambda s=scene, t=template, a=sample: run_exhaustive(s, t, a)
        for call in calls.values():
            call()  # warm-up
        results = {name: ([], None) for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                times, result = timed(call, 1)
                results[name] = (results[name][0] + times, result)
        for name, (times, (y, x, a, s)) in results.items():
            factor = 360 / len(sample) if name.startswith("slidesim exhaustive") else 1.0
            rows.append(
                (trial, angle, scale, name, min(times) * factor, (max(times) - min(times)) * factor, abs(y - cy),
                 abs(x - cx), _turn(a, angle), abs(s / scale - 1) * 100)
            )  # fmt: skip
    head = f"{'trial':>5} {'angle':>7} {'scale':>6} {'method':<24} {'best s':>8} {'spread':>7} {'|dy| px':>8}"
    print(f"{head} {'|dx| px':>8} {'|da|°':>7} {'|ds| %':>7}")
    for trial, angle, scale, name, best, spread, dy, dx, da, ds in rows:
        print(
            f"{trial:>5} {angle:>7.2f} {scale:>6.3f} {name:<24} {best:>8.3f} {spread:>7.3f} {dy:>8.3f} {dx:>8.3f} "
            f"{da:>7.3f} {ds:>7.3f}"
        )
    if args.case == "circle" and not args.no_exhaustive and not args.exhaustive_full:
        print(f"(exhaustive: {args.exhaustive_sample} rotations timed, scaled to 360; its errors are on that sample)")


if __name__ == "__main__":
    main()
