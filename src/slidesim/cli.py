"""Command line: ``slidesim demo`` (also ``python -m slidesim demo``).

The command-line front end uses the public API only; it holds no numerical code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import __version__
from ._similarity import similarity
from .errors import SlidesimError

DEMO_METRICS = ("zncc", "l1_similarity", "ssd")


def _demo_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """A smooth random RGB scene [1, 3, 240, 320] and four templates cut from it, with their true corners."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((3, 16, 20))
    scene = np.kron(coarse, np.ones((15, 16)))  # blocky colour field
    yy, xx = np.mgrid[0:240, 0:320] / 40.0
    scene += 0.25 * np.sin(xx * 3 + yy)[None] + 0.05 * rng.standard_normal((3, 240, 320))
    scene = np.clip(scene, 0, None).astype(np.float32)[None]
    corners = [(30, 40), (120, 200), (180, 60), (60, 250)]
    bank = np.stack([scene[0, :, y : y + 24, x : x + 32] for y, x in corners])
    bank = bank + 0.02 * rng.standard_normal(bank.shape).astype(np.float32)  # the templates are noisy copies
    return scene, bank.astype(np.float32), corners


def _run_demo(_: argparse.Namespace) -> int:
    scene, bank, corners = _demo_scene()
    print(
        f"slidesim {__version__} demo: {bank.shape[0]} templates {bank.shape[2]}x{bank.shape[3]} (3 channels, "
        f"noisy copies) on a {scene.shape[2]}x{scene.shape[3]} RGB scene\n"
    )
    print(f"{'metric':<14} {'template':>8} {'true (y, x)':>12} {'found (y, x)':>13} {'score':>9} {'ms':>7}")
    for metric in DEMO_METRICS:
        start = time.perf_counter()
        scores = similarity(scene, bank, metric=metric)
        elapsed = (time.perf_counter() - start) * 1e3
        higher = metric != "ssd"
        for t, truth in enumerate(corners):
            flat = scores[0, t].argmax() if higher else scores[0, t].argmin()
            y, x = np.unravel_index(flat, scores.shape[-2:])
            found = (int(y), int(x))
            mark = "" if found == truth else "  <- wrong"
            print(
                f"{metric:<14} {t:>8} {truth!s:>12} {found!s:>13} {scores[0, t, y, x]:>9.4f} "
                f"{elapsed if t == 0 else 0:>7.1f}{mark}"
            )
    black = similarity(np.zeros((16, 16), np.float32), np.zeros((4, 4), np.float32), metric="l1_similarity")
    print(f"\nA black template on a black region: l1_similarity = {black[0, 0]:.1f} (conv2d would give 0).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slidesim", description="Slide templates over images and score every position."
    )
    parser.add_argument("--version", action="version", version=f"slidesim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="find templates in a built-in scene and print what was found")
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slidesim`` command. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except SlidesimError as error:
        print(f"slidesim: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
