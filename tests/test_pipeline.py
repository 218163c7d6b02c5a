"""The model thread: calls from many threads, run one at a time, merged into batches."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from worker.pipeline import ModelThread


class RecordingEngine:
    def __init__(self, delay: float = 0.0):
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.gate = threading.Event()

    def __call__(self, batch):
        self.threads.add(threading.current_thread().name)
        self.batches.append(len(batch))
        self.gate.wait(self.delay)
        return batch.sum(axis=tuple(range(1, batch.ndim)))[:, None] * 2


def test_requests_merge_up_to_the_batch_size_and_results_return_to_their_callers():
    engine = RecordingEngine(delay=0.2)
    thread = ModelThread(max_batch=8).start()
    wrapped = thread.wrap(engine)
    inputs = [np.full((n, 3), i, dtype=np.float32) for i, n in enumerate([2, 3, 3, 4, 1, 5])]
    try:
        with ThreadPoolExecutor(6) as pool:
            outputs = list(pool.map(wrapped, inputs))
    finally:
        thread.stop()
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y[:, 0], x.sum(axis=1) * 2)
    assert sum(engine.batches) == 18
    assert max(engine.batches) <= 8
    assert len(engine.batches) < 6  # some requests were merged while the first batch ran
    assert engine.threads == {"model"}


def test_different_engines_and_shapes_are_not_merged():
    a, b = RecordingEngine(0.05), RecordingEngine(0.05)
    thread = ModelThread(max_batch=64).start()
    wa, wb = thread.wrap(a), thread.wrap(b)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(wa, np.ones((2, 3))),
                pool.submit(wb, np.ones((2, 3))),
                pool.submit(wa, np.ones((2, 5))),
                pool.submit(wb, np.ones((1, 3))),
            ]
            results = [f.result() for f in futures]
    finally:
        thread.stop()
    assert [r.shape[0] for r in results] == [2, 2, 2, 1]
    assert sum(a.batches) == 4 and sum(b.batches) == 3


def test_engine_errors_reach_the_caller_and_the_thread_survives():
    def broken(batch):
        raise RuntimeError("boom")

    thread = ModelThread(max_batch=4).start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            thread.wrap(broken)(np.ones((1, 2)))
        assert thread.wrap(lambda x: x + 1)(np.zeros((1, 2))).tolist() == [[1.0, 1.0]]
    finally:
        thread.stop()
