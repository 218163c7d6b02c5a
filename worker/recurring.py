"""Errors that recur while their cause lasts (Kafka denying an ACL, refusing a login): logged once, not a flood.

A worker retries such an operation with a backoff until the cause is fixed, which may take an operator hours; each
try failing the same way must not add a line. Invariants:
- An error is keyed by where it happens ("consume", "publish to <topic>", ...). It is logged (ERROR) when it
  starts or its message changes, and again at most every `repeat_s` while it lasts, with how many tries failed
  since; when that operation next succeeds it ends, logged once (INFO).
- `first()` is the oldest error still lasting: the worker's not-ready reason.
- Thread-safe: the consumer loop and the video threads report here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

REPEAT_S = 60.0


@dataclass
class Lasting:
    message: str
    logged_at: float
    tries: int = 1  # failed tries in a row
    unlogged: int = 0  # of which not logged


def due(previous: Lasting | None, message: str, now: float, repeat_s: float) -> bool:
    """Whether this failure is to be logged: the first, one with another message, or the first after `repeat_s`."""
    return previous is None or previous.message != message or now - previous.logged_at >= repeat_s


class RecurringErrors:
    def __init__(
        self, log: logging.Logger, repeat_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = log
        self._repeat_s = repeat_s
        self._clock = clock
        self._lasting: dict[str, Lasting] = {}
        self._lock = threading.Lock()

    def failed(self, where: str, message: str) -> int:
        """One more failed try at `where`; returns how many failed in a row (for the caller's backoff)."""
        now = self._clock()
        with self._lock:
            previous = self._lasting.get(where)
            tries = previous.tries + 1 if previous is not None else 1
            if not due(previous, message, now, self._repeat_s):
                assert previous is not None
                previous.tries, previous.unlogged = tries, previous.unlogged + 1
                return tries
            self._lasting[where] = Lasting(message, now, tries)
        since = f" ({previous.unlogged} more failed tries since last said)" if previous and previous.unlogged else ""
        self._log.error("%s: %s (try %d; retrying)%s", where, message, tries, since)
        return tries

    def succeeded(self, where: str) -> None:
        """`where` works again: its error, if any, ends."""
        with self._lock:
            ended = self._lasting.pop(where, None)
        if ended is not None:
            self._log.info("%s: works again after %d failed tries (%s)", where, ended.tries, ended.message)

    def first(self) -> str | None:
        with self._lock:
            return next((f"{where}: {e.message}" for where, e in self._lasting.items()), None)
