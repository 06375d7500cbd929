"""Fit the planner's throughput constants on this machine and write them to src/slidesim/_cost_constants.py.

Run: python benchmarks/fit_cost.py [--cases N]

Each engine runs a set of random training problems (benchmarks/problems.py, a different seed from the sweep); its
constants are the non-negative least-squares fit of measured time against the work counts of
slidesim.cost.features, with each problem weighted by its own time so that small and large problems count alike.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import CORRELATION, DISTANCE, best_time, random_cases

import slidesim
from slidesim import cost

TARGET = Path(__file__).resolve().parents[1] / "src" / "slidesim" / "_cost_constants.py"
MAX_WORK = {"direct": 1.5e9, "reference": 2e7}  # work counts above which an engine is too slow to time here


def fit_engine(engine: str, cases) -> tuple[dict[str, float], float]:
    rows, times = [], []
    for case in cases:
        problem = case.problem()
        if engine not in case.runnable() and engine != "reference":
            continue
        counts = cost.features(engine, problem)
        work = max(v for k, v in counts.items() if k != "calls")
        if work > MAX_WORK.get(engine, float("inf")):
            continue
        rows.append(counts)
        times.append(best_time(case, engine))
        print(f"  {engine:<9} {case.label():<70} {times[-1] * 1e3:9.2f} ms", flush=True)
    names = sorted({name for row in rows for name in row})
    A = np.array([[row.get(name, 0.0) for name in names] for row in rows])
    t = np.array(times)
    solution, _ = nnls(A / t[:, None], np.ones_like(t))
    predicted = A @ solution
    spread = float(np.median(np.abs(np.log(predicted / t))))
    return dict(zip(names, (float(v) for v in solution), strict=True)), spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=36, help="training problems per metric family")
    args = parser.parse_args()
    torch.set_num_threads(2)
    families = {
        "direct": random_cases(101, args.cases, CORRELATION + DISTANCE, max_size=160),
        "numba": random_cases(102, args.cases, DISTANCE),
        "conv": random_cases(103, args.cases, CORRELATION),
        "fft": random_cases(104, args.cases, CORRELATION),
        "reference": random_cases(105, 8, CORRELATION + DISTANCE, max_size=96),
    }
    fitted, spreads = {}, {}
    for engine, cases in families.items():
        print(f"{engine}:", flush=True)
        fitted[engine], spreads[engine] = fit_engine(engine, cases)
        print(f"  -> {fitted[engine]} (median |log error| {spreads[engine]:.2f})", flush=True)
    import numba

    provenance = (
        f"fitted by benchmarks/fit_cost.py on {datetime.date.today().isoformat()}: {platform.machine()}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}, "
        f"numba {numba.__version__}, slidesim {slidesim.__version__}"
    )
    lines = [
        '"""Throughput constants of the cost model (seconds per counted unit of work; see',
        ":func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.",
        '"""',
        "",
        f"PROVENANCE = (\n    {provenance[:100]!r}\n    {provenance[100:]!r}\n)",
        "",
        "# median |log(predicted / measured)| of each engine's fit:",
        "# " + ", ".join(f"{k} {v:.2f}" for k, v in spreads.items()),
        "CONSTANTS: dict[str, dict[str, float]] = {",
    ]
    for engine, constants in fitted.items():
        lines.append(f"    {engine!r}: {{")
        lines += [f"        {name!r}: {value:.4g}," for name, value in constants.items()]
        lines.append("    },")
    lines.append("}")
    TARGET.write_text("\n".join(lines) + "\n")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
