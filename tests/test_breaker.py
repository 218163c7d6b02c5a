"""The circuit breaker: the threshold-th systemic failure in a row waits for a self-test on a clip the worker
makes; a failing self-test means the worker is broken (nothing more is dead-lettered), a passing one means the
inputs were bad."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from models.video import read_video
from worker.breaker import Breaker, make_clip
from worker.metrics import Metrics


def test_below_the_threshold_failures_are_the_inputs_and_a_success_resets_the_count() -> None:
    tested: list[Path] = []
    breaker = Breaker(3, tested.append)
    assert breaker.failure_is_the_inputs() and breaker.failure_is_the_inputs()
    breaker.success()
    assert breaker.failure_is_the_inputs() and breaker.failure_is_the_inputs()
    assert tested == [] and breaker.broken is None


def test_a_passing_self_test_lets_work_go_on() -> None:
    seen: list[bool] = []
    breaker = Breaker(2, lambda clip: seen.append(clip.is_file() and clip.stat().st_size > 0))
    assert breaker.failure_is_the_inputs()
    assert breaker.failure_is_the_inputs()  # the threshold-th: tested, passed, dead-lettered as bad input
    assert seen == [True] and breaker.broken is None and not breaker.testing
    assert breaker.failure_is_the_inputs()  # the count started over


def test_a_failing_self_test_means_the_worker_is_broken_for_every_waiting_failure() -> None:
    release = threading.Event()

    def engine_down(clip: Path) -> None:
        release.wait(5)
        raise RuntimeError("PreconditionNotMet: the predictor lost its device")

    metrics = Metrics()
    breaker = Breaker(1, engine_down, metrics)
    verdicts: list[bool] = []
    threads = [threading.Thread(target=lambda: verdicts.append(breaker.failure_is_the_inputs())) for _ in range(3)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert verdicts == [False, False, False]
    assert breaker.broken is not None and "PreconditionNotMet" in breaker.broken
    # The alert's view: open for good once broken, and the failures that waited shared one self-test.
    assert metrics.registry.get_sample_value("videotag_breaker_open") == 1
    assert metrics.registry.get_sample_value("videotag_breaker_trips_total") == 1


def test_the_self_test_clip_decodes(tmp_path: Path) -> None:
    clip = tmp_path / "selftest.mp4"
    make_clip(clip)
    video = read_video(clip, 8, lambda frame: frame, 7680, 4320)
    assert video.frames_decoded == 30 and len(video.order) == 8


@pytest.mark.parametrize("threshold", [1, 5])
def test_the_worker_setting_reaches_the_breaker(threshold: int) -> None:
    from worker.settings import Settings
    from worker.worker import Worker

    assert Worker(Settings(breaker_threshold=threshold)).breaker.threshold == threshold
