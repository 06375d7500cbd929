"""Masked templates on real pictures: a disk-shaped mask (the part of a square template that is the object) over
uint8 photographs and the screenshot, against cv2.matchTemplate with the same mask.

Each case cuts a template of 40² or 64² at a fixed seed from a grey picture (the 1920×1080 screenshot, the camera
and astronaut photographs), masks it with the inscribed disk (0/1 weights) and scores ccorr, ncc, ssd, ssd_normed
and zncc, side by side with OpenCV's masked call (mask as uint8 0/255) in one process, best of interleaved rounds
(see real_images.py), 2 threads. Every case runs on the uint8 picture and on its float32 copy divided by 255
(scikit-image's convention), whose fractional pixels make the masked energies inexact.

    python benchmarks/masked_photos.py            # print the table
    python benchmarks/masked_photos.py --write    # and replace its section of BENCHMARKS.md
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
import scenes
from float_inputs import FORMS as FLOAT_FORMS
from real_images import CV2_METHODS, Budget, machine, race, section_script

import slidesim

START, END = "<!-- masked-photos:start -->", "<!-- masked-photos:end -->"
METRICS = ("ccorr", "ncc", "ssd", "ssd_normed", "zncc")
SIZES = ((40, 40), (64, 64))
FORMS = {form: FLOAT_FORMS[form] for form in ("uint8", "float32 / 255")}


def disk(side: int) -> np.ndarray:
    """The disk inscribed in a side × side square, 0/1 float32."""
    yy, xx = np.mgrid[:side, :side]
    centre = (side - 1) / 2
    return (((yy - centre) ** 2 + (xx - centre) ** 2) <= (side / 2) ** 2).astype(np.float32)


def cv2_call(image: np.ndarray, template: np.ndarray, mask: np.ndarray, metric: str) -> Callable[[], object]:
    import cv2

    method, mask8 = getattr(cv2, CV2_METHODS[metric]), (mask * 255).astype(np.uint8)
    return lambda: cv2.matchTemplate(image, template, method, mask=mask8)


def run(budget: Budget) -> list[tuple[str, str, str, str, float, float]]:
    """(case, form, metric, engine, slidesim ms, cv2 ms) of every case, printed as they come."""
    rows = []
    pictures = [s for s in scenes.scenes() if s.name in ("screenshot", "camera", "astronaut")]
    for seed, scene in enumerate(pictures):
        for template in scenes.cut_templates(scene.grey, seed=seed, sizes=SIZES):
            name = f"{scene.name} {scene.grey.shape[1]}×{scene.grey.shape[0]}, {template.label} disk"
            mask = disk(template.height)
            for form, convert in FORMS.items():
                image = convert(scene.grey)
                cut = template.cut(image).copy()
                tools = {}
                for metric in METRICS:
                    tools[f"slidesim {metric}"] = lambda m=metric, i=image, t=cut, w=mask: slidesim.similarity(
                        i, t, metric=m, mask=w
                    )
                    tools[f"cv2 {metric}"] = cv2_call(image, cut, mask, metric)
                times, _ = race(tools, budget)
                for metric in METRICS:
                    engine = slidesim.plan(image, cut, metric=metric, mask=mask).engine
                    ours, theirs = times[f"slidesim {metric}"], times[f"cv2 {metric}"]
                    rows.append((name, form, metric, engine, ours, theirs))
                    print(
                        f"{name:<40} {form:<14} {metric:<11} {engine:<6} {ours:9.2f} ms  cv2 {theirs:8.2f} ms",
                        flush=True,
                    )
    return rows


def section(rows: list[tuple[str, str, str, str, float, float]]) -> str:
    summary = []
    for form in FORMS:
        some = [row for row in rows if row[1] == form]
        ratios = [cv / ours for *_, ours, cv in some]
        worst = min(some, key=lambda row: row[5] / row[4])
        summary.append(
            f"- {form}: cv2 / slidesim median {statistics.median(ratios):.2f}, worst {min(ratios):.2f} "
            f"({worst[0]}, {worst[2]})"
        )
    lines = [
        START,
        "## Masked templates on real pictures",
        "",
        "`python benchmarks/masked_photos.py`: templates of 40² and 64² cut at fixed seeds from the grey screenshot "
        "and the camera and astronaut photographs, as uint8 and as float32 divided by 255, masked by their inscribed "
        "disk (0/1), scored by slidesim (`method='auto'`) and by cv2.matchTemplate with the same mask, side by side, "
        "best of interleaved rounds; ratios above 1 mean slidesim is faster.",
        "",
        f"Measured on {machine()}.",
        "",
        *summary,
        "",
        "| case | pixels | metric | engine | slidesim ms | cv2 ms | cv2 / slidesim |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, form, metric, engine, ours, theirs in rows:
        lines.append(f"| {name} | {form} | {metric} | {engine} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f} |")
    return "\n".join([*lines, END])


def main() -> None:
    section_script(__doc__.splitlines()[0], run, section, (START, END))


if __name__ == "__main__":
    main()
