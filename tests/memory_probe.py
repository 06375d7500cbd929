"""Peak resident memory of a snippet, measured in a fresh process (Linux: VmHWM reset through clear_refs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROLOGUE = """
import json, torch
from pathlib import Path
torch.set_num_threads(2)

def _status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def measure(fn):
    base = _status('VmRSS')
    Path('/proc/self/clear_refs').write_text('5')
    result = fn()
    peak = _status('VmHWM') - base
    return result, peak
"""


def available() -> bool:
    """True where the peak can be reset (Linux with a writable clear_refs)."""
    path = Path("/proc/self/clear_refs")
    try:
        path.write_text("5")
    except OSError:
        return False
    return True


def peak_bytes(setup: str, call: str, warmup: str = "") -> dict[str, float]:
    """Run ``setup`` then ``warmup`` then measure ``call`` (an expression) in a fresh interpreter.

    Returns:
        {"peak": bytes above the resident size just before the call, "output": bytes of the returned tensor}.
    """
    code = (
        PROLOGUE
        + textwrap.dedent(setup)
        + "\n"
        + textwrap.dedent(warmup)
        + f"""
out, peak = measure(lambda: {call})
print(json.dumps({{"peak": peak, "output": out.numel() * out.element_size()}}))
"""
    )
    # Large blocks straight from mmap go back to the system when freed, so the peak measures live memory rather
    # than what glibc's per-thread arenas happen to keep (which varied by tens of MiB from run to run).
    # Triton's interpreter (TRITON_INTERPRET=1, set for the tests) is never what auto runs on CPU tensors, and
    # warming it up on a many-channel problem takes most of a minute: the probes leave it out.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm_every_engine(images: str, templates: str, metric: str) -> str:
    """A warm-up statement that runs every engine auto may pick on a small problem, so that one-time costs
    (importing numba, loading its cached kernels, torch's first FFT plan) stay out of the measured peak."""
    return (
        "from slidesim import engines\n"
        "for _name in engines.auto_engines():\n"
        "    try:\n"
        f"        slidesim.similarity({images}, {templates}, metric={metric!r}, method=_name)\n"
        "    except slidesim.EngineUnavailableError:\n"
        "        pass\n"
    )


LIMITED = """
import json, resource, torch, numpy as np, slidesim
torch.set_num_threads(1)

def _virtual():
    for line in open('/proc/self/status'):
        if line.startswith('VmSize'):
            return int(line.split()[1]) * 1024

def outcome(fn):
    try:
        found = fn()
    except Exception as error:  # the test reads the class and message
        return {"error": type(error).__name__, "slidesim": isinstance(error, slidesim.SlidesimError),
                "message": str(error)}
    return {"error": None, "matches": [{k: float(v) for k, v in row.items()} for row in found.rows()]}
"""


def limited(setup: str, budget: int, calls: dict[str, str]) -> dict[str, dict]:
    """Run ``setup``, then each of ``calls`` (expressions) in a fresh interpreter whose address space may grow by
    no more than ``budget`` bytes beyond what it holds after ``setup`` (``resource.setrlimit(RLIMIT_AS)``): a call
    that allocates more fails there, and cannot take the machine down.

    Returns:
        {name: {"error": exception class name or None, "slidesim": whether it is a SlidesimError, "message",
        or "matches": the rows of the Matches}}.
    """
    code = (
        LIMITED
        + textwrap.dedent(setup)
        + f"""
_hard = resource.getrlimit(resource.RLIMIT_AS)[1]
_soft = _virtual() + {int(budget)}
resource.setrlimit(resource.RLIMIT_AS, (_soft if _hard == resource.RLIM_INFINITY else min(_soft, _hard), _hard))
results = {{}}
"""
        + "".join(f"results[{name!r}] = outcome(lambda: {call})\n" for name, call in calls.items())
        + "print(json.dumps(results))\n"
    )
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise AssertionError(f"the limited interpreter failed (code {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
