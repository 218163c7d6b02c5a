"""The worker's bookkeeping across consumer-group rebalances, against a fake consumer.

kafka-python 3 keeps the fetch position of a partition assigned back to the same member after an eager
rebalance (tests/integration/test_kafka_semantics.py checks that against the real broker). So a kept
partition's taken-but-unstarted messages are never fetched again and must stay in the backlog, and its
in-flight videos must still hold its commit back; a partition that went elsewhere is forgotten.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from worker.settings import Settings
from worker.worker import Worker, _Rebalance

TOPIC = "in"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class FakeCoordinator:
    def __init__(self) -> None:
        self.generation_id = 1

    def group_metadata(self) -> FakeCoordinator:
        return self


class FakeConsumer:
    """Records commits; owns `assignment`; poll returns nothing (the test feeds records to the worker).

    Like kafka-python 3, it refuses a blocking call from inside a rebalance listener (its IO thread)."""

    def __init__(self, assignment: set[TopicPartition]) -> None:
        self._assignment = set(assignment)
        self._coordinator = FakeCoordinator()
        self.commits: list[dict[tuple[str, int], int]] = []
        self.metadata: dict[TopicPartition, Any] = {}  # the last commit of each partition, with its metadata
        self.in_listener = False
        self._paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.in_listener:
            raise RuntimeError("Cannot block on net.run() from the IO thread itself")
        self.commits.append({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})
        self.metadata.update(offsets)

    def committed(self, tp: TopicPartition, metadata: bool = False) -> Any:
        return self.metadata.get(tp)

    async def commit_async(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()})

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def poll(self, timeout_ms: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        return {}

    def highwater(self, tp: TopicPartition) -> None:
        return None


class NoExecutor:
    """Launched jobs stay in flight until the test finishes them."""

    def submit(self, fn: Any, *args: Any) -> None:
        pass


def _record(tp: TopicPartition, offset: int) -> ConsumerRecord:
    value = b'{"video_id": "v-%d-%d", "bucket": "b", "key": "k.mp4"}' % (tp.partition, offset)
    return ConsumerRecord(tp.topic, tp.partition, -1, offset, 0, 0, None, value, [], None, -1, len(value), -1)


def _worker(max_inflight: int = 2, strategy: str = "range") -> tuple[Worker, FakeConsumer]:
    worker = Worker(Settings(max_inflight=max_inflight, partition_assignment_strategy=strategy))
    consumer = FakeConsumer({P0, P1})
    worker.consumer = consumer  # type: ignore[assignment]
    worker._not_connected = None
    worker._executor = NoExecutor()  # type: ignore[assignment]
    return worker, consumer


def _rebalance(
    worker: Worker, consumer: FakeConsumer, revoked: set[TopicPartition], assigned: set[TopicPartition]
) -> None:
    """Drive the worker's listener as kafka-python does: revoke, then assign (awaited, on the IO thread)."""
    listener = _Rebalance(worker)
    consumer.in_listener = True
    try:
        asyncio.run(listener.on_partitions_revoked(revoked))
        consumer._assignment = set(assigned)
        asyncio.run(listener.on_partitions_assigned(assigned))
    finally:
        consumer.in_listener = False


def _finish(worker: Worker, tp: TopicPartition, offset: int) -> None:
    job = next(j for j in worker._active.values() if (j.partition, j.offset) == (tp.partition, offset))
    job.finished = True  # answered, as _process marks it
    worker._done.put(job)


def _committed(consumer: FakeConsumer, tp: TopicPartition) -> int | None:
    """The offset the group holds for `tp` (the worker commits the oldest unfinished offset, so also the
    first one it reads: that commit restates where the group already is)."""
    offsets = [c[(tp.topic, tp.partition)] for c in consumer.commits if (tp.topic, tp.partition) in c]
    return offsets[-1] if offsets else None


def _sample(worker: Worker, name: str, labels: dict[str, str] | None = None) -> float | None:
    return worker.metrics.registry.get_sample_value(name, labels or {})


def _backlog(worker: Worker) -> list[tuple[int, int]]:
    return [(job.partition, job.offset) for job in worker._backlog]


def test_a_kept_partition_keeps_its_backlog_and_its_in_flight_videos_hold_the_commit() -> None:
    worker, consumer = _worker()
    for offset in range(4):
        worker._accept(_record(P0, offset))
    worker._accept(_record(P1, 0))
    worker._step(accept=True)  # launches p0@0 and p0@1; p0@2, p0@3, p1@0 wait
    assert _backlog(worker) == [(0, 2), (0, 3), (1, 0)]

    _rebalance(worker, consumer, {P0, P1}, {P0})

    assert _backlog(worker) == [(0, 2), (0, 3)]  # p1@0 is its new owner's to read from the last commit
    assert _sample(worker, "videotag_rebalances_total", {"kind": "assigned"}) == 1
    assert _sample(worker, "videotag_assigned_partitions") == 1
    assert (TOPIC, 1) not in worker.tracker.partitions
    _finish(worker, P0, 1)
    worker._step(accept=True)
    assert _committed(consumer, P0) == 0, "committed past the in-flight p0@0"
    _finish(worker, P0, 0)
    worker._step(accept=True)  # frees both slots: p0@2 and p0@3 start
    assert _committed(consumer, P0) == 2
    assert _backlog(worker) == []
    _finish(worker, P0, 2)
    _finish(worker, P0, 3)
    worker._step(accept=True)
    assert _committed(consumer, P0) == 4


def test_nothing_starts_and_nothing_is_committed_mid_rebalance() -> None:
    worker, consumer = _worker(max_inflight=1)
    worker._accept(_record(P0, 0))
    worker._accept(_record(P1, 0))
    worker._step(accept=True)  # p0@0 in flight, p1@0 waits
    worker._revoked({P0, P1})
    revoke_commits = len(consumer.commits)
    _finish(worker, P0, 0)
    worker._step(accept=True)  # poll returned before the group settled
    assert len(consumer.commits) == revoke_commits, "committed a partition that may belong to another member"
    assert _backlog(worker) == [(1, 0)] and not worker._active, "started a video another member may own"
    worker._assigned({P1})
    worker._step(accept=True)
    assert _backlog(worker) == [] and [(j.partition, j.offset) for j in worker._active.values()] == [(1, 0)]


def test_revocation_commits_what_is_finished() -> None:
    worker, consumer = _worker()
    worker._accept(_record(P0, 0))
    worker._step(accept=True)
    _finish(worker, P0, 0)
    _rebalance(worker, consumer, {P0, P1}, {P1})
    assert consumer.commits[-1] == {(TOPIC, 0): 1}


def test_an_evicted_member_forgets_every_partition_even_one_assigned_back() -> None:
    worker, consumer = _worker()
    worker._accept(_record(P0, 0))
    worker._accept(_record(P0, 1))
    worker._accept(_record(P1, 0))
    worker._step(accept=True)
    before = list(consumer.commits)
    worker._lost({P0, P1})  # kafka-python drops the positions: everything is read again from the last commit
    assert _backlog(worker) == [] and worker.tracker.partitions == {}
    assert _sample(worker, "videotag_rebalances_total", {"kind": "lost"}) == 1
    assert _sample(worker, "videotag_assigned_partitions") == 0
    worker._assigned({P0, P1})
    _finish(worker, P0, 0)  # a video of the old generation finishing later changes no commit
    worker._step(accept=True)
    assert consumer.commits == before


def _cooperative_rebalance(
    worker: Worker, consumer: FakeConsumer, revoked: set[TopicPartition], added: set[TopicPartition]
) -> None:
    """As kafka-python does under a cooperative assignor: the new assignment is in place first, then "revoked"
    with what moved away (if anything), then "assigned" with what was added (only if anything was)."""
    listener = _Rebalance(worker)
    consumer._assignment = (consumer._assignment - revoked) | added
    consumer.in_listener = True
    try:
        if revoked:
            asyncio.run(listener.on_partitions_revoked(revoked))
        if added:
            asyncio.run(listener.on_partitions_assigned(added))
    finally:
        consumer.in_listener = False


def test_a_cooperative_rebalance_that_only_removes_partitions_leaves_nothing_waiting() -> None:
    worker, consumer = _worker(max_inflight=1, strategy="cooperative-sticky")
    worker._accept(_record(P0, 0))
    worker._accept(_record(P0, 1))
    worker._accept(_record(P1, 0))
    worker._step(accept=True)  # p0@0 in flight; p0@1 and p1@0 wait
    _finish(worker, P0, 0)
    _cooperative_rebalance(worker, consumer, revoked={P1}, added=set())  # "assigned" is never called
    assert _backlog(worker) == [(0, 1)], "kept p0's backlog and dropped the moved p1's"
    assert _sample(worker, "videotag_assigned_partitions") == 1
    worker._step(accept=True)
    assert [(j.partition, j.offset) for j in worker._active.values()] == [(0, 1)], "waited for an assignment"
    assert _committed(consumer, P0) == 1


def test_a_cooperative_revocation_commits_what_is_finished_and_forgets_the_rest() -> None:
    worker, consumer = _worker(strategy="cooperative-sticky")
    worker._accept(_record(P1, 0))
    worker._accept(_record(P1, 1))
    worker._step(accept=True)
    _finish(worker, P1, 0)  # p1@1 still in flight: it finishes later but no longer counts
    _cooperative_rebalance(worker, consumer, revoked={P1}, added=set())
    assert consumer.commits[-1] == {(TOPIC, 1): 1}
    assert (TOPIC, 1) not in worker.tracker.partitions
    commits = len(consumer.commits)
    _finish(worker, P1, 1)
    worker._step(accept=True)
    assert len(consumer.commits) == commits, "committed a partition this member no longer owns"


def test_a_cooperative_addition_keeps_what_was_owned() -> None:
    worker, consumer = _worker(strategy="cooperative-sticky")
    consumer._assignment = {P0}
    worker._accept(_record(P0, 0))
    worker._accept(_record(P0, 1))
    worker._accept(_record(P0, 2))
    worker._step(accept=True)
    _cooperative_rebalance(worker, consumer, revoked=set(), added={P1})
    assert _backlog(worker) == [(0, 2)] and len(worker._active) == 2
    assert _sample(worker, "videotag_assigned_partitions") == 2


def test_a_revoked_partitions_videos_are_cancelled_and_free_their_slots() -> None:
    worker, consumer = _worker(max_inflight=2)
    worker._accept(_record(P0, 0))
    worker._accept(_record(P1, 0))
    worker._accept(_record(P0, 1))
    worker._step(accept=True)  # p0@0 and p1@0 in flight
    running = {(j.partition, j.offset): j for j in worker._active.values()}
    _rebalance(worker, consumer, {P0, P1}, {P0})
    assert running[(1, 0)].token.reason == "revoked" and not running[(0, 0)].token.cancelled
    worker._done.put(running[(1, 0)])  # its thread stops at its next check and hands it back unanswered
    worker._step(accept=True)
    assert [(j.partition, j.offset) for j in worker._active.values()] == [(0, 0), (0, 1)], "the slot stayed taken"
    assert (TOPIC, 1) not in worker.tracker.partitions


def test_a_video_past_its_deadline_is_cancelled_and_the_worker_stays_healthy_until_stuck() -> None:
    worker, _ = _worker()
    worker.settings = dataclasses.replace(worker.settings, video_timeout_s=0.0)
    worker._accept(_record(P0, 0))
    worker._step(accept=True)
    [job] = worker._active.values()
    assert job.token.reason == "video_timeout"
    assert worker.healthy() == (True, "ok")
    worker._last_progress -= worker.settings.stuck_after_s + 1
    healthy, why = worker.healthy()
    assert not healthy and "none finished" in why


def test_a_message_that_killed_max_worker_deaths_workers_is_dead_lettered_not_started() -> None:
    from kafka.structs import OffsetAndMetadata

    from worker.attempts import Marks, inherit

    worker, consumer = _worker()
    # the last owner died while holding p0@0, which had already been in flight in two deaths
    consumer.metadata[P0] = OffsetAndMetadata(0, Marks(deaths={0: 2}, running={0}).encode(0), -1)
    worker._accept(_record(P0, 0))
    worker._accept(_record(P0, 1))
    worker._step(accept=True)
    jobs = {j.offset: j for j in worker._active.values()}
    assert jobs[0].error is not None and jobs[0].error.code == "worker_crashed"
    assert getattr(jobs[1].error, "code", None) != "worker_crashed"
    # p0@1 is marked running in a commit before it starts: should this worker die now, it counts
    assert inherit(consumer.metadata[P0].metadata).deaths == {0: 3, 1: 1}
