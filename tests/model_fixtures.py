"""Shared helpers for the model tests: paths to ../shared, cached generated weights, small videos.

Import the fixtures you need into a test module (`from tests.model_fixtures import seed0_weights`) or use
the plain helpers. Nothing here relies on `tests/conftest.py`, which belongs to another part of the suite.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from worker.local.demo import encode_clip

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VIDEOS = SHARED / "videos"
GOLDEN = SHARED / "golden"
LABELS = SHARED / "label_3396.txt"
MAKE_WEIGHTS = SHARED / "tools" / "make_weights.py"
WEIGHTS_CACHE = REPO / ".cache" / "test-weights"
# The device of the fidelity fixtures and CLI runs: cpu, or gpu under deploy/gpu-check.sh.
TEST_DEVICE = os.environ.get("VIDEOTAG_TEST_DEVICE", "cpu")
SAMPLE_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4")
TOLERANCE_PROBS = 1e-4
TOLERANCE_FEATURES = 1e-3


def require_shared() -> Path:
    """../shared holds the sample videos, golden outputs and tools; it is absent on a user's clone."""
    if not SHARED.is_dir():
        pytest.skip(
            f"{SHARED} is missing: the shared test data (videos, golden outputs, weight generator) "
            "only exists in the development workspace"
        )
    return SHARED


def generated_weights(seed: int = 0, layers: int = 101) -> Path:
    """Directory with tsn.* and attention_lstm.* made by ../shared/tools/make_weights.py, cached per seed/layers.

    Generated into a temporary sibling and renamed into place, so an interrupted run never leaves a half cache.
    """
    require_shared()
    target = WEIGHTS_CACHE / f"seed{seed}-r{layers}"
    expected = ("tsn.pdparams", "tsn.pdopt", "attention_lstm.pdparams", "attention_lstm.pdopt")
    if all((target / name).is_file() for name in expected):
        return target
    WEIGHTS_CACHE.mkdir(parents=True, exist_ok=True)
    for stale in WEIGHTS_CACHE.glob(f".seed{seed}-r{layers}-*"):  # left by an interrupted run long ago
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # incomplete (files removed by hand): regenerate
        shutil.rmtree(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".seed{seed}-r{layers}-", dir=WEIGHTS_CACHE))
    try:
        subprocess.run(
            [sys.executable, str(MAKE_WEIGHTS), str(tmp), "--seed", str(seed), "--layers", str(layers)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        tmp.chmod(0o755)
        try:
            os.replace(tmp, target)  # atomic when target is absent (or an empty leftover)
        except OSError:
            if not all((target / name).is_file() for name in expected):  # not a concurrent run's complete cache
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def seed0_weights() -> Path:
    return generated_weights(0, 101)


@functools.cache
def seed0_tagger_instance():
    """The faithful dygraph chain with the seed-0 ResNet-101 weights, built once per process (the fixture
    below may be imported into several modules; each import is its own fixture, this keeps one tagger)."""
    from models.tagger import build_tagger

    weights = generated_weights(0, 101)
    return build_tagger(weights / "tsn", weights / "attention_lstm", LABELS, device=TEST_DEVICE)


@pytest.fixture(scope="session")
def seed0_tagger(seed0_weights: Path):
    return seed0_tagger_instance()


def golden_lines(seg_num: int) -> dict[str, dict]:
    lines = (GOLDEN / f"seed0-r101-seg{seg_num}.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {record["path"]: record for record in records}


def golden_array(seg_num: int, video: str, kind: str) -> np.ndarray:
    return np.load(GOLDEN / f"seed0-r101-seg{seg_num}-{Path(video).stem}.{kind}.npy")


def same_top20(ours: list[int], golden_tags: list[int], probs: np.ndarray, tol: float = TOLERANCE_PROBS) -> bool:
    """The golden README's rule: the same ids in the same order, except that neighbours whose (golden)
    probabilities differ by less than `tol` may swap, and at the last place a class may be exchanged for one
    whose probability is within `tol` of it.

    `probs` are the golden probabilities of all classes (indexable by class id).
    """
    ours, golden = [int(i) for i in ours], [int(i) for i in golden_tags]
    if len(ours) != len(golden) or len(set(ours)) != len(ours):
        return False
    extra = [i for i in ours if i not in golden]
    missing = [i for i in golden if i not in ours]
    if len(extra) > 1:
        return False
    if extra:
        # One class took the last place of the golden list (the golden class that dropped out must tie with
        # the golden last one, possibly being it, and the newcomer must tie with it too).
        (x,), (m,) = extra, missing
        last = golden[-1]
        if abs(float(probs[x]) - float(probs[m])) >= tol or abs(float(probs[m]) - float(probs[last])) >= tol:
            return False
        ours = [m if i == x else i for i in ours]
    # Bring `ours` into the golden order by swapping neighbours (bubble sort): each inverted pair is swapped
    # exactly once, and each must be a near-tie.
    rank = {class_id: i for i, class_id in enumerate(golden)}
    work = ours[:]
    for _ in range(len(work)):
        swapped = False
        for i in range(len(work) - 1):
            a, b = work[i], work[i + 1]
            if rank[a] > rank[b]:
                if abs(float(probs[a]) - float(probs[b])) >= tol:
                    return False
                work[i], work[i + 1] = b, a
                swapped = True
        if not swapped:
            break
    return work == golden


def link_or_copy(source: Path, dest: Path) -> Path:
    """A hard link where the file system allows it (the generated weights are large), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
    return dest


def make_clip(path: Path, frames: int, size: str = "320x240", rate: int = 25, extra: tuple[str, ...] = ()) -> Path:
    """An H.264 mp4 of ffmpeg's testsrc with exactly `frames` frames."""
    return encode_clip(f"testsrc=size={size}:rate={rate}", None, path, frames=frames, extra=extra, timeout=120)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a `videotag` subprocess: no VIDEOTAG_* settings leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOTAG_")}
    if TEST_DEVICE != "cpu":
        env["VIDEOTAG_DEVICE"] = TEST_DEVICE
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def processes_with(*markers: str) -> list[str]:
    """The PIDs of this machine's processes whose command line holds every marker (a child left running)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            command = cmdline.read_bytes()
            if all(marker.encode() in command for marker in markers):
                found.append(cmdline.parent.name)
    return found


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """`videotag ARGS...` as a user runs it (same interpreter, so the same virtual environment)."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=cwd or REPO,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]
