"""The circuit breaker: systemic faults stop the worker, not the backlog.

A failure that is the worker's own (an engine that fails, no file descriptors left, decoders dying for want of
memory) looks like a bad input to the code that meets it; dead-lettering it would drain the backlog into the DLQ.
So the `threshold`-th systemic failure in a row (each on another input) is held while the worker tags a
known-good clip that it makes itself. If that fails, it is the worker: nothing more is
dead-lettered, it reports not-ready and exits non-zero (its orchestrator restarts it; the held message is
redelivered). If it passes, the inputs were bad after all: the held one is dead-lettered and work goes on.

Invariant: at most `threshold` - 1 messages are dead-lettered for a systemic cause while the worker itself is broken;
one self-test runs at a time, and a verdict is shared by the failures that waited for it. `videotag_breaker_open` is 1
exactly while intake is held for a self-test or the worker is broken; `videotag_breaker_trips_total` counts self-tests.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from models.errors import ErrorCode
from worker.metrics import Metrics

log = logging.getLogger(__name__)

# The systemic codes that can be an input's fault too (a crafted file crashing a decoder or the library code):
# the ones a self-test has to tell apart. The others (disk_full, out_of_memory...) are never dead-lettered.
SYSTEMIC_CODES = frozenset({ErrorCode.INTERNAL_ERROR, ErrorCode.DECODER_CRASHED})


class Breaker:
    def __init__(self, threshold: int, self_test: Callable[[Path], object], metrics: Metrics | None = None) -> None:
        self.threshold = threshold
        self._self_test = self_test
        self._metrics = metrics or Metrics()
        self._lock = threading.Lock()
        self._streak = 0
        self.testing = False  # while true, the worker takes no new work
        self.broken: str | None = None  # why the worker is unusable, once the self-test failed

    def success(self) -> None:
        with self._lock:
            self._streak = 0

    def failure_is_the_inputs(self) -> bool:
        """A systemic failure happened: False when it is the worker's (do not dead-letter; stop)."""
        with self._lock:
            if self.broken is not None:
                return False
            self._streak += 1
            if self._streak < self.threshold:
                return True
            self.testing = True
            self._metrics.breaker_trips.inc()
            self._metrics.breaker_open.set(1)
            try:
                self.broken = self._test()
            finally:
                self.testing = False
                self._metrics.breaker_open.set(1 if self.broken is not None else 0)
            if self.broken is not None:
                return False
            self._streak = 0
            return True

    def _test(self) -> str | None:
        log.warning("%d systemic failures in a row: testing the worker on a known-good clip", self._streak)
        with tempfile.TemporaryDirectory(prefix="videotag-selftest-") as tmp:
            clip = Path(tmp) / "selftest.mp4"
            try:
                make_clip(clip)
                self._self_test(clip)
            except Exception as exc:
                log.error("self-test failed: the worker cannot tag a known-good clip (%s: %s)", type(exc).__name__, exc)
                return f"self-test failed: {type(exc).__name__}: {str(exc)[:200]}"
        log.warning("self-test passed: the failing inputs were bad; carrying on")
        return None


def make_clip(path: Path, frames: int = 30, size: tuple[int, int] = (128, 96)) -> None:
    """A small clip every build of the worker decodes: a bar moving over a grid, MPEG-4 part 2 in MP4."""
    import cv2
    import numpy as np

    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10, (width, height))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write the self-test clip")
    try:
        for i in range(frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[::8] = 255
            left = (i * 4) % width
            frame[:, left : left + 16] = (0, 200, 255)
            writer.write(frame)
    finally:
        writer.release()
