"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no Python example"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["scores"].shape == (2, 2, 217, 289)
    assert (namespace["y"], namespace["x"]) == (30, 40)
    assert namespace["lazy"].shape == (1, 1, 569, 471)
    found = namespace["found"]
    assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (215.5, 314.5)
