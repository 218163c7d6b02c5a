"""Which offsets may be committed: per partition, everything below the oldest unfinished message."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionOffsets:
    pending: dict[int, int] = field(default_factory=dict)  # offset → unfinished videos of that message
    highest_seen: int = -1
    committed: int | None = None

    def committable(self) -> int | None:
        """The offset to commit (the next one to read after a restart), if it moved since the last commit."""
        target = min(self.pending) if self.pending else self.highest_seen + 1
        if self.highest_seen < 0 or target == self.committed:
            return None
        return target


class OffsetTracker:
    """At-least-once bookkeeping. Messages finish out of order; a commit never passes an unfinished one,
    so a crash at any moment re-delivers only unfinished (or finished but uncommitted) work."""

    def __init__(self) -> None:
        self.partitions: dict[tuple[str, int], PartitionOffsets] = {}

    def started(self, topic: str, partition: int, offset: int, videos: int) -> PartitionOffsets:
        """Record a message with `videos` pieces of work; the returned state is handed back to `finished`."""
        state = self.partitions.setdefault((topic, partition), PartitionOffsets())
        state.highest_seen = max(state.highest_seen, offset)
        if videos > 0:
            state.pending[offset] = state.pending.get(offset, 0) + videos
        return state

    @staticmethod
    def finished(state: PartitionOffsets, offset: int) -> None:
        """One video of the message at `offset` is done (its result or DLQ record acknowledged).

        If the partition was revoked (and perhaps assigned back) meanwhile, `state` is no longer tracked
        and this changes nothing: the partition's current owner redoes the work."""
        if offset not in state.pending:
            return
        state.pending[offset] -= 1
        if state.pending[offset] == 0:
            del state.pending[offset]

    def to_commit(self) -> dict[tuple[str, int], int]:
        return {tp: off for tp, state in self.partitions.items() if (off := state.committable()) is not None}

    def committed(self, offsets: dict[tuple[str, int], int]) -> None:
        for tp, offset in offsets.items():
            if tp in self.partitions:
                self.partitions[tp].committed = offset

    def forget(self, topic: str, partition: int) -> None:
        self.partitions.pop((topic, partition), None)

    def inflight(self) -> int:
        return sum(sum(state.pending.values()) for state in self.partitions.values())
