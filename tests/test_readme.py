"""The README's code runs as written: every ```python and ```bash block, in a fresh interpreter or shell at the
project root, with the embedded model. A block that cannot run here says so on the line before its fence,
``<!-- readme-test: skip, REASON -->`` (a GPU run, a server that runs until stopped, a placeholder for the
reader's own package); the reason is required."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```(\w*)$")
SKIP = re.compile(r"^<!-- readme-test: skip, (.+\S) -->$")
RUNNERS = {"python": [sys.executable, "-"], "bash": ["bash", "-euo", "pipefail", "-s"]}


def readme_blocks(path: str) -> list[tuple[int, str, str, str | None]]:
    """(line of the opening fence, language, code, skip reason or None) of every fenced block."""
    with open(path) as f:
        lines = f.read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
        skip = SKIP.match(lines[i - 1]) if i else None
        blocks.append((i + 1, match.group(1), "\n".join(lines[i + 1 : end]), skip.group(1) if skip else None))
        i = end + 1
    return blocks


BLOCKS = [b for b in readme_blocks(os.path.join(ROOT, "README.md")) if b[1] in RUNNERS]


def test_the_extractor_sees_the_blocks_and_every_skip_has_its_marker():
    with open(os.path.join(ROOT, "README.md")) as f:
        markers = [line for line in f.read().splitlines() if line.startswith("<!-- readme-test")]
    skipped = [b for b in BLOCKS if b[3] is not None]
    assert len(markers) == len(skipped), "a readme-test marker that is malformed or not right before a fence"
    assert any(b[3] is None and b[1] == "python" for b in BLOCKS)


@pytest.mark.parametrize(("line", "language", "code", "skip"), BLOCKS, ids=[f"README.md:{b[0]}" for b in BLOCKS])
def test_readme_block_runs_as_written(line, language, code, skip):
    if skip is not None:
        pytest.skip(skip)
    env = {**os.environ, "PYTHONPATH": ROOT, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(RUNNERS[language], input=code, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README.md:{line} ({language}) failed:\n{code}\n--- stderr:\n{proc.stderr[-3000:]}"
