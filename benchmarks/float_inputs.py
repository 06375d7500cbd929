"""The same pictures as floats: what a call costs when the image is not uint8.

Users hand over float images as often as uint8 ones: scikit-image's convention is float64 in [0, 1]
(`img_as_float`), PyTorch pipelines float32 in [0, 1], and many convert uint8 to float32 before matching. The values
are the same picture's, so the time should be too. Each case scores one grey picture (the 1920×1080 screenshot, the
camera and astronaut photographs) with templates of 24×80 and 64² cut at fixed seeds, in four forms: uint8, float32
holding the same integers, float32 / 255 and float64 / 255, side by side with cv2.matchTemplate on the same form
(float64 converted to float32 in the timed call: OpenCV takes no float64). Best of interleaved rounds (see
real_images.py), 2 threads.

    python benchmarks/float_inputs.py            # print the table
    python benchmarks/float_inputs.py --write    # and replace its section of BENCHMARKS.md
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import numpy as np
import scenes
from real_images import CV2_METHODS, Budget, machine, race, section_script

import slidesim

START, END = "<!-- float-inputs:start -->", "<!-- float-inputs:end -->"
METRICS = ("ssd", "ssd_normed", "ncc", "zncc")
SIZES = ((24, 80), (64, 64))
FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "uint8": lambda grey: grey,
    "float32, same integers": lambda grey: grey.astype(np.float32),
    "float32 / 255": lambda grey: grey.astype(np.float32) / 255,
    "float64 / 255": lambda grey: grey / 255.0,
}


def cv2_call(image: np.ndarray, template: np.ndarray, metric: str) -> Callable[[], object]:
    import cv2

    method = getattr(cv2, CV2_METHODS[metric])
    if image.dtype == np.float64:
        return lambda: cv2.matchTemplate(image.astype(np.float32), template.astype(np.float32), method)
    return lambda: cv2.matchTemplate(image, template, method)


def run(budget: Budget) -> list[tuple[str, str, str, float, float]]:
    """(picture and template, form, metric, slidesim ms, cv2 ms) of every case, printed as they come."""
    rows = []
    pictures = [s for s in scenes.scenes() if s.name in ("screenshot", "camera", "astronaut")]
    for seed, scene in enumerate(pictures):
        for template in scenes.cut_templates(scene.grey, seed=seed, sizes=SIZES):
            name = f"{scene.name} {scene.grey.shape[1]}×{scene.grey.shape[0]}, {template.label}"
            for form, convert in FORMS.items():
                image = convert(scene.grey)
                cut = template.cut(image).copy()
                tools = {}
                for metric in METRICS:
                    tools[f"slidesim {metric}"] = lambda m=metric, i=image, t=cut: slidesim.similarity(i, t, metric=m)
                    tools[f"cv2 {metric}"] = cv2_call(image, cut, metric)
                times, _ = race(tools, budget)
                for metric in METRICS:
                    ours, theirs = times[f"slidesim {metric}"], times[f"cv2 {metric}"]
                    rows.append((name, form, metric, ours, theirs))
                    print(f"{name:<36} {form:<24} {metric:<11} {ours:9.2f} ms  cv2 {theirs:8.2f} ms", flush=True)
    return rows


def section(rows: list[tuple[str, str, str, float, float]]) -> str:
    by_form = {form: [cv / ours for _, f, _, ours, cv in rows if f == form] for form in FORMS}
    uint8 = {(n, m): ours for n, f, m, ours, _ in rows if f == "uint8"}
    lines = [
        START,
        "## Float inputs",
        "",
        "`python benchmarks/float_inputs.py`: the screenshot and the camera and astronaut photographs in grey, "
        "templates of 24×80 and 64², scored as uint8, as float32 holding the same integers, as float32 / 255 and "
        "as float64 / 255 (scikit-image's convention), side by side with cv2.matchTemplate on the same form "
        "(float64 converted to float32 inside the timed call: OpenCV takes no float64). Best of interleaved "
        "rounds, ratios above 1 mean slidesim is faster.",
        "",
        f"Measured on {machine()}.",
        "",
    ]
    for form, ratios in by_form.items():
        lines.append(f"- {form}: cv2 / slidesim median {statistics.median(ratios):.2f}, worst {min(ratios):.2f}")
    slowdown = [ours / uint8[(n, m)] for n, f, m, ours, _ in rows if f != "uint8"]
    lines.append(
        f"- slidesim on a float form / on uint8, same picture and metric: median {statistics.median(slowdown):.2f}, "
        f"worst {max(slowdown):.2f}"
    )
    lines += ["", "| case | form | metric | slidesim ms | cv2 ms | cv2 / slidesim |", "|---|---|---|---|---|---|"]
    for name, form, metric, ours, theirs in rows:
        lines.append(f"| {name} | {form} | {metric} | {ours:.2f} | {theirs:.2f} | {theirs / ours:.2f} |")
    return "\n".join([*lines, END])


def main() -> None:
    section_script(__doc__.splitlines()[0], run, section, (START, END))


if __name__ == "__main__":
    main()
