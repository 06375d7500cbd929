"""What `match` costs beyond its own `similarity` call: the peaks and their sub-pixel refinement.

Eight 32 × 32 templates cut at fixed places from a 2032 × 2032 uint8 photograph (scikit-image's astronaut in grey,
enlarged with cubic splines: smooth, with flat dark areas, so that two templates are nearly flat), one call each,
interleaved, best of several rounds: `similarity` (the score maps), `match` with k = 1 and k = 10 per template,
with and without sub-pixel refinement. The target: `match` with refinement at most 1.5 times its `similarity`.

    python benchmarks/match_cost.py            # print the table
    python benchmarks/match_cost.py --write    # and replace its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from real_images import THREADS, machine, write

import slidesim

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
START, END = "<!-- match-cost:start -->", "<!-- match-cost:end -->"
SIDE, TEMPLATES, TEMPLATE = 2032, 8, 32


def problem() -> tuple[np.ndarray, np.ndarray]:
    """(image [1, 1, 2032, 2032] uint8, bank [8, 1, 32, 32] uint8 cut from it at fixed places)."""
    from skimage import data, transform

    grey = data.astronaut().mean(axis=2)
    enlarged = transform.resize(grey, (SIDE, SIDE), order=3, anti_aliasing=False)
    image = np.clip(np.round(enlarged), 0, 255).astype(np.uint8)
    corners = np.random.default_rng(0).integers(50, SIDE - 50 - TEMPLATE, (TEMPLATES, 2))
    bank = np.stack([image[y : y + TEMPLATE, x : x + TEMPLATE] for y, x in corners])[:, None]
    return image[None, None], bank


def calls(image: np.ndarray, bank: np.ndarray) -> dict[str, Callable[[], object]]:
    return {
        "similarity": lambda: slidesim.similarity(image, bank),
        "match(k=1)": lambda: slidesim.match(image, bank, k=1),
        "match(k=1, subpixel=False)": lambda: slidesim.match(image, bank, k=1, subpixel=False),
        "match(k=10)": lambda: slidesim.match(image, bank, k=10),
        "match(k=10, subpixel=False)": lambda: slidesim.match(image, bank, k=10, subpixel=False),
    }


def race(tools: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each call over ``rounds`` interleaved rounds, in seconds."""
    best = dict.fromkeys(tools, float("inf"))
    for call in tools.values():  # warm: compile, load, first allocations
        call()
    for _ in range(rounds):
        for name, call in tools.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def section(times: dict[str, float], rounds: int) -> str:
    base = times["similarity"]

    def target(name: str, ratio: float) -> str:
        if name == "similarity" or "subpixel=False" in name:
            return "—"
        return "✓" if ratio <= 1.5 else "✗"

    rows = [
        f"| {name} | {1e3 * seconds:.0f} | {seconds / base:.2f} | {target(name, seconds / base)} |"
        for name, seconds in times.items()
    ]
    per_match = 1e3 * (times["match(k=10)"] - times["match(k=10, subpixel=False)"]) / (10 * TEMPLATES)
    return "\n".join(
        [
            START,
            "## What match costs beyond similarity",
            "",
            f"`python benchmarks/match_cost.py`: {TEMPLATES} templates of {TEMPLATE}² on a {SIDE}² uint8 photograph, "
            f"best of {rounds} interleaved rounds; target: `match` with sub-pixel refinement at most 1.5 times its "
            f"`similarity`. Measured on {machine()}.",
            "",
            "| call | ms | / similarity | target |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Sub-pixel refinement: {per_match:.2f} ms per match (k = 10: {10 * TEMPLATES} matches refined together).",
            END,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--write", action="store_true", help="replace this section of BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    image, bank = problem()
    text = section(race(calls(image, bank), args.rounds), args.rounds)
    print(text)
    if args.write:
        write(REPORT, text, (START, END))


if __name__ == "__main__":
    main()
