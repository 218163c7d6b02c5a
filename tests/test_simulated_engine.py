"""The simulated engine: an engine like the others (shapes, errors, one call at a time) that sleeps with the GIL
released, and `engine: simulated` building a chain without extractor weights."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.engines import SimulatedEngine
from models.tagger import build_tagger
from tests.model_fixtures import LABELS, VIDEOS, require_shared


def test_shapes_and_counters() -> None:
    engine = SimulatedEngine(1.0, (2048,), (3, 224, 224))
    out = engine(np.ones((5, 3, 224, 224), np.float32))
    assert out.shape == (5, 2048) and out.dtype == np.float32 and not out.any()
    assert engine.rows == 5 and engine.busy_s >= 0.005
    with pytest.raises(ValueError, match=r"takes \[N, 3, 224, 224\]"):
        engine(np.ones((2, 3, 112, 112), np.float32))
    with pytest.raises(ValueError, match="at least 0"):
        SimulatedEngine(-1.0, (1,))


def test_it_sleeps_per_row_with_the_gil_released() -> None:
    engine = SimulatedEngine(50.0, (4,))
    counted = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal counted
        while not stop.is_set():
            counted += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    start = time.perf_counter()
    engine(np.zeros((4, 2), np.float32))  # 4 rows × 50 ms
    elapsed = time.perf_counter() - start
    stop.set()
    spinner.join()
    assert elapsed >= 0.2
    # A thread that held the GIL for the whole call would leave the spinner a few switch intervals at most.
    assert counted > 10_000


def test_calls_run_one_at_a_time() -> None:
    engine = SimulatedEngine(50.0, (1,))
    start = time.perf_counter()
    threads = [threading.Thread(target=engine, args=(np.zeros((2, 1), np.float32),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.perf_counter() - start >= 0.3 * 0.95  # 3 × 2 rows × 50 ms, serialised like a device
    assert engine.rows == 6


def test_simulated_chain_needs_no_extractor_weights_and_tags(tmp_path: Path) -> None:
    require_shared()
    from models.config import ExtractorConfig

    tagger = build_tagger(
        tmp_path / "no-such-tsn",
        tmp_path / "no-such-lstm",
        LABELS,
        ExtractorConfig(seg_num=6),
        engine="simulated",
        simulated_ms_per_frame=2.0,
        allow_random_weights=True,
    )
    assert isinstance(tagger.extractor, SimulatedEngine) and tagger.info["simulated_ms_per_frame"] == 2.0
    result = tagger.tag(VIDEOS / "carphone_pristine.mp4")
    assert result.features.shape == (6, 2048) and not result.features.any()
    probs = result.probabilities[tagger.heads[0].name]
    assert probs.shape == (len(tagger.heads[0].labels),) and not probs.any()
    assert tagger.extractor.rows == len(result.video.crops)  # each distinct frame went through it once
