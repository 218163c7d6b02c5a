"""A one-line progress bar on stderr for the long commands (tag, features, train, eval, enqueue --from-s3).

It is drawn only for a person watching: never with --quiet, never when stderr is not a terminal (logs, CI,
pipes), so redirected output holds no carriage-return noise. A total that is not known in advance (a bucket
being listed) shows a count and a rate instead of a bar.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24


def bar(done: int, total: int | None, label: str, note: str, elapsed_s: float) -> str:
    """`label [#####.....] done/total  elapsed  note`, or `label done  rate/s  elapsed  note` without a total."""
    if total is None:
        return f"{label} {done} ({done / max(elapsed_s, 1e-9):.0f}/s) {elapsed_s:5.0f} s  {note}"
    filled = WIDTH * done // max(total, 1)
    return f"{label} [{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total} {elapsed_s:5.0f} s  {note}"


class Progress:
    def __init__(self, total: int | None, label: str, enabled: bool = True, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.done = 0
        self.started = time.monotonic()

    def advance(self, note: str = "", count: int = 1) -> None:
        self.done += count
        if self.enabled:
            line = bar(self.done, self.total, self.label, note, time.monotonic() - self.started)
            self.stream.write("\r\033[K" + line)  # \033[K: clear what a longer previous line left
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
