"""Check the planner: on a sweep of random problems, how close is method="auto" to the fastest engine?

Run: python benchmarks/sweep.py [--cases N]   (writes benchmarks/sweep.md)

Every engine that auto may pick and that can run a problem is timed (best of 3 after a warm-up), except engines
the cost model puts more than SKIP_FACTOR times slower than auto's pick and that would take over SKIP_SECONDS:
those are listed as not timed. auto's pick is then compared with the fastest timed engine. The problems come
from benchmarks/problems.py with a seed of their own (fit_cost.py trains on other seeds).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import CORRELATION, DISTANCE, Case, best_time, random_cases

import slidesim
from slidesim.cost import estimate_seconds

SKIP_FACTOR = 30.0
SKIP_SECONDS = 2.0
OUT = Path(__file__).resolve().parent / "sweep.md"


def target_cases() -> list[Case]:
    """The problems of the speed targets, so the sweep covers them too."""
    return [
        Case(1, 3, 512, 1, 32, "l1_similarity"),
        Case(1, 1, 1024, 1, 32, "zncc"),
        Case(1, 3, 512, 1, 32, "zncc"),
        Case(1, 1, 512, 64, 16, "zncc"),
        Case(1, 1, 512, 64, 16, "ssd"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=45, help="random problems besides the target problems")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cases = target_cases() + random_cases(7, args.cases, CORRELATION + DISTANCE)
    rows, ratios = [], []
    for case in cases:
        images, bank = case.inputs()
        chosen = slidesim.plan(images, bank, metric=case.metric, **case.options).engine
        problem = case.problem()
        budget = SKIP_FACTOR * estimate_seconds(chosen, problem)
        times, skipped = {}, []
        for engine in case.runnable():
            guess = estimate_seconds(engine, problem)
            if engine != chosen and guess > max(budget, SKIP_SECONDS):
                skipped.append(engine)
                continue
            times[engine] = best_time(case, engine)
        fastest = min(times, key=times.__getitem__)
        ratio = times[chosen] / times[fastest]
        ratios.append(ratio)
        timed = ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in sorted(times.items(), key=lambda x: x[1]))
        note = f"not timed (estimated > {SKIP_FACTOR:.0f}× auto): {', '.join(skipped)}" if skipped else ""
        rows.append(f"| {case.label()} | {chosen} | {fastest} | {ratio:.2f} | {timed} | {note} |")
        print(rows[-1], flush=True)
    within = sum(r <= 1.3 for r in ratios) / len(ratios)
    worst = max(ratios)
    header = [
        "# Planner sweep",
        "",
        f"`python benchmarks/sweep.py`, {datetime.date.today().isoformat()}: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, slidesim {slidesim.__version__}. "
        f"{len(ratios)} problems; auto's pick within 1.3× of the fastest engine on {within:.0%} of them; "
        f"worst {worst:.2f}×.",
        "",
        "| problem | auto | fastest | auto / fastest | times (ms) | |",
        "|---|---|---|---|---|---|",
    ]
    OUT.write_text("\n".join(header + rows) + "\n")
    print(f"within 1.3x: {within:.0%}, worst {worst:.2f}x; wrote {OUT}")


if __name__ == "__main__":
    main()
