"""Full-circle search of one template in a turned photograph: slidesim's pyramid, slidesim's exhaustive search
and corrmatch, side by side in one process (not run in CI).

The scene is scikit-image's astronaut (grey, upscaled to 1024² with cubic interpolation) turned about the centre
of a 96² cut of itself by a known angle (OpenCV's cubic warp); every method gets the same uint8 data (corrmatch
takes uint8 only). Each method runs ``--repeats`` times after one warm-up call, alternating; the best time and
the spread are reported with each one's position and angle errors against the known pose. The exhaustive search
over 1° steps is timed on a sample of ``--exhaustive-sample`` rotations and scaled to 360 (its cost is linear in
the rotations), unless ``--exhaustive-full``.

Usage: PYTHONPATH=src python benchmarks/pose_search.py [--angle 37.3] [--repeats 5] [--trials 3]
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


def scene_and_template(angle: float, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(scene [1024, 1024] uint8, template [size, size] uint8, true centre (y, x)) of a textured cut."""
    photo = cv2.resize(data.astronaut().mean(axis=-1).astype(np.float32), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo, 0, 255)
    rng = np.random.default_rng(seed)
    while True:
        y, x = (int(v) for v in rng.integers(200, 1024 - 200 - size, 2))
        if photo[y : y + size, x : x + size].std() > 25:
            break
    centre = (y + (size - 1) / 2, x + (size - 1) / 2)
    turn = cv2.getRotationMatrix2D((centre[1], centre[0]), angle, 1.0)
    scene = cv2.warpAffine(photo, turn, (1024, 1024), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    as_u8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
    return as_u8(scene), as_u8(photo[y : y + size, x : x + size]), centre


def _turn(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def run_pyramid(scene: np.ndarray, template: np.ndarray) -> tuple[float, float, float]:
    found = slidesim.match(scene, template, rotations=slidesim.interval(0, 360), search="pyramid")
    return float(found.y[0]), float(found.x[0]), float(found.angle[0])


def run_exhaustive(scene: np.ndarray, template: np.ndarray, angles: list[float]) -> tuple[float, float, float]:
    found = slidesim.match(scene, template, rotations=angles, search="exhaustive")
    return float(found.y[0]), float(found.x[0]), float(found.angle[0])


def corrmatch_matcher(template: np.ndarray):
    import corrmatch
    from corrmatch.config import CompileConfig, MatchConfig

    # its default of 6 levels leaves a 96² template 3 pixels wide, which it refuses as degenerate: 4 levels (12 px)
    compiled = corrmatch.Template(template).compile(CompileConfig(max_levels=4))
    return compiled.matcher(MatchConfig(rotation="enabled", parallel=True))


def run_corrmatch(matcher, scene: np.ndarray, size: int) -> tuple[float, float, float]:
    found = matcher.match_image(scene)
    # corrmatch reports the top-left corner (x, y) of the unturned template's frame, whose centre is half a side on,
    # and angles clockwise as displayed
    return float(found.y) + (size - 1) / 2, float(found.x) + (size - 1) / 2, -float(found.angle_deg)


def timed(call, repeats: int) -> tuple[list[float], tuple]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--exhaustive-sample", type=int, default=8)
    parser.add_argument("--exhaustive-full", action="store_true")
    args = parser.parse_args()
    print(
        f"CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
        f"slidesim {slidesim.__version__}, torch {torch.__version__}"
    )
    rng = np.random.default_rng(0)
    rows = []
    for trial in range(args.trials):
        angle = float(rng.uniform(0, 360))
        scene, template, (cy, cx) = scene_and_template(angle, args.size, seed=trial)
        matcher = corrmatch_matcher(template)
        first = round(angle) - args.exhaustive_sample // 2
        sample = list(range(360)) if args.exhaustive_full else list(range(first, first + args.exhaustive_sample))
        calls = {
            "slidesim pyramid": lambda s=scene, t=template: run_pyramid(s, t),
            "corrmatch parallel": lambda m=matcher, s=scene: run_corrmatch(m, s, args.size),
            "slidesim exhaustive 1°": lambda s=scene, t=template, a=sample: run_exhaustive(s, t, a),
        }
        for call in calls.values():
            call()  # warm-up
        results = {name: ([], None) for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                times, result = timed(call, 1)
                results[name] = (results[name][0] + times, result)
        for name, (times, (y, x, a)) in results.items():
            scale = 360 / len(sample) if name.startswith("slidesim exhaustive") else 1.0
            rows.append(
                (trial, angle, name, min(times) * scale, (max(times) - min(times)) * scale, abs(y - cy), abs(x - cx),
                 _turn(a, angle))
            )  # fmt: skip
    head = f"{'trial':>5} {'angle':>7} {'method':<24} {'best s':>8} {'spread':>7} {'|dy| px':>8} {'|dx| px':>8}"
    print(f"{head} {'|da|°':>7}")
    for trial, angle, name, best, spread, dy, dx, da in rows:
        print(f"{trial:>5} {angle:>7.2f} {name:<24} {best:>8.3f} {spread:>7.3f} {dy:>8.3f} {dx:>8.3f} {da:>7.3f}")
    if not args.exhaustive_full:
        print(f"(exhaustive: {args.exhaustive_sample} rotations timed, scaled to 360; its errors are on that sample)")


if __name__ == "__main__":
    main()
