"""Deliveries that killed their worker, counted across restarts in the commit metadata of each partition.

A message that kills the process handling it (the kernel's OOM killer, a native crash the decoder sandbox does not
contain) would otherwise be redelivered for ever, killing each worker in turn. So every commit of a partition
carries, in its metadata, the messages being worked on at that moment and how many workers have already died
holding each. A worker that takes over a partition reads it: a message still marked running was in the hands of a
worker that died (a worker that stops or loses a partition gracefully clears its marks), one more death. A
message that reaches `max_worker_deaths` is dead-lettered `worker_crashed` instead of being started again.

Invariants: marks are kept only for offsets at or above the committed offset (a finished message needs none), and
the metadata stays far below the broker's limit (`offset.metadata.max.bytes`, 4096 by default): at most
`MAX_MARKS` messages are kept, the oldest first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

VERSION = 1
MAX_MARKS = 64  # a worker has max_inflight messages running per partition; deaths of older ones are kept too


@dataclass
class Marks:
    """One partition's marks: deaths per offset, and the offsets running in this process now."""

    deaths: dict[int, int] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)

    def encode(self, committed: int, graceful: bool = False) -> str:
        """The metadata of a commit at `committed`; `graceful`: this worker lets go of what it runs."""
        deaths = {o: n for o, n in self.deaths.items() if o >= committed}
        running = [] if graceful else sorted(o for o in self.running if o >= committed)
        keep = sorted(set(deaths) | set(running))[:MAX_MARKS]
        return json.dumps(
            {
                "v": VERSION,
                "deaths": {str(o): deaths[o] for o in keep if o in deaths},
                "running": [o for o in running if o in keep],
            },
            separators=(",", ":"),
        )

    def finished(self, offset: int) -> None:
        self.running.discard(offset)
        self.deaths.pop(offset, None)


def inherit(metadata: str | None) -> Marks:
    """The marks a new owner of a partition starts from: what the last commit says, with one more death for every
    message that was still running then. Metadata that is not ours (another tool's commit) counts nothing."""
    try:
        document = json.loads(metadata or "")
        if not isinstance(document, dict) or document.get("v") != VERSION:
            return Marks()
        deaths = {int(o): int(n) for o, n in document.get("deaths", {}).items()}
        for offset in document.get("running", []):
            deaths[int(offset)] = deaths.get(int(offset), 0) + 1
    except (ValueError, TypeError, AttributeError):
        return Marks()
    return Marks(deaths=deaths)
