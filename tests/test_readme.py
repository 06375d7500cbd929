"""The README's Python examples run as written, each on its own in a fresh interpreter (a reader copies one block,
not the page)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)

# What a block must give, checked after it runs: (text that identifies the block, statements appended to it)
CHECKS = [
    ('metric="l1_similarity", stride=2', "assert scores.shape == (2, 2, 217, 289)\nassert (y, x) == (30, 40)"),
    (
        "slidesim.dask.match",
        "assert lazy.shape == (1, 1, 569, 471)\n"
        "assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (215.5, 314.5)",
    ),
    ("found = slidesim.match(images, bank", "assert found.y.shape == (8,) and peaks.x.shape == (12,)"),
    (
        'read_template("face.png")',
        "assert (round(float(found.y[0]), 2), round(float(found.x[0]), 2)) == (189.5, 214.5)\n"
        "assert (round(float(same.y[0]), 2), round(float(same.x[0]), 2)) == (189.5, 214.5)",
    ),
]


def _checked(block: str) -> str:
    return block + "".join("\n" + check + "\n" for marker, check in CHECKS if marker in block)


def test_the_readme_has_examples_and_one_reads_image_files() -> None:
    assert len(BLOCKS) >= 4
    assert any("read_image(" in block and ".save(" in block for block in BLOCKS)
    for marker, _ in CHECKS:
        assert sum(marker in block for block in BLOCKS) == 1, marker


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_readme_example_runs_on_its_own(index: int, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(README.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _checked(BLOCKS[index])],
        cwd=tmp_path,  # blocks that write files write them here
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"README block {index} failed alone:\n{BLOCKS[index]}\n{done.stderr[-3000:]}"


def test_the_set_up_installs_the_cpu_build_and_the_test_extra_leaves_triton_out() -> None:
    tomllib = pytest.importorskip("tomllib")
    root = README.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(requirement.startswith("triton") for requirement in extras["test"])
    assert "slidesim[test]" in extras["gpu-test"] and any(r.startswith("triton") for r in extras["gpu-test"])
    assert '-e ".[gpu-test]"' in (root / ".ci" / "run").read_text()  # CI keeps the Triton interpreter's tests
    set_up = README.read_text().split("## Set-up")[1].split("\n## ")[0]
    commands = re.findall(r"```bash\n(.*?)```", set_up, re.S)[0]
    assert re.search(r'pip install "torch==[\d.]+" --index-url \S+/whl/cpu', commands)
    assert 'pip install "torch==2.13.0"`' in set_up  # the plain line, for GPU machines
    assert re.search(r"measured [\d.]+ GB with `du -sh`", set_up)
