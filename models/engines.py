"""Inference engines: run a network on a numpy batch and return numpy. One interface, several backends.

An engine is called with a batch and returns its output. An engine that runs elsewhere (the model thread, the
model process: worker/pipeline.py, worker/model_process.py) also has `submit(batch) -> Future`, so that a video
can hand in its next chunks while the current one runs (`run_batches`): the network never idles waiting for a
caller, and chunks of all in-flight videos are there to be merged into one batch.

`SimulatedEngine` stands in for an accelerator: it sleeps (releasing the GIL, as a GPU run waiting on its
stream does) for `ms_per_row` per input row and returns zeros of the network's output shape, so that
`videotag bench --engine simulated` measures what the host side (decode, preprocess, transfer) sustains.
"""

from __future__ import annotations

import threading
import time
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
            out: np.ndarray = self.layer(paddle.to_tensor(batch)).numpy()  # (Layer.__call__ is typed Any)
            return out


class SimulatedEngine:
    """Sleeps `ms_per_row` × rows, one call at a time (a device runs one batch at a time), and returns float32
    zeros `[rows, *output_shape]`. `input_shape` (trailing dims), when given, is checked like an export's.
    `busy_s` and `rows` count what it did: the bench reports the busy fraction of the engine."""

    def __init__(
        self,
        ms_per_row: float,
        output_shape: tuple[int, ...],
        input_shape: tuple[int, ...] | None = None,
        name: str = "simulated",
    ) -> None:
        if ms_per_row < 0:
            raise ValueError(f"{name}: ms per row must be at least 0, not {ms_per_row}")
        self.ms_per_row = ms_per_row
        self.output_shape = output_shape
        self.input_shape = input_shape
        self.name = name
        self.busy_s = 0.0
        self.rows = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.input_shape is not None and tuple(batch.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name} takes [N, {', '.join(map(str, self.input_shape))}], got {list(batch.shape)}")
        # What a device engine does before its run: one contiguous float32 host buffer to copy to the device.
        host = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            start = time.perf_counter()
            time.sleep(self.ms_per_row * len(host) / 1e3)
            self.busy_s += time.perf_counter() - start
            self.rows += len(host)
        return np.zeros((len(host), *self.output_shape), np.float32)


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
