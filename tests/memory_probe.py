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
