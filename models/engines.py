"""Inference engines: run a network on a numpy batch and return numpy. One interface, several backends.

An engine is called with a batch and returns its output. An engine that runs elsewhere (the model thread, the
model process: worker/pipeline.py, worker/model_process.py) also has `submit(batch) -> Future`, so that a video
can hand in its next chunks while the current one runs (`run_batches`): the network never idles waiting for a
caller, and chunks of all in-flight videos are there to be merged into one batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models import cancel

if TYPE_CHECKING:  # imported where it runs: the worker, whose networks run elsewhere, never loads Paddle
    import paddle

CANCEL_POLL_S = 0.25  # how soon a video waiting for its batch notices that it was cancelled
# Chunks a video may have submitted and not yet collected: enough to keep the network fed (one running, the
# next queued) while bounding what a video holds in queues (32 normalised frames are 19 MB).
SUBMIT_WINDOW = 3


class Engine(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class DygraphEngine:
    """Eager Paddle: the reference path (fidelity tests, the original-style baseline)."""

    def __init__(self, layer: paddle.nn.Layer) -> None:
        self.layer = layer

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import paddle

        with paddle.no_grad():
            return self.layer(paddle.to_tensor(batch)).numpy()


def wait(future: Future[np.ndarray]) -> np.ndarray:
    """The future's result; a cancelled video stops waiting (its batch still runs: a network run cannot be
    stopped)."""
    while True:
        cancel.check()
        try:
            return future.result(timeout=CANCEL_POLL_S)
        except TimeoutError:
            continue


def run_batches(engine: Engine, batches: Iterable[np.ndarray], window: int = SUBMIT_WINDOW) -> list[np.ndarray]:
    """Every batch through `engine`, outputs in order: submitted `window` ahead where the engine can take
    submissions, else called one by one. `batches` is consumed lazily (each made only when it is sent)."""
    submit = getattr(engine, "submit", None)
    if submit is None:
        outputs = []
        for batch in batches:
            cancel.check()
            outputs.append(engine(batch))
        return outputs
    pending: deque[Future[np.ndarray]] = deque()
    done: list[np.ndarray] = []
    for batch in batches:
        cancel.check()
        pending.append(submit(batch))
        if len(pending) >= window:
            done.append(wait(pending.popleft()))
    done.extend(wait(future) for future in pending)
    return done
