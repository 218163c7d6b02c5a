"""Cancelling one video's work from outside the thread that runs it.

Python cannot stop a thread, so a video is cancelled cooperatively: the worker gives each video a `Token` and
runs it inside `scope(token)`; the code that runs for it checks the token (`check()`) between steps that
take time (each extractor batch, each wait on the model thread) and registers its decoder child
(`register(child)`) so that cancelling kills the child at once. Outside any scope (`videotag tag`, tests)
these are no-ops.

Invariant: once a token is cancelled, the video's thread raises `Cancelled` at its next check, and no decoder
child of that video outlives the cancel.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from contextvars import ContextVar


class Cancelled(Exception):
    """The video's work was cancelled; `reason` says why (e.g. video_timeout, revoked, stopping)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Token:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: list[subprocess.Popen[bytes]] = []
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            children = list(self._children)
        for child in children:
            _kill(child)

    def check(self) -> None:
        if self.reason is not None:
            raise Cancelled(self.reason)

    def register(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._children = [c for c in self._children if c.poll() is None] + [child]
            cancelled = self.reason is not None
        if cancelled:
            _kill(child)


_CURRENT: ContextVar[Token | None] = ContextVar("videotag_cancel_token", default=None)


@contextlib.contextmanager
def scope(token: Token) -> Iterator[Token]:
    reset = _CURRENT.set(token)
    try:
        yield token
    finally:
        _CURRENT.reset(reset)


def check() -> None:
    """Raise Cancelled if the current video was cancelled."""
    token = _CURRENT.get()
    if token is not None:
        token.check()


def register(child: subprocess.Popen[bytes]) -> None:
    """Kill `child` when the current video is cancelled (at once if it already is)."""
    token = _CURRENT.get()
    if token is not None:
        token.register(child)


def _kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
