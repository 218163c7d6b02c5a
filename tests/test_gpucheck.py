"""deploy/gpu-check.sh and worker/local/gpucheck.py on a CPU-only machine: the script is valid shell, refuses to run
here with the reason, and its decisions (agreement, img/s timing) are checked with the simulated engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from models.engines import SimulatedEngine
from worker.local import gpucheck

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "gpu-check.sh"


def test_the_script_is_valid_shell_and_passes_shellcheck() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck)")
    done = subprocess.run([shellcheck, "--severity=info", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_the_script_fits_ten_minutes() -> None:
    limits = [int(seconds) for _name, seconds in re.findall(r"\bstep (\w+) (\d+) ", SCRIPT.read_text("utf-8"))]
    # Preflight (20 s) and the weights (45 s) come first; each step may take 10 s more to be killed.
    assert len(limits) == 4 and 20 + 45 + sum(limits) + 4 * 10 <= 600, limits


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason="this Paddle is a CUDA build: the check would run")
def test_the_script_refuses_without_a_gpu_build() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert done.returncode == 2, done.stderr
    assert "gpu-check:" in done.stderr and ("not a CUDA build" in done.stderr or "needs" in done.stderr)


def test_agreement_counts_the_top20_overlap() -> None:
    rng = np.random.default_rng(0)
    ref = {"a": {"features": rng.random((4, 8)), "probabilities": rng.random(30), "top20": list(range(20))}}
    near = {
        "a": {
            "features": ref["a"]["features"] + 1e-3,
            "probabilities": ref["a"]["probabilities"],
            "top20": [*range(18), 25, 26],
        }
    }
    report = gpucheck.compare(ref, near)
    video = report["videos"]["a"]
    assert video["top20_overlap"] == 18 and not video["same_order"] and report["ok"]
    assert video["features_max_abs"] == pytest.approx(1e-3)
    far = {"a": {**near["a"], "top20": [*range(17), 25, 26, 27]}}
    assert not gpucheck.compare(ref, far)["ok"]


def test_images_per_second_times_the_runs_after_a_warm_up() -> None:
    engine = SimulatedEngine(0.5, (2048,), (3, 224, 224))  # 0.5 ms per image: at most 2000 images/s
    figures = gpucheck.images_per_second(engine, 8, seconds=0.3)
    assert figures["runs"] >= 3 and engine.rows == 8 * (figures["runs"] + 1)
    assert 0 < figures["images_per_s"] <= 2000
