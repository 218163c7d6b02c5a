"""Overlapping the stages of several videos: many threads decode, one thread runs the networks in batches.

Each in-flight video runs fetch → decode → extract → predict → publish in its own thread, but its network
calls go through `ModelThread`: one thread that owns Paddle (no concurrent use of an engine) and merges
the queued frame chunks of all in-flight videos into full batches. Decoding (OpenCV, GIL released) of the
next videos therefore overlaps inference of the current ones, and memory is bounded by the number of
videos in flight times seg_num crops.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from models import cancel
from models.engines import Engine
from models.tagger import VideoTagger

CANCEL_POLL_S = 0.25  # how soon a video waiting for its batch notices that it was cancelled


@dataclass
class _Request:
    engine: Engine
    batch: np.ndarray
    future: Future[np.ndarray]


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

    def wrap(self, engine: Engine) -> Engine:
        """An engine with the same call signature whose calls run on this thread."""

        def call(batch: np.ndarray) -> np.ndarray:
            future: Future[np.ndarray] = Future()
            self._queue.put(_Request(engine, batch, future))
            while True:  # a cancelled video stops waiting (its batch still runs: a network run cannot be stopped)
                cancel.check()
                try:
                    return future.result(timeout=CANCEL_POLL_S)
                except TimeoutError:
                    continue

        return call

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
                if request.engine is not first.engine or request.batch.shape[1:] != first.batch.shape[1:] \
                        or rows + len(request.batch) > self.max_batch:
                    self._pending = request
                    break
                group.append(request)
                rows += len(request.batch)
            self._run(group)

    @staticmethod
    def _run(group: list[_Request]) -> None:
        try:
            merged = group[0].batch if len(group) == 1 else np.concatenate([r.batch for r in group])
            output = group[0].engine(merged)
        except BaseException as exc:  # the callers get the error; this thread carries on
            for request in group:
                request.future.set_exception(exc)
            return
        start = 0
        for request in group:
            request.future.set_result(output[start : start + len(request.batch)])
            start += len(request.batch)


def share_engines(tagger: VideoTagger, model_thread: ModelThread) -> VideoTagger:
    """The same tagger whose network calls are batched across threads by `model_thread`."""
    from dataclasses import replace

    return replace(tagger, extractor=model_thread.wrap(tagger.extractor),
                   heads=tuple(replace(head, predictor=model_thread.wrap(head.predictor)) for head in tagger.heads))
