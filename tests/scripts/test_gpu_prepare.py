"""scripts/gpu_prepare.sh, the CPU half of every device call, run on a clone of this checkout: the embedded
GGUF split into the two halves the device joins, the comparison trees, and the device command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from minivllm import default_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_prepare_splits_the_gguf_and_prints_the_command(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the script archives commits)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True)
    shutil.copy(ROOT / "scripts" / "gpu_prepare.sh", clone / "scripts" / "gpu_prepare.sh")  # this tree's
    if (ROOT.parent / "shared").is_dir():  # the device preamble the printed command starts with
        shutil.copytree(ROOT.parent / "shared", tmp_path / "shared")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's minivllm, as the script's `python3 -c` imports it
    run = subprocess.run(
        ["bash", "scripts/gpu_prepare.sh", "--no-wheels"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    gguf = Path(default_model()).read_bytes()
    halves = (clone / ".smol-a" / "part").read_bytes(), (clone / ".smol-b" / "part").read_bytes()
    assert halves[0] + halves[1] == gguf and abs(len(halves[0]) - len(halves[1])) <= 1
    for rev in ("300ebbe", "074673a"):
        assert (clone / ".ab" / rev / "benchmarks" / "throughput.py").is_file()
    assert "bash scripts/gpu_check.sh" in run.stdout
    excluded = (clone / ".git" / "info" / "exclude").read_text().split()
    assert {"/.whl/", "/.smol-a/", "/.smol-b/", "/.ab/"} <= set(excluded)
