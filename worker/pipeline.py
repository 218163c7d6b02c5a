"""Batching network calls of several videos: one thread runs the networks, merging the chunks of all in-flight
videos into full batches.

Each in-flight video runs fetch → decode → extract → predict → publish in its own thread, but its network
calls go through `ModelThread`: one thread that owns Paddle (no concurrent use of an engine) and merges the
queued chunks of all in-flight videos into batches of up to `max_batch` rows. Callers submit without waiting
(`submit` → Future; `VideoTagger.features` keeps a few chunks of its video submitted), so the network never
idles between one video's chunks. In the worker this thread runs inside the model process
(worker/model_process.py), where Paddle holding the GIL stalls nothing; `videotag bench` runs it in-process.

A merged batch that fails is run again one request at a time, so one bad request fails alone and its
batch-mates get their results.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

import numpy as np

from models.chain import VideoTagger
from models.engines import Engine, wait

log = logging.getLogger(__name__)


@dataclass
class _Request:
    engine: Engine
    batch: np.ndarray
    future: Future[np.ndarray]


class ThreadEngine:
    """An engine whose calls run on a `ModelThread`: `submit` returns at once, a call waits (cancellably)."""

    def __init__(self, model_thread: ModelThread, engine: Engine) -> None:
        self._model_thread = model_thread
        self.engine = engine  # what runs (the bench reads a simulated engine's busy time from it)

    def submit(self, batch: np.ndarray) -> Future[np.ndarray]:
        return self._model_thread.submit(self.engine, batch)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return wait(self.submit(batch))


class ModelThread:
    """Runs engine calls from any thread, one at a time, merging same-engine requests up to `max_batch` rows."""

    def __init__(self, max_batch: int, queue_size: int = 64) -> None:
        self.max_batch = max_batch
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="model", daemon=True)
        self._pending: _Request | None = None

    def start(self) -> ModelThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, engine: Engine, batch: np.ndarray) -> Future[np.ndarray]:
        """Queue one call (blocks only while the queue is full); its future gets the output or the error."""
        future: Future[np.ndarray] = Future()
        self._queue.put(_Request(engine, batch, future))
        return future

    def wrap(self, engine: Engine) -> ThreadEngine:
        """An engine with the same call signature (and `submit`) whose calls run on this thread."""
        return ThreadEngine(self, engine)

    def _next(self, block: bool) -> _Request | None:
        if self._pending is not None:
            request, self._pending = self._pending, None
            return request
        return self._queue.get(block=block)

    def _loop(self) -> None:
        while True:
            first = self._next(block=True)
            if first is None:
                return
            group = [first]
            rows = len(first.batch)
            while rows < self.max_batch:
                try:
                    request = self._next(block=False)
                except queue.Empty:
                    break
                if request is None:
                    self._queue.put(None)  # stop after this group
                    break
                if (
                    request.engine is not first.engine
                    or request.batch.shape[1:] != first.batch.shape[1:]
                    or request.batch.dtype != first.batch.dtype
                    or rows + len(request.batch) > self.max_batch
                ):
                    self._pending = request
                    break
                group.append(request)
                rows += len(request.batch)
            run_group(group)


def run_group(group: list[_Request]) -> None:
    """Run a group of same-engine requests as one batch and hand each caller its rows. If the merged batch
    fails, each request runs alone: only the failing ones get the error (an engine that fails on everything
    then fails each request, at the cost of one run each)."""
    try:
        merged = group[0].batch if len(group) == 1 else np.concatenate([r.batch for r in group])
        output = group[0].engine(merged)
    except BaseException as exc:  # the callers get the error; this thread carries on
        if len(group) == 1:
            group[0].future.set_exception(exc)
            return
        log.warning(
            "a merged batch of %d requests failed (%s: %s): running them one by one",
            len(group),
            type(exc).__name__,
            exc,
        )
        for request in group:
            run_group([request])
        return
    start = 0
    for request in group:
        request.future.set_result(output[start : start + len(request.batch)])
        start += len(request.batch)


def replace_engines(tagger: VideoTagger, wrap: Callable[[Engine], Engine]) -> VideoTagger:
    """The same tagger with each network engine (extractor, every head's predictor) passed through `wrap`."""
    return replace(
        tagger,
        extractor=wrap(tagger.extractor),
        heads=tuple(replace(head, predictor=wrap(head.predictor)) for head in tagger.heads),
    )
