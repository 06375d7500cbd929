"""Fit the planner's throughput constants on this machine and write them to src/slidesim/_cost_constants.py.

Run: python benchmarks/fit_cost.py [--cases N] [--device cuda] [--engines numba,fft]
     (--device cuda fits the GPU table, src/slidesim/_cost_constants_cuda.py, on the machine's GPU; --engines
     refits only those engines, after a change to their code, and keeps the others' constants and provenance)

Each engine runs a set of random training problems (benchmarks/problems.py, a different seed from the sweep); its
constants are the non-negative least-squares fit of measured time against the work counts of
slidesim.cost.features, with each problem weighted by its own time so that small and large problems count alike.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import CORRELATION, DISTANCE, best_time, random_cases

import slidesim
from slidesim import cost

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "slidesim"
TARGETS = {"cpu": PACKAGE / "_cost_constants.py", "cuda": PACKAGE / "_cost_constants_cuda.py"}
MAX_WORK = {"direct": 1.5e9, "reference": 2e7}  # work counts above which an engine is too slow to time here


SHARED = ("statistics_pixels", "masked_statistics_nlogn", "masked_statistics_updates", "finished_outputs")
"""Work that numba's correlations share with conv (the same window statistics and finish): priced alike."""


def fit_engine(engine: str, cases, fixed: dict[str, float] | None = None) -> tuple[dict[str, float], float]:
    """(constants, median |log error|) of ``engine`` on ``cases``; constants in ``fixed`` are taken as given and
    only the others are fitted."""
    fixed = fixed or {}
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
    names = sorted({name for row in rows for name in row} - set(fixed))
    A = np.array([[row.get(name, 0.0) for name in names] for row in rows])
    t = np.array(times)
    given = np.array([sum(fixed[name] * row.get(name, 0.0) for name in fixed) for row in rows])
    solution, _ = nnls(A / t[:, None], np.maximum(t - given, 0.0) / t)
    predicted = A @ solution + given
    spread = float(np.median(np.abs(np.log(predicted / t))))
    constants = dict(zip(names, (float(v) for v in solution), strict=True))
    constants.update(fixed)
    return dict(sorted(constants.items())), spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=36, help="training problems per metric family")
    parser.add_argument("--device", choices=sorted(TARGETS), default="cpu", help="which table to fit")
    parser.add_argument("--engines", help="comma-separated engines to refit (default: all)")
    args = parser.parse_args()
    device = args.device
    if device == "cpu":
        torch.set_num_threads(2)
    elif not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU; none is visible to torch.")
    fast = "numba" if device == "cpu" else "triton"
    families = {
        "direct": random_cases(101, args.cases, CORRELATION + DISTANCE, max_size=160, device=device),
        fast: random_cases(
            102,
            args.cases * (2 if device == "cpu" else 1),
            DISTANCE + (CORRELATION if device == "cpu" else ()),
            device=device,
        ),
        "conv": random_cases(103, args.cases, CORRELATION, device=device),
        "fft": random_cases(104, args.cases, CORRELATION, device=device),
        "reference": random_cases(105, 8, CORRELATION + DISTANCE, max_size=96, device=device),
    }
    chosen = args.engines.split(",") if args.engines else list(families)
    unknown = sorted(set(chosen) - set(families))
    if unknown:
        sys.exit(f"--engines: unknown {', '.join(unknown)}; expected some of {', '.join(families)}")
    kept, kept_spreads, kept_provenance = _current_table(device, [e for e in families if e not in chosen])
    fitted, spreads = {}, {}
    # conv first: the numba engine's correlations take conv's constants for the work they share (SHARED)
    for engine in sorted(families, key=lambda name: name != "conv"):
        cases = families[engine]
        if engine not in chosen:
            fitted[engine], spreads[engine] = kept[engine], kept_spreads.get(engine, float("nan"))
            continue
        print(f"{engine}:", flush=True)
        shared = {name: fitted["conv"][name] for name in SHARED if name in fitted.get("conv", {})}
        fitted[engine], spreads[engine] = fit_engine(engine, cases, shared if engine == "numba" else None)
        print(f"  -> {fitted[engine]} (median |log error| {spreads[engine]:.2f})", flush=True)
    if device == "cpu":
        import numba

        where, kernels = f"{torch.get_num_threads()} threads", f"numba {numba.__version__}"
    else:
        import triton

        where, kernels = torch.cuda.get_device_name(), f"CUDA {torch.version.cuda}, triton {triton.__version__}"
    provenance = (
        f"fitted by benchmarks/fit_cost.py on {datetime.date.today().isoformat()}: {platform.machine()}, "
        f"{where}, Python {platform.python_version()}, torch {torch.__version__}, {kernels}, "
        f"slidesim {slidesim.__version__}"
    )
    if kept:
        provenance = f"{', '.join(chosen)} {provenance}; {', '.join(kept)} kept from a table {kept_provenance}"
    table = "the CPU" if device == "cpu" else "CUDA tensors"
    lines = [
        f'"""Throughput constants of the cost model for {table} (floor L0): seconds per counted unit of work (see',
        ":func:`slidesim.cost.features`). Written by ``python benchmarks/fit_cost.py``: do not edit by hand.",
        '"""',
        "",
        "PROVENANCE = (\n" + "".join(f'    "{line}"\n' for line in _wrapped(provenance)) + ")",
        "",
        "# median |log(predicted / measured)| of each engine's fit:",
        "# " + ", ".join(f"{k} {spreads[k]:.2f}" for k in families),
        "CONSTANTS: dict[str, dict[str, float]] = {",
    ]
    for engine in families:
        constants = fitted[engine]
        lines.append(f'    "{engine}": {{')
        lines += [f'        "{name}": {value:.4g},' for name, value in constants.items()]
        lines.append("    },")
    lines.append("}")
    TARGETS[device].write_text("\n".join(lines) + "\n")
    print(f"wrote {TARGETS[device]}")


def _wrapped(text: str) -> list[str]:
    """``text`` in pieces of at most about 100 characters that end at spaces and join back to it exactly."""
    return textwrap.wrap(text, 100, break_long_words=False, drop_whitespace=False)


def _current_table(device: str, engines: list[str]) -> tuple[dict, dict[str, float], str]:
    """The written table's constants of ``engines``, their fits' spreads and the table's provenance."""
    if not engines:
        return {}, {}, ""
    module = importlib.import_module(f"slidesim.{TARGETS[device].stem}")
    missing = [engine for engine in engines if engine not in module.CONSTANTS]
    if missing:
        sys.exit(f"the current table has no constants for {', '.join(missing)}: refit them too (--engines)")
    # the table writes each fit's median |log error| on one comment line: "# direct 0.15, numba 0.37, ..."
    spread_line = re.search(r"^# ((?:\w+ (?:\d+\.\d+|nan)(?:, )?)+)$", TARGETS[device].read_text(), re.MULTILINE)
    pairs = (item.split(" ") for item in spread_line.group(1).split(", ")) if spread_line else ()
    spreads = {name: float(value) for name, value in pairs}
    return {engine: module.CONSTANTS[engine] for engine in engines}, spreads, module.PROVENANCE


if __name__ == "__main__":
    main()
