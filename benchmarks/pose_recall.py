"""Recall of the coarse-to-fine pose search on real photographs (not run in CI).

Each trial cuts a square template (side drawn from 32 to 160 pixels, capped where the photograph is too small for
its turned and scaled canvas) from a scikit-image photograph (grey, blurred by σ = 0.7 px so that resampling it is
well defined), and makes the scene by turning and scaling the photograph about the template's centre with OpenCV's
cubic warp (angle random in 0–360°, scale random in 0.7–1.4), then changing its contrast by ±20 %, blurring it
(σ up to 1 px), adding Gaussian noise (σ = 2 % of the range) and covering 10 % of the template's footprint with a
flat patch. The template sits at that centre, under the known angle and scale.

Per trial, slidesim's pyramid searches ``rotations=slidesim.interval(0, 360), scales=slidesim.interval(0.7, 1.4)``
(zncc, sub-pixel). The exhaustive search over the full grid of those ranges is too slow for hundreds of trials, so
it searches the grid's poses within two grid steps of the true angle and scale (5 × 5 poses), at every position of
the whole scene, at whole pixels: the best the exhaustive search can do near the truth. A trial is a miss when the
pyramid's pose is not within tolerance of the truth (2 px, 2°, 3 % of scale) AND it scores below that restricted
exhaustive search. Hits report their position, angle and scale errors against the truth.

    python benchmarks/pose_recall.py --trials 20            # print the summary
    python benchmarks/pose_recall.py --trials 300 --write   # and replace its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from real_images import THREADS, machine, write
from skimage import data

import slidesim
from slidesim.pose_search import pose_space

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
START, END = "<!-- pose-recall:start -->", "<!-- pose-recall:end -->"
ACCURACY_START, ACCURACY_END = "<!-- pose-accuracy:start -->", "<!-- pose-accuracy:end -->"
PHOTOS = ("camera", "astronaut", "coffee", "coins", "text", "brick")
SIZES = (32, 160)  # template sides drawn from this range (inclusive)
ANGLES, SCALES = (0.0, 360.0), (0.7, 1.4)
NEAR_STEPS = 2  # the restricted exhaustive search: grid poses within this many steps of the truth
TOLERANCE = (2.0, 2.0, 0.03)  # position (px), angle (°), relative scale: a pose this close is the true one
ACCURACY_TARGETS = (0.1, 0.1, 0.002)  # the largest errors: position (px), angle (°), relative scale
SEARCH_ROOM = 1.02  # the scene's side leaves this much more than the template's largest canvas
FLAT_PATCH = 0.10  # share of the template's footprint that the occluder covers
NOISE, BLUR, CONTRAST = 0.02, 1.0, 0.2
WRITE_EVERY = 5  # with --write, the report is rewritten after every this many trials


@dataclass(frozen=True)
class Trial:
    photo: str
    size: int
    angle: float
    scale: float
    centre: tuple[float, float]
    scene: np.ndarray
    template: np.ndarray


@dataclass(frozen=True)
class Outcome:
    trial: Trial
    pose: tuple[float, float, float, float]  # the pyramid's y, x, angle, scale
    score: float
    exhaustive: float  # the restricted exhaustive search's best score
    seconds: float  # the pyramid's time
    hit: bool
    optimum: (
        float  # position error (px) of zncc's sub-pixel optimum at the true angle and scale, for hits near the truth
    )
    gap: float  # distance (px) from the pyramid's position to that optimum's (NaN where not computed)
    truth_score: float  # zncc at that optimum: the best score at the true angle and scale (NaN where not computed)


def _photo(name: str) -> np.ndarray:
    image = getattr(data, name)().astype(np.float32) / 255
    image = image.mean(axis=-1) if image.ndim == 3 else image
    return cv2.GaussianBlur(image, (0, 0), 0.7)


def _canvas_side(size: int, scale: float) -> int:
    """The side of the square that holds a size² template turned to any angle at ``scale``."""
    return math.ceil(size * scale * math.sqrt(2)) + 2


def largest_size(photo: np.ndarray) -> int:
    """The largest template side whose canvas at the largest scale fits the photograph (the scene's side)."""
    side = min(photo.shape)
    return int((side / SEARCH_ROOM - 2) / (SCALES[1] * math.sqrt(2)))


def make_trial(
    photo_name: str, photo: np.ndarray, rng: np.random.Generator, most: int = SIZES[1], patch: float = FLAT_PATCH
) -> Trial:
    """A template (side up to ``most``) cut where the photograph has texture and the scene it sits in, turned,
    scaled and spoiled."""
    size = int(rng.integers(SIZES[0], min(most, largest_size(photo)) + 1))
    angle = float(rng.uniform(*ANGLES))
    scale = float(math.exp(rng.uniform(math.log(SCALES[0]), math.log(SCALES[1]))))
    side = min(min(photo.shape), max(160, math.ceil(_canvas_side(size, SCALES[1]) * SEARCH_ROOM) + 32))
    reach = _canvas_side(size, scale) // 2 + 2  # the turned template stays inside the scene
    for _ in range(200):
        top, left = (int(v) for v in rng.integers(0, (photo.shape[0] - side + 1, photo.shape[1] - side + 1)))
        region = photo[top : top + side, left : left + side]
        cy, cx = (float(v) for v in rng.uniform(reach, side - 1 - reach, 2))
        y, x = round(cy - (size - 1) / 2), round(cx - (size - 1) / 2)
        template = region[y : y + size, x : x + size]
        if template.shape == (size, size) and template.std() > 0.06:
            break
    centre = (y + (size - 1) / 2, x + (size - 1) / 2)
    turn = cv2.getRotationMatrix2D((centre[1], centre[0]), angle, scale)
    scene = cv2.warpAffine(region, turn, (side, side), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    scene = spoiled(scene, centre, size * scale, rng, patch)
    return Trial(photo_name, size, angle, scale, centre, scene, np.ascontiguousarray(template))


def spoiled(
    scene: np.ndarray,
    centre: tuple[float, float],
    footprint: float,
    rng: np.random.Generator,
    patch: float = FLAT_PATCH,
) -> np.ndarray:
    """The scene with ±20 % contrast, a blur, noise, and a flat patch over ``patch`` of the template's footprint
    (the random draws are the same whatever ``patch`` is, so runs with and without the patch share their poses)."""
    mean = float(scene.mean())
    scene = (scene - mean) * rng.uniform(1 - CONTRAST, 1 + CONTRAST) + mean
    sigma = rng.uniform(0, BLUR)
    if sigma > 0.05:
        scene = cv2.GaussianBlur(scene, (0, 0), sigma)
    scene = scene + rng.normal(0, NOISE, scene.shape)
    # a rectangle of a tenth of the footprint's area, its aspect random, somewhere inside the footprint's disc
    area = max(patch, 1e-9) * footprint**2
    aspect = rng.uniform(0.5, 2.0)
    ph, pw = max(1, round(math.sqrt(area * aspect))), max(1, round(math.sqrt(area / aspect)))
    offset = rng.uniform(-footprint / 4, footprint / 4, 2)
    py, px = round(centre[0] + offset[0] - ph / 2), round(centre[1] + offset[1] - pw / 2)
    level = rng.uniform(scene.min(), scene.max())
    if patch > 0:
        scene[max(0, py) : max(0, py + ph), max(0, px) : max(0, px + pw)] = level
    return np.ascontiguousarray(scene.astype(np.float32))


def _turn(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def near_grid(trial: Trial) -> tuple[list[float], list[float]]:
    """The poses of the full search's grid within NEAR_STEPS steps of the true angle and scale."""
    space = pose_space((trial.size, trial.size), None, None, slidesim.interval(*ANGLES), slidesim.interval(*SCALES))
    angles = np.array(space.angles)
    nearest = int(np.argmin([_turn(a, trial.angle) for a in angles]))
    picked_angles = [float(angles[(nearest + d) % len(angles)]) for d in range(-NEAR_STEPS, NEAR_STEPS + 1)]
    scales = np.array(space.scales)
    middle = int(np.argmin(np.abs(np.log(scales / trial.scale))))
    low, high = max(0, middle - NEAR_STEPS), min(len(scales), middle + NEAR_STEPS + 1)
    return picked_angles, [float(s) for s in scales[low:high]]


def run_trial(trial: Trial) -> Outcome:
    start = time.perf_counter()
    found = slidesim.match(
        trial.scene,
        trial.template,
        rotations=slidesim.interval(*ANGLES),
        scales=slidesim.interval(*SCALES),
        search="pyramid",
    )
    seconds = time.perf_counter() - start
    angles, scales = near_grid(trial)
    exact = slidesim.match(
        trial.scene, trial.template, rotations=angles, scales=scales, search="exhaustive", subpixel=False
    )
    pose = (float(found.y[0]), float(found.x[0]), float(found.angle[0]), float(found.scale[0]))
    errors = pose_errors(trial, pose)
    near_truth = errors[0] <= TOLERANCE[0] and errors[1] <= TOLERANCE[1] and errors[2] <= TOLERANCE[2]
    score, exhaustive = float(found.score[0]), float(exact.score[0])
    optimum = gap = truth_score = math.nan
    if near_truth:  # where zncc itself puts the template, given the true angle and scale
        fixed = slidesim.match(trial.scene, trial.template, rotations=[trial.angle], scales=[trial.scale])
        optimum = math.hypot(float(fixed.y[0]) - trial.centre[0], float(fixed.x[0]) - trial.centre[1])
        gap = math.hypot(float(fixed.y[0]) - pose[0], float(fixed.x[0]) - pose[1])
        truth_score = float(fixed.score[0])
    hit = near_truth or score >= exhaustive - 1e-6
    return Outcome(trial, pose, score, exhaustive, seconds, hit, optimum, gap, truth_score)


def pose_errors(trial: Trial, pose: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """(position error in px, angle error in °, relative scale error) of a pose against the truth."""
    y, x, angle, scale = pose
    return (
        math.hypot(y - trial.centre[0], x - trial.centre[1]),
        _turn(angle, trial.angle),
        abs(scale / trial.scale - 1),
    )


def summary(outcomes: list[Outcome], sizes: dict[str, int], most: int, planned: int, patch: float = FLAT_PATCH) -> str:
    hits = [o for o in outcomes if o.hit]
    misses = [o for o in outcomes if not o.hit]
    near = [o for o in hits if all(e <= t for e, t in zip(pose_errors(o.trial, o.pose), TOLERANCE, strict=True))]
    below = [o for o in outcomes if o.score < o.exhaustive - 1e-6]
    errors = np.array([pose_errors(o.trial, o.pose) for o in near]) if near else np.zeros((0, 3))
    seconds = np.array([o.seconds for o in outcomes])
    largest = ", ".join(f"{name} {min(most, side)}" for name, side in sizes.items())
    cap = ("" if most == SIZES[1] else f" --max-size {most}") + (
        "" if patch == FLAT_PATCH else f" --flat-patch {patch:g}"
    )
    start, end = markers(patch)
    covered = (
        f"{patch:.0%} of the template's footprint covered by a flat patch"
        if patch > 0
        else "no flat patch (the accuracy run: scenes with noise, blur and contrast only)"
    )
    reduced = (
        f" (the issue asks for up to {SIZES[1]}; capped at {most} with --max-size so that the trials run in about "
        "25 minutes on this shared machine)"
        if most < SIZES[1]
        else ""
    )
    lines = [
        start,
        "## Pose search: recall on real photographs"
        if patch == FLAT_PATCH
        else "## Pose search: accuracy without the occluder",
        "",
        f"`python benchmarks/pose_recall.py --trials {planned}{cap} --write`: {len(outcomes)} trials"
        + (
            ""
            if len(outcomes) == planned
            else f" (the first {len(outcomes)} of the {planned} asked for: the rest had not run when this was written)"
        )
        + " on "
        f"scikit-image's {', '.join(PHOTOS)} (grey). Template sides random from {SIZES[0]} up to the largest whose "
        f"canvas turned at scale {SCALES[1]} fits the photograph ({largest} pixels){reduced}; angle random in 0–360°, "
        f"scale log-uniform in {SCALES[0]}–{SCALES[1]}; the scene is the photograph turned and scaled about the "
        f"template's centre (OpenCV cubic warp), contrast ×0.8–1.2, blur σ up to {BLUR} px, noise σ = {NOISE} "
        f"(of a 0–1 range), {covered}. The pyramid "
        f'searches `rotations=slidesim.interval(0, 360), scales=slidesim.interval(0.7, 1.4), search="pyramid"` '
        f"(zncc, sub-pixel). The exhaustive search over that whole grid is too slow for this many trials, so it "
        f"searches the grid's {2 * NEAR_STEPS + 1} angles × up to {2 * NEAR_STEPS + 1} scales nearest the true "
        f"pose over the whole scene, at whole pixels. A miss: the pyramid's pose is farther from the truth than "
        f"{TOLERANCE[0]:g} px, {TOLERANCE[1]:g}° or {TOLERANCE[2]:.0%} of scale AND it scores below that "
        f"restricted exhaustive search. Measured on {machine()}.",
        "",
        f"- Recall: **{100 * len(hits) / len(outcomes):.1f} %** ({len(hits)} of {len(outcomes)} trials); "
        f"{len(near)} trials found the true pose within tolerance; {len(below)} scored below the restricted "
        "exhaustive search (a hit when the pose is still the true one).",
    ]
    if len(near):
        med, top = np.median(errors, axis=0), errors.max(axis=0)
        lines.append(
            f"- Errors of the trials within tolerance: position median {med[0]:.3f} px, max {top[0]:.3f} px; "
            f"angle median {med[1]:.3f}°, max {top[1]:.3f}°; scale median {100 * med[2]:.3f} %, max "
            f"{100 * top[2]:.3f} %."
        )
    optima = np.array([o.optimum for o in near if not math.isnan(o.optimum)])
    if len(optima):
        lines.append(
            f"- Where zncc itself puts the template given the true angle and scale (an exhaustive search of that one "
            f"pose, sub-pixel), on the same trials: position error median {np.median(optima):.3f} px, max "
            f"{optima.max():.3f} px: the floor that the data and the metric set for any search that maximizes zncc."
        )
        gaps = np.array([o.gap for o in near if not math.isnan(o.gap)])
        lines.append(
            f"- Distance from the pyramid's position to that optimum: median {np.median(gaps):.3f} px, 90th "
            f"percentile {np.percentile(gaps, 90):.3f} px, max {gaps.max():.3f} px (the pyramid also estimates angle "
            "and scale, which move zncc's optimum where they differ from the truth)."
        )
        beyond = [
            o
            for o in near
            if any(e > t for e, t in zip(pose_errors(o.trial, o.pose), ACCURACY_TARGETS, strict=True))
            and not math.isnan(o.truth_score)
        ]
        preferred = [o for o in beyond if o.score >= o.truth_score - 1e-9]
        lines.append(
            f"- Trials beyond the issue's limits ({ACCURACY_TARGETS[0]:g} px, {ACCURACY_TARGETS[1]:g}°, "
            f"{ACCURACY_TARGETS[2]:.1%} of scale): {len(beyond)}; in {len(preferred)} of them the pyramid's pose "
            "scores at least as high as zncc's best at the true angle and scale (the metric prefers the pose found "
            "to the truth on these data)."
        )
    lines.append(
        f"- Pyramid time per trial: median {np.median(seconds):.2f} s, max {seconds.max():.2f} s "
        f"(scenes {min(o.trial.scene.shape[0] for o in outcomes)}² to {max(o.trial.scene.shape[0] for o in outcomes)}²,"
        f" {THREADS} threads, on a shared machine)."
    )
    lines += ["", "Misses:" if misses else "No misses.", ""]
    if misses:
        lines += [
            "| photo | size | angle | scale | pyramid (y, x, angle, scale) | truth (y, x) | pyramid score | "
            "exhaustive score |",
            "|---|---:|---:|---:|---|---|---:|---:|",
        ]
        for o in misses:
            t = o.trial
            y, x, a, s = o.pose
            lines.append(
                f"| {t.photo} | {t.size} | {t.angle:.1f} | {t.scale:.3f} | ({y:.1f}, {x:.1f}, {a:.1f}, {s:.3f}) | "
                f"({t.centre[0]:.1f}, {t.centre[1]:.1f}) | {o.score:.4f} | {o.exhaustive:.4f} |"
            )
    lines.append(end)
    return "\n".join(lines)


def markers(patch: float) -> tuple[str, str]:
    """The report's section for runs with this occluder: the recall section for the default one, the accuracy
    section otherwise."""
    return (START, END) if patch == FLAT_PATCH else (ACCURACY_START, ACCURACY_END)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300, help="trials, spread over the photographs (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials (default 0)")
    parser.add_argument("--max-size", type=int, default=SIZES[1], help=f"largest template side (default {SIZES[1]})")
    parser.add_argument(
        "--flat-patch",
        type=float,
        default=FLAT_PATCH,
        help=f"share of the footprint the occluder covers (default {FLAT_PATCH}; another value writes the accuracy "
        "section instead of the recall one)",
    )
    parser.add_argument("--write", action="store_true", help="replace the Pose search section of BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    photos = {name: _photo(name) for name in PHOTOS}
    sizes = {name: largest_size(photo) for name, photo in photos.items()}
    rng = np.random.default_rng(args.seed)
    outcomes = []
    for i in range(args.trials):
        name = PHOTOS[i % len(PHOTOS)]
        outcome = run_trial(make_trial(name, photos[name], rng, args.max_size, args.flat_patch))
        outcomes.append(outcome)
        t = outcome.trial
        errors = pose_errors(t, outcome.pose)
        print(
            f"{i + 1:4d} {t.photo:<9} {t.size:4d} {t.angle:7.2f}° ×{t.scale:.3f}: "
            f"{'hit ' if outcome.hit else 'MISS'} errors {errors[0]:.3f} px {errors[1]:.3f}° {100 * errors[2]:.3f} % "
            f"score {outcome.score:.4f} (near-truth exhaustive {outcome.exhaustive:.4f}) {outcome.seconds:.2f} s",
            flush=True,
        )
        if args.write and (i + 1) % WRITE_EVERY == 0:  # a long run leaves its results so far in the report
            write(
                REPORT, summary(outcomes, sizes, args.max_size, args.trials, args.flat_patch), markers(args.flat_patch)
            )
    text = summary(outcomes, sizes, args.max_size, args.trials, args.flat_patch)
    print(text)
    if args.write:
        write(REPORT, text, markers(args.flat_patch))


if __name__ == "__main__":
    main()
