"""The stateless tagging worker: Kafka requests → S3 object → VideoTag chain → result (or DLQ) → commit.

Lifecycle: `start()` (endpoints, model, clients), `run()` (consume until asked to stop), `drain()` (finish
in-flight work within the grace period, commit), `stop()` (leave the group, close everything).

Only the main thread touches the consumer. Videos run in a thread pool (`max_inflight`); their network
calls go to the model process (worker/model_process.py), which batches them: Paddle never holds this
process's GIL, so polling, heartbeats and the endpoints stay responsive while videos are extracted.
A partition is paused, never left unpolled, while the worker is full, so group membership survives videos
that take minutes. With `features_output`, a video's features are stored before its result is published, so
a result's `features_uri` always names an existing object.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from models import cancel
from models.errors import ErrorCode, InputError, SystemicError
from worker import kafka_clients, logs, tracing
from worker.attempts import Marks, inherit
from worker.breaker import SYSTEMIC_CODES, Breaker
from worker.chain_builder import Chain, build_chain
from worker.footprint import check_fit
from worker.health import HealthServer
from worker.lanes import RetryState, lane_rank, not_due, parse_retry, paused_lanes
from worker.messages import Frames, VideoRequest, dlq_message, parse_request, result_message
from worker.metrics import Metrics
from worker.offsets import OffsetTracker, PartitionOffsets
from worker.recurring import RecurringErrors
from worker.settings import STOP_MARGIN_S, Settings, SettingsError
from worker.storage import (
    ObjectFetcher,
    TempBudget,
    TransientError,
    make_client,
    put_object,
    split_s3_uri,
    sweep_temp_dir,
)
from worker.telemetry import make_telemetry
from worker.transactions import HeldOutputs, Outcome, Output, Transactions

log = logging.getLogger(__name__)
POLL_TIMEOUT_MS = 50  # also how soon a finished video frees its slot for the next one
LANE_ENDS_REFRESH_S = 1.0  # how often the end offsets of higher lanes are asked for: how soon they overtake
LANE_ENDS_TIMEOUT_MS = 2000
DLQ_MAX_BYTES = kafka_clients.RECORD_VALUE_LIMIT  # fits the producer's and broker's default 1 MiB record limit
CONNECT_BACKOFF_MAX_S = 30.0


class Abandoned(Exception):
    """The worker is stopping without waiting: the message stays uncommitted and is redelivered."""


@dataclass
class Job:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    state: PartitionOffsets
    request: VideoRequest | None = None
    error: InputError | None = None
    started: float = field(default_factory=time.monotonic)
    outputs: list[Output] = field(default_factory=list)  # exactly-once: published with the offset commit
    token: cancel.Token = field(default_factory=cancel.Token)
    budget_spent: float = 0.0  # seconds of backoff spent on this request's own (object) faults
    finished: bool = False  # answered (result or dead letter): counts towards its partition's commit
    retry: RetryState | None = None  # read from the retry topic: what earlier deliveries spent (lanes.py)
    videos: int = 1  # videos in its message: one, and the message itself can go to the retry topic
    trace: tracing.TraceContext = field(default_factory=tracing.incoming)  # its outputs' traceparent

    def fields(self) -> dict[str, Any]:
        """What names this job in its log records and spans."""
        return {
            "video_id": self.request.video_id if self.request else None,
            "trace_id": self.trace.trace_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }


class _Rebalance(AsyncConsumerRebalanceListener):  # type: ignore[misc]  # (kafka-python is untyped: Any)
    """kafka-python 3 calls these on its IO thread while the main thread waits inside poll() or close(): they
    may change the worker's state, but a blocking client call there raises, so the commit is awaited.

    Eager assignors revoke everything before a rebalance and may assign some of it back; cooperative ones revoke
    only what moves, after the new assignment is known, and call "assigned" only when something was added (a
    rebalance that only removes partitions never calls it), so a cooperative revocation is final at once."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.cooperative = (
            kafka_clients.rebalance_protocol(worker.settings.partition_assignment_strategy) == "cooperative"
        )

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.worker._revoked(revoked)
        await self.worker._commit_revoked()
        if self.cooperative:
            self.worker._forget_revoking()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker._assigned(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.worker._lost(lost)


class Worker:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        try:  # before anything slow: a malformed setting is a usage error
            self._features_at = split_s3_uri(settings.features_output) if settings.features_output else None
        except ValueError as exc:
            raise SettingsError(f"setting 'features_output': {exc}") from exc
        self.metrics = metrics or Metrics()
        self.telemetry = make_telemetry(settings.otel_exporter_otlp_endpoint)  # no setting: no OpenTelemetry
        self.chain: Chain | None = None  # the model: loaded by start()
        self.tracker = OffsetTracker()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.health: HealthServer | None = None
        self._executor = ThreadPoolExecutor(settings.max_inflight, thread_name_prefix="video")
        self._backlog: deque[Job] = deque()
        self._done: queue.Queue[Job] = queue.Queue()
        self._active: dict[int, Job] = {}
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._transient_streak = 0
        self._recurring = RecurringErrors(log)  # Kafka denials and connect failures, each logged once
        self._lanes = settings.lanes()  # the topics read, highest priority first (lanes.py)
        self._sleeping: dict[tuple[str, int], int] = {}  # retry-topic partitions paused until a record is due (ms)
        self._ends: dict[tuple[str, int], int] = {}  # end offsets of the higher lanes' partitions
        self._ends_at = 0.0
        self._revoking: set[tuple[str, int]] = set()  # revoked, not yet known whether assigned back
        self._not_connected: str | None = "not connected to Kafka yet"  # why there are no clients (None once there are)
        self._producer_lock = threading.Lock()
        self._exactly_once = settings.delivery == "exactly_once"
        self._held = HeldOutputs()
        self.transactions: Transactions | None = None
        self._transaction_retry_at = 0.0
        self._last_progress = time.monotonic()  # a video finished, or work began after an idle spell
        self._outage: str | None = None  # why intake is paused (the object store does not answer)
        self._marks: dict[tuple[str, int], Marks] = {}  # per partition: worker deaths per message (attempts.py)
        self._base: dict[tuple[str, int], int] = {}  # per partition: where this worker began reading it
        self._graceful = False  # the commits of a stop let go of what is still running
        self.breaker = Breaker(settings.breaker_threshold, self._self_test, self.metrics)

    # lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Worker:
        s = self.settings
        self.metrics.set_build_info(_version())
        self.health = HealthServer(self.metrics, s.metrics_host, s.metrics_port, self.ready, self.healthy).start()
        log.info("endpoints on %s:%d; settings %s", s.metrics_host, self.health.port, s.redacted())
        self.chain = build_chain(s, "process", self.metrics)  # stop() closes it, whatever fails after this
        self.metrics.model_info.info({k: str(v) for k, v in self.chain.tagger.info.items()})
        swept = sweep_temp_dir(s.temp_dir)  # what workers killed with SIGKILL left behind
        if swept:
            log.info("removed %d temporary files left by processes that are gone", swept)
        self.s3 = make_client(s.s3_endpoint_url, s.s3_region, s.s3_connect_timeout_s, s.s3_read_timeout_s)
        self.fetcher = ObjectFetcher(self.s3, s.temp_dir, s.max_object_bytes, TempBudget(s.temp_dir_max_bytes))
        self._connect()
        return self

    def _connect(self) -> None:
        """Preflight the topics and create the clients, retrying (not-ready, with backoff) until it works or the
        worker is asked to stop: a broker that is down or a topic not yet created is not a reason to exit."""
        s = self.settings
        attempts = 0
        while not self._stopping.is_set():
            attempts += 1
            try:
                checked = kafka_clients.preflight(s)
                if checked.problems:
                    raise kafka_clients.BrokerUnreachable("; ".join(checked.problems))
                if self._exactly_once:
                    self.transactions = Transactions(s, lambda tid: kafka_clients.producer(s, tid))
                    self.transactions.start()
                else:
                    self.producer = kafka_clients.producer(s)
                self.consumer = kafka_clients.group_consumer(s, max_poll_records=s.max_inflight)
                self.consumer.subscribe(self._lanes, listener=_Rebalance(self))
                # A group leader assigns from its cluster metadata and rejoins as soon as the metadata of its
                # subscription differs from what it assigned with; for a fixed subscription kafka-python refreshes
                # that metadata only after the first join. So the first generation was assigned from nothing
                # ("assigned []" for a minute, right after the topics were created) or was followed at once by a
                # second rebalance (a transaction begun in the first then failed with IllegalGeneration). One
                # metadata refresh between subscribing and the first poll gives both the same view.
                self.consumer.topics()
            except (kafka_clients.BrokerUnreachable, KafkaError) as exc:
                self._close_clients()
                self._not_connected = str(exc)
                delay = min(CONNECT_BACKOFF_MAX_S, s.retry_backoff_base_s * 2 ** min(attempts, 16))
                self._recurring.failed("cannot start consuming", str(exc))
                self._stopping.wait(delay)
                continue
            self._recurring.succeeded("cannot start consuming")
            if checked.created:
                log.info("created topics %s", list(checked.created))
            self.metrics.input_partitions.set(checked.input_partitions)
            self._not_connected = None
            log.info(
                "consuming %s (%d partitions: at most that many busy workers) as group %s%s",
                " > ".join(self._lanes),
                checked.input_partitions,
                s.group_id,
                f", static member {s.group_instance_id}" if s.group_instance_id else "",
            )
            return

    def _close_clients(self) -> None:
        for client in (self.consumer, self.producer, self.transactions):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self.consumer = self.producer = self.transactions = None

    def run(self) -> None:
        while self.consumer is not None and not self._stopping.is_set():
            self._step_or_wait(accept=True)

    def drain(self) -> None:
        """Finish what is in flight (up to drain_grace_s) while staying in the group; then commit."""
        if self.consumer is None:
            return
        dropped = len(self._backlog)
        self._backlog.clear()  # not started: uncommitted, so redelivered
        deadline = time.monotonic() + self.settings.drain_grace_s
        log.info("draining: %d in flight, %d not started (left for redelivery)", len(self._active), dropped)
        while self._active and time.monotonic() < deadline:
            self._step_or_wait(accept=False)
        if self._active:
            log.warning("grace period over with %d videos unfinished: they will be redelivered", len(self._active))
            self._abandon.set()
            self._cancel(list(self._active.values()), "stopping")
        self._apply_done()
        self._graceful = True  # what is still running is let go, not lost to a death: no mark counts it
        self._commit(final=True)

    def stop(self) -> None:
        self._stopping.set()
        self._abandon.set()
        connected = self.consumer is not None
        if self.consumer is not None:
            self.consumer.close(autocommit=False)  # a dynamic member leaves the group now; a static one stays
        if self.producer is not None:
            self.producer.close(timeout=10)
        if self.transactions is not None:
            self.transactions.close()
        self.consumer = self.producer = self.transactions = None
        if connected and self.settings.group_instance_id and self.settings.leave_group_on_stop:
            # Static members never leave on close (KIP-345): without this, a scale-down would leave this
            # member's partitions unread until session_timeout_ms expires.
            try:
                log.info("%s", kafka_clients.remove_static_member(self.settings))
            except Exception as exc:  # the broker may be gone too: the session timeout does it then
                log.warning("could not remove static member %s: %s", self.settings.group_instance_id, exc)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.chain is not None:
            self.chain.close()
        if self.health is not None:
            self.health.stop()
        self.telemetry.shutdown()
        log.info("stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    def _chain(self) -> Chain:
        assert self.chain is not None, "the worker is started"
        return self.chain

    def _self_test(self, clip: Path) -> object:
        """The breaker's check: the chain tags a known-good clip. While the model process is being restarted
        this waits for it (submit does), so a restart that succeeds never fails the self-test."""
        return self._chain().tagger.tag(clip, name="self-test")

    # readiness ---------------------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.chain is None:
            return False, "model not loaded"
        if self._not_connected is not None:
            return False, self._not_connected
        failing = self._recurring.first()  # e.g. Kafka denying an ACL
        if failing is not None:
            return False, failing
        if self.consumer is None or self.consumer._coordinator.coordinator_unknown():
            # kafka-python has no public "connected to the group" check; the coordinator link is that check.
            return False, "group coordinator (broker) not reachable"
        if (model := self.chain.problem()) is not None:  # the model process is being restarted
            return False, model
        if self.breaker.broken:
            return False, self.breaker.broken
        if self.breaker.testing:
            return False, "testing itself after systemic failures"
        if self._outage:
            return False, self._outage
        if self._transient_streak >= self.settings.retry_max_attempts:
            return False, f"{self._transient_streak} transient failures in a row"
        return self.healthy()

    def healthy(self) -> tuple[bool, str]:
        """Liveness: false when the worker has work but finished nothing for `stuck_after_s`. Every video ends
        within `video_timeout_s` (answered or cancelled), which settings load keeps below it, so this is a
        wedged pipeline (a model process that no longer answers, say), which only a restart cures; and false when the
        model process has been down (every restart failing) for as long."""
        idle = time.monotonic() - self._last_progress
        down = self.chain.down_for() if self.chain is not None else 0.0
        if down > self.settings.stuck_after_s:  # every restart of the model process failed for that long
            return False, f"model process down for {down:.0f} s"
        if self._active and idle > self.settings.stuck_after_s:
            return False, f"{len(self._active)} videos in flight and none finished for {idle:.0f} s"
        return True, "ok"

    # the consumer loop (main thread) -------------------------------------------------------------------------

    def _step_or_wait(self, accept: bool) -> None:
        """One step; Kafka denying its poll or commit (an ACL) ends no loop: the worker reports it once, is not
        ready, and tries again after a backoff, as the ACL can be granted at any time."""
        try:
            self._step(accept)
        except KafkaError as exc:
            problem = kafka_clients.authorization_problem(exc, self.settings)
            if problem is None:
                raise
            # Consuming, a stop request ends the wait; draining, only the end of the grace period does.
            self._denied_wait("consume", problem, self._stopping if accept else self._abandon)
        else:
            self._recurring.succeeded("consume")

    def _step(self, accept: bool) -> None:
        assert self.consumer is not None
        self._apply_done()
        self._commit()
        # mid-rebalance (poll can return before the group settles), wait: the backlog may belong to another member
        if self._outage and not self._active:
            self._outage = None  # no video is left to find out whether it passed: let one try
        while (
            accept
            and not self._revoking
            and not self._outage
            and not self.breaker.testing
            and self._backlog
            and len(self._active) < self.settings.max_inflight
        ):
            if (
                self._exactly_once
                and self._needs_mark(self._backlog[0])
                and self.transactions is not None
                and self.transactions.busy
            ):
                break  # its mark commits the last transaction's offset: wait until that one is known
            self._launch(self._backlog.popleft())
        self._enforce_deadlines()
        self._set_paused(
            not accept
            or bool(self._backlog)
            or bool(self._outage)
            or self.breaker.testing
            or len(self._active) >= self.settings.max_inflight
        )
        records = kafka_clients.poll_records(self.consumer, POLL_TIMEOUT_MS)
        for batch in records.values():
            for record in batch:
                if not self._accept(record):
                    break  # a retry not yet due: its partition waits at it, the records after it are fetched again
        if len(self._lanes) > 1:  # the highest lane's work first (a stable sort: each lane keeps its order)
            self._backlog = deque(sorted(self._backlog, key=lambda job: lane_rank(self._lanes, job.topic)))
        self._update_lag()

    def _set_paused(self, paused: bool) -> None:
        """Pause everything (`paused`: the worker is full or must not take work), else only the lower lanes while
        a higher one has work, and the retry partitions whose next record is not due yet."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        now_ms = int(time.time() * 1000)
        self._sleeping = {tp: due for tp, due in self._sleeping.items() if due > now_ms}
        if paused:
            hold = set(assignment)
        else:
            hold = {tp for tp in assignment if (tp.topic, tp.partition) in self._sleeping}
            if len(self._lanes) > 1:
                lower = paused_lanes(self._lanes, self._busy_lanes(assignment))
                hold |= {tp for tp in assignment if tp.topic in lower}
        held = self.consumer.paused() & assignment
        if hold - held:
            self.consumer.pause(*(hold - held))
        if held - hold:
            self.consumer.resume(*(held - hold))  # their parked records flow again: kafka_clients.poll_records

    def _busy_lanes(self, assignment: set[TopicPartition]) -> set[str]:
        """Lanes with work: records taken but not started, or a partition behind its end (a retry partition
        waiting for its due time excepted: it must not hold back the lanes below)."""
        assert self.consumer is not None
        busy = {job.topic for job in self._backlog}
        if time.monotonic() - self._ends_at >= LANE_ENDS_REFRESH_S:
            # The fetch high watermarks of partitions not fetched lately (all paused while the worker was full)
            # are stale: ask the broker, at most once a second, about the partitions that can hold back others.
            self._ends_at = time.monotonic()
            higher = [tp for tp in assignment if tp.topic != self._lanes[-1]]
            try:
                ends = self.consumer.end_offsets(higher, timeout_ms=LANE_ENDS_TIMEOUT_MS) if higher else {}
            except KafkaError as exc:  # the fetch watermarks still count; the next step asks again
                log.debug("end offsets of %s: %s", higher, exc)
                ends = {}
            self._ends.update({(tp.topic, tp.partition): end for tp, end in ends.items() if end is not None})
        for tp in assignment:
            key = (tp.topic, tp.partition)
            if tp.topic in busy or key in self._sleeping:
                continue
            end = max(self.consumer.highwater(tp) or 0, self._ends.get(key, 0))
            try:
                position = self.consumer.position(tp, timeout_ms=0)
            except KafkaError:
                position = None
            if position is not None and end > position:
                busy.add(tp.topic)
        return busy

    def _accept(self, record: Any) -> bool:
        """Take a record; False when it is a retry not yet due, left to be read again then (not taken)."""
        retry = None
        if record.topic == self.settings.retry_topic:
            now_ms = int(time.time() * 1000)
            retry = parse_retry(record.headers, now_ms, self.settings.retry_budget_s)
            if retry is None:
                log.warning(
                    "offset %d of %s[%d]: retry headers missing or garbled: a fresh request",
                    record.offset,
                    record.topic,
                    record.partition,
                )
            elif not_due(retry, now_ms):
                tp = TopicPartition(record.topic, record.partition)
                assert self.consumer is not None
                self.consumer.pause(tp)
                self.consumer.seek(tp, record.offset)
                self._sleeping[(record.topic, record.partition)] = retry.due_ms
                return False
        self.metrics.messages_consumed.inc()
        try:
            s = self.settings
            requests: list[VideoRequest | None] = list(
                parse_request(record.value, s.s3_event_video_id, s.max_event_records, s.allowed_bucket_names())
            )
            error = None
        except InputError as exc:
            requests, error = [None], exc
        if (record.topic, record.partition) not in self.tracker.partitions:
            self._take_over((record.topic, record.partition), record.offset)
        # A message with no video (an s3:TestEvent, deletions) starts no job: the tracker counts it done at once,
        # so the next commit passes it as soon as everything before it is done.
        state = self.tracker.started(record.topic, record.partition, record.offset, len(requests))
        traces = tracing.incoming_all(record.headers, [request.trace_id if request else None for request in requests])
        for request, trace in zip(requests, traces, strict=True):
            self._backlog.append(
                Job(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.timestamp,
                    record.key,
                    record.value,
                    state,
                    request,
                    error,
                    trace=trace,
                    budget_spent=retry.budget_spent_s if retry else 0.0,
                    retry=retry,
                    videos=len(requests),
                )
            )
        return True

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for job in list(self._active.values()):
            if now - job.started > self.settings.video_timeout_s and not job.token.cancelled:
                log.warning(
                    "offset %d of %s[%d] past video_timeout_s (%.0f s): cancelling it",
                    job.offset,
                    job.topic,
                    job.partition,
                    self.settings.video_timeout_s,
                    extra=job.fields(),
                )
                job.token.cancel(ErrorCode.VIDEO_TIMEOUT)

    def _cancel(self, jobs: list[Job], reason: str) -> None:
        """Stop work that will never count: its decoder child is killed now, its thread stops at its next check."""
        for job in jobs:
            job.token.cancel(reason)

    def _take_over(self, tp: tuple[str, int], first_offset: int) -> None:
        """The first record of a partition since it was assigned: read how many workers died on its messages."""
        try:
            committed = None if self.consumer is None else self.consumer.committed(TopicPartition(*tp), metadata=True)
        except KafkaError as exc:  # counting is a safeguard: a failed read costs it for this assignment only
            log.warning("could not read the commit metadata of %s[%d]: %s", tp[0], tp[1], exc)
            committed = None
        self._marks[tp] = inherit(committed.metadata if committed is not None else None)
        self._base[tp] = committed.offset if committed is not None and committed.offset >= 0 else first_offset
        if self._marks[tp].deaths:
            log.warning("%s[%d]: workers died holding offsets %s", tp[0], tp[1], self._marks[tp].deaths)

    def _needs_mark(self, job: Job) -> bool:
        marks = self._marks.get((job.topic, job.partition))
        return (
            marks is not None
            and job.offset not in marks.running
            and marks.deaths.get(job.offset, 0) < self.settings.max_worker_deaths
        )

    def _mark_running(self, job: Job) -> None:
        """Before a message starts: dead-letter it if `max_worker_deaths` workers died holding it; else record,
        in a commit, that this worker holds it (so that its death, should it come, is counted)."""
        tp = (job.topic, job.partition)
        marks = self._marks.get(tp)
        if marks is None or job.offset in marks.running:
            return
        deaths = marks.deaths.get(job.offset, 0)
        if deaths >= self.settings.max_worker_deaths:
            job.error = InputError(
                ErrorCode.WORKER_CRASHED,
                f"{deaths} workers died while processing this message: dead-lettered instead of delivered again",
            )
            return
        marks.running.add(job.offset)
        self._commit_marks(tp)

    def _commit_marks(self, tp: tuple[str, int]) -> None:
        """Commit the marks at the offset the group already holds (exactly-once: the last transaction's), so this
        commit never passes unpublished work."""
        assert self.consumer is not None
        state = self.tracker.partitions.get(tp)
        if state is None:
            return
        if self._exactly_once:
            offset = state.committed if state.committed is not None else self._base[tp]
        else:
            offset = min(state.pending) if state.pending else state.highest_seen + 1
        with self._committing({tp: offset}):
            self.consumer.commit(self._wire({tp: offset}))

    def _launch(self, job: Job) -> None:
        self._mark_running(job)
        if not self._active:
            self._last_progress = time.monotonic()  # the clock of healthy() runs from the first video
        job.started = time.monotonic()
        self._active[id(job)] = job
        self.metrics.inflight_videos.set(len(self._active))
        self._executor.submit(self._process, job)

    def _apply_done(self) -> None:
        while True:
            try:
                job = self._done.get_nowait()
            except queue.Empty:
                break
            self._active.pop(id(job), None)
            self._last_progress = time.monotonic()
            if not job.finished:  # cancelled (revoked, stopping): never committed, its next owner redoes it
                continue
            tp = (job.topic, job.partition)
            if self._exactly_once and self.tracker.partitions.get(tp) is job.state:  # not of a forgotten partition
                self._held.hold(tp, job.offset, job.outputs)
            self.tracker.finished(job.state, job.offset)
            if job.offset not in job.state.pending and tp in self._marks:
                self._marks[tp].finished(job.offset)
        self.metrics.inflight_videos.set(len(self._active))

    def _commit(self, final: bool = False) -> None:
        """Commit the progress of every partition, except those in a rebalance (their next owner is unknown).
        `final`: the last commit before stopping, waited for."""
        assert self.consumer is not None
        if self._exactly_once:
            self._commit_transaction(final)
            return
        offsets = {tp: off for tp, off in self.tracker.to_commit().items() if tp not in self._revoking}
        if offsets:
            with self._committing(offsets):
                self.consumer.commit(self._wire(offsets))

    def _commit_transaction(self, final: bool) -> None:
        """Exactly-once: one transaction at a time publishes the held outputs of a contiguous run of finished
        messages per partition and commits the run's end; a failed one is aborted and tried again after a
        backoff (its outputs were never visible)."""
        assert self.consumer is not None and self.transactions is not None
        transactions = self.transactions
        outcome = transactions.finished(wait=final)
        if outcome is not None:
            self._transaction_done(outcome)
        if transactions.busy or (time.monotonic() < self._transaction_retry_at and not final):
            return
        commits = {tp: off for tp, off in self.tracker.to_commit().items() if tp not in self._revoking}
        if not commits or (transactions.producer is None and not self._renew_transactional_producer()):
            return
        transactions.submit(self._wire(commits), self._held.below(commits), self.consumer.group_metadata())
        if final:
            self._transaction_done(transactions.finished(wait=True))

    def _transaction_done(self, outcome: Outcome | None) -> None:
        assert self.transactions is not None
        if outcome is None:
            return
        if outcome.error is None:
            self._committed(outcome.commits)
            self._held.release(outcome.commits)
            self._transient_streak = 0
            now = time.time()
            for out in outcome.published:
                if out.request_timestamp_ms > 0:
                    self.metrics.end_to_end_seconds.observe(max(0.0, now - out.request_timestamp_ms / 1e3))
            return
        error = outcome.error
        self._transient_streak += 1
        self.metrics.failures.labels(reason=ErrorCode.TRANSACTION_FAILED).inc()
        delay = min(
            self.settings.retry_backoff_max_s, self.settings.retry_backoff_base_s * 2 ** min(self._transient_streak, 16)
        )
        self._transaction_retry_at = time.monotonic() + delay
        log.warning(
            "transaction of %s aborted (%s: %s); again in %.1f s", outcome.commits, type(error).__name__, error, delay
        )
        if self.transactions.producer is None or kafka_clients.producer_broken(self.transactions.producer, error):
            self._renew_transactional_producer()

    def _renew_transactional_producer(self) -> bool:
        """A new producer under the same transactional id (a new epoch: the broken one is fenced)."""
        assert self.transactions is not None
        try:
            self.transactions.replace_producer()
        except (KafkaError, kafka_clients.BrokerUnreachable) as exc:
            log.error("new transactional producer failed: %s (the next transaction tries again)", exc)
            self._transaction_retry_at = time.monotonic() + self.settings.retry_backoff_max_s
            return False
        self.metrics.failures.labels(reason=ErrorCode.PRODUCER_REPLACED).inc()
        return True

    async def _commit_revoked(self) -> None:
        """At-least-once only: a transaction cannot be run from the listener (it would block kafka-python's IO
        thread), and exactly-once needs none here: what it has not committed was never visible, and the
        partition's next owner redoes it."""
        assert self.consumer is not None
        if self._exactly_once:
            return
        offsets = {tp: off for tp, off in self.tracker.to_commit().items() if tp in self._revoking}
        if offsets:
            with self._committing(offsets):
                await self.consumer.commit_async(self._wire(offsets, graceful=True))

    @contextlib.contextmanager
    def _committing(self, offsets: dict[tuple[str, int], int]) -> Iterator[None]:
        try:
            yield
        except KafkaError as exc:  # e.g. the group moved on: the next owner redoes the work
            problem = kafka_clients.authorization_problem(exc, self.settings)
            if problem is None:
                log.warning("commit of %s failed: %s", offsets, exc)
            else:  # the poll is denied too, and backs off
                self._recurring.failed("commit", problem)
        else:
            self._committed(offsets)
            self._recurring.succeeded("commit")

    def _committed(self, offsets: dict[tuple[str, int], int]) -> None:
        """The group holds these offsets now (either delivery mode). A partition forgotten meanwhile (a transaction
        that ended after a rebalance) is its new owner's to report."""
        self.tracker.committed(offsets)
        for (topic, partition), offset in offsets.items():
            if (topic, partition) in self.tracker.partitions:
                self.metrics.committed_offset.labels(topic=topic, partition=str(partition)).set(offset)

    def _revoked(self, revoked: set[TopicPartition]) -> None:
        """An (eager) rebalance begins: what is finished gets committed; wait to learn which partitions come back.

        kafka-python keeps the fetch position of a partition assigned again to the same member, so its
        taken-but-unstarted messages are not fetched again: they must stay in the backlog, and its in-flight
        videos stay tracked so that the next commit cannot pass them."""
        self._apply_done()
        self._revoking = {(tp.topic, tp.partition) for tp in revoked}

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        """Eager: the whole new assignment (kept partitions included). Cooperative: only the added ones."""
        assert self.consumer is not None
        kept = {(tp.topic, tp.partition) for tp in assigned}
        self._forget(self._revoking - kept)
        self._revoking = set()
        generation = self.consumer._coordinator.group_metadata().generation_id  # no public accessor
        self.metrics.rebalances.labels(kind="assigned").inc()
        self.metrics.group_generation.set(generation)
        self.metrics.assigned_partitions.set(len(self.consumer.assignment()))
        log.info("assigned %s (generation %d)", sorted(f"{t}[{p}]" for t, p in kept), generation)

    def _forget_revoking(self) -> None:
        """A cooperative revocation: these partitions are gone, whatever comes next."""
        assert self.consumer is not None
        self._forget(self._revoking)
        self._revoking = set()
        self.metrics.assigned_partitions.set(len(self.consumer.assignment()))

    def _lost(self, lost: set[TopicPartition]) -> None:
        """Evicted from the group (e.g. a missed session timeout): kafka-python drops the positions, so every
        partition, even one assigned back, is read again from its last commit."""
        self._apply_done()
        self._forget(self._revoking | {(tp.topic, tp.partition) for tp in lost})
        self._revoking = set()
        self.metrics.rebalances.labels(kind="lost").inc()
        self.metrics.assigned_partitions.set(0)

    def _forget(self, gone: set[tuple[str, int]]) -> None:
        """Another member owns these now and starts from their last commit: drop their unstarted messages;
        their in-flight videos still finish (and publish) but no longer count towards a commit."""
        if not gone:
            return
        for topic, partition in gone:
            self.tracker.forget(topic, partition)
            self._held.forget((topic, partition))
            self._marks.pop((topic, partition), None)
            self._base.pop((topic, partition), None)
            self._sleeping.pop((topic, partition), None)
            self._ends.pop((topic, partition), None)
            for gauge in (self.metrics.consumer_lag, self.metrics.committed_offset):
                with contextlib.suppress(KeyError):  # its new owner reports it now; a stale series would alert
                    gauge.remove(topic, str(partition))
        self._backlog = deque(job for job in self._backlog if (job.topic, job.partition) not in gone)
        self._cancel([job for job in self._active.values() if (job.topic, job.partition) in gone], "revoked")
        log.info("revoked %s", sorted(f"{t}[{p}]" for t, p in gone))

    def _update_lag(self) -> None:
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            state = self.tracker.partitions.get((tp.topic, tp.partition))
            done = state.committed if state is not None and state.committed is not None else None
            if done is None:
                try:
                    done = self.consumer.position(tp, timeout_ms=0)
                except KafkaError:
                    continue
            if done is not None:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, high - done))

    # one video (pool threads) -------------------------------------------------------------------------------

    def _process(self, job: Job) -> None:
        """Answer one job (result or dead letter), however long that takes, unless it is cancelled or abandoned;
        it is always handed back to the consumer thread, which frees its slot."""
        with logs.context(**job.fields()):  # this thread's records name the video
            try:
                with cancel.scope(job.token):
                    self._answer(job)
            except cancel.Cancelled as exc:
                if exc.reason == ErrorCode.VIDEO_TIMEOUT:
                    self._answer_timeout(job)
                else:
                    log.info("cancelled offset %d of %s[%d] (%s)", job.offset, job.topic, job.partition, exc.reason)
            except Abandoned:
                log.info("abandoned offset %d of %s[%d]", job.offset, job.topic, job.partition)
        self._done.put(job)

    def _answer_timeout(self, job: Job) -> None:
        error = InputError(
            ErrorCode.VIDEO_TIMEOUT, f"not finished within video_timeout_s ({self.settings.video_timeout_s:g} s)"
        )
        with contextlib.suppress(Abandoned):
            self._dead_letter(job, error, attempts=1)
            job.finished = True

    def _answer(self, job: Job) -> None:
        attempts = 0
        while True:
            attempts += 1
            try:
                if job.error is not None:
                    self._dead_letter(job, job.error, attempts=1)
                else:
                    self._tag(job)
                job.finished = True
                return
            except (Abandoned, cancel.Cancelled):
                raise
            except Exception as exc:  # never drop the job: an unfinished offset would stall its partition
                log.exception("unexpected failure on offset %d of %s[%d]", job.offset, job.topic, job.partition)
                self._backoff(attempts, ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}")

    def _tag(self, job: Job) -> None:
        assert job.request is not None
        request = job.request
        attempts = 0
        while True:
            attempts += 1
            try:
                t0, started_ns = time.perf_counter(), time.time_ns()
                with self.fetcher.fetch(request.bucket, request.key) as (path, size):
                    fetched = time.perf_counter()
                    self._outage = None
                    self.metrics.video_bytes.observe(size)
                    result = self._chain().tagger.tag(path, name=f"s3://{request.bucket}/{request.key}")
                break
            except TransientError as exc:
                # No answer: this object's transfer stalling, or the store down for everyone? Ask about the bucket.
                if exc.outage and (exc.answered or not self.fetcher.store_answers(request.bucket)):
                    self._outage = f"object store unreachable ({exc.code})"  # intake pauses; no budget is spent
                    self._backoff(attempts, exc.code, str(exc))
                    continue
                if job.budget_spent >= self.settings.retry_budget_s:  # this object's fault, for too long
                    code = (
                        ErrorCode.ACCESS_DENIED if exc.code is ErrorCode.ACCESS_DENIED else ErrorCode.RETRIES_EXHAUSTED
                    )
                    total = attempts + (job.retry.attempts if job.retry else 0)
                    self._dead_letter(
                        job,
                        InputError(code, f"gave up after {total} attempts in {job.budget_spent:.0f} s; last: {exc}"),
                        attempts,
                    )
                    return
                if self._retry_later(job, exc, attempts):
                    return
                job.budget_spent += self._backoff(attempts, exc.code, str(exc), systemic=False)
            except InputError as exc:
                self._dead_letter(job, exc, attempts)
                return
            except SystemicError as exc:  # this machine, not the input (disk full, no memory): never dead-lettered
                self._backoff(attempts, exc.code, str(exc))
            except cancel.Cancelled:
                raise
            except Exception as exc:  # a bug or a library failure on this input: keep the partition moving
                log.exception("internal error on %s", request.video_id)
                error = InputError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {str(exc)[:300]}")
                self._dead_letter(job, error, attempts)
                return
        timings = {"fetch": (fetched - t0) * 1e3, **result.timings_ms}
        features_uri = None
        if self._features_at is not None:
            stored = time.perf_counter()
            try:
                features_uri = self._store_features(request, result.features)
            except InputError as exc:
                self._dead_letter(job, exc, attempts=1)
                return
            timings["store_features"] = (time.perf_counter() - stored) * 1e3
        for stage, ms in timings.items():
            self.metrics.stage_seconds.labels(stage=stage).observe(ms / 1e3)
        self.telemetry.stages(job.trace, started_ns, timings, _span_attributes(job))
        self.metrics.frames_decoded.inc(result.video.frames_decoded)
        video = result.video
        frames: Frames = {
            "decoded": video.frames_decoded,
            "reported": video.frames_reported,
            "sampled": len(video.order),
            "width": video.width,
            "height": video.height,
            "decoder": video.decoder,
        }
        timings["total"] = (time.perf_counter() - t0) * 1e3
        message = result_message(request, result.heads, self._chain().tagger.info, timings, frames, features_uri)
        self._publish(self.settings.output_topic, request.video_id, message, job)
        self.breaker.success()
        self.metrics.videos_processed.labels(status="ok").inc()
        log.info(
            "tagged %s (offset %d of %s[%d]) in %.1f s",
            request.video_id,
            job.offset,
            job.topic,
            job.partition,
            timings["total"] / 1e3,
        )

    def _retry_later(self, job: Job, exc: TransientError, attempts: int) -> bool:
        """With a retry topic: instead of sleeping on this object's fault (holding a slot, and the commit of its
        partition), publish the request there, due after the backoff, and count this delivery answered. False
        (retry in place) without a retry topic, or when the request would not fit a record there."""
        s = self.settings
        if s.retry_topic is None or job.request is None:
            return False
        total = attempts + (job.retry.attempts if job.retry else 0)
        delay = self._backoff_s(total)
        origin = (
            (job.retry.origin_topic, job.retry.origin_partition, job.retry.origin_offset)
            if job.retry
            else (job.topic, job.partition, job.offset)
        )
        state = RetryState(
            total, job.budget_spent + delay, int((time.time() + delay) * 1000), *origin, last_error=f"{exc.code}: {exc}"
        )
        # The message itself when it holds only this video; of an S3 event with several, only the failing one.
        value = (
            (job.value or b"")
            if job.videos == 1
            else json.dumps(_request_document(job.request), ensure_ascii=False).encode("utf-8")
        )
        headers = state.headers()
        if len(value) + sum(len(k) + len(v) for k, v in headers) > kafka_clients.RECORD_VALUE_LIMIT:
            return False
        self._publish(s.retry_topic, job.key, value, job, extra_headers=headers, answer=False)
        self.metrics.failures.labels(reason=exc.code).inc()
        self.metrics.retries_published.labels(reason=exc.code).inc()
        log.warning(
            "offset %d of %s[%d] to the retry topic (attempt %d, due in %.1f s, %.0f of %.0f s budget spent): %s",
            job.offset,
            job.topic,
            job.partition,
            total,
            delay,
            state.budget_spent_s,
            s.retry_budget_s,
            exc,
        )
        return True

    def _store_features(self, request: VideoRequest, features: np.ndarray) -> str:
        """`<features_output><video_id>.npy` ([seg_num, 2048] float32), retried while S3 fails transiently;
        returns its URI. The object's metadata names what made it, like `videotag features`' index.csv."""
        assert self._features_at is not None
        bucket, prefix = self._features_at
        key = f"{prefix}{request.video_id}.npy"
        buffer = io.BytesIO()
        np.save(buffer, features.astype(np.float32, copy=False), allow_pickle=False)
        metadata = {"seg-num": str(len(features)), "extractor-weights": self._chain().tagger.info["extractor_weights"]}
        attempts = 0
        while True:
            attempts += 1
            try:
                put_object(self.s3, bucket, key, buffer.getvalue(), metadata)
                return f"s3://{bucket}/{key}"
            except TransientError as exc:
                self._backoff(attempts, exc.code, str(exc))

    def _dead_letter(self, job: Job, error: InputError, attempts: int) -> None:
        video_id = job.request.video_id if job.request else None
        if error.code in SYSTEMIC_CODES and not self.breaker.failure_is_the_inputs():
            log.error(
                "not dead-lettering %s (%s): the worker itself is broken (%s); stopping",
                video_id,
                error.code,
                self.breaker.broken,
            )
            self.request_stop()
            raise Abandoned
        log.warning(
            "dead-letter %s (offset %d of %s[%d]): %s", video_id, job.offset, job.topic, job.partition, error.code
        )
        self.metrics.failures.labels(reason=error.code).inc()
        # From the retry topic: named by where the request first came from, with every delivery's attempts.
        topic, partition, offset = (
            (job.retry.origin_topic, job.retry.origin_partition, job.retry.origin_offset)
            if job.retry
            else (job.topic, job.partition, job.offset)
        )
        attempts += job.retry.attempts if job.retry else 0
        record = dlq_message(job.value, error, attempts, video_id, topic, partition, offset, job.key)
        if len(json.dumps(record, ensure_ascii=False).encode("utf-8", "replace")) > DLQ_MAX_BYTES:
            # A message above the size limit (or one whose escaping/base64 grows past it) would be refused by
            # the producer and the broker (1 MiB by default) for ever: keep a prefix, flagged as truncated.
            value = (job.value or b"")[: DLQ_MAX_BYTES // 8]  # JSON escapes grow a byte to at most 6
            record = dlq_message(value, error, attempts, video_id, topic, partition, offset, job.key)
            record["original"]["truncated"] = True
        self._publish(self.settings.dlq_topic, video_id, record, job, error.code)
        self.metrics.videos_processed.labels(status="dlq").inc()

    def _publish(
        self,
        topic: str,
        key: str | bytes | None,
        message: dict[str, Any] | bytes,
        job: Job,
        error_code: str | None = None,
        extra_headers: list[tuple[str, bytes]] | None = None,
        answer: bool = True,
    ) -> None:
        """Publish a result, a dead letter (`error_code`) or, with `answer` false, a retry record (its retry headers
        in `extra_headers`); each carries the request's trace context in a `traceparent` header."""
        value = message if isinstance(message, bytes) else json.dumps(message, ensure_ascii=False).encode("utf-8")
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        outcome = "dead_letter" if error_code else "result" if answer else "retry"
        attributes = _span_attributes(job) | {
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "videotag.outcome": outcome,
        }
        if error_code:
            attributes["videotag.error_code"] = error_code
        with self.telemetry.publish(job.trace, attributes) as span_id:
            headers = [*(extra_headers or []), *tracing.output_headers(job.trace, span_id)]
            if self._exactly_once:  # published with its offset's commit (_commit_transaction)
                job.outputs.append(Output(topic, raw_key, value, job.timestamp_ms if answer else 0, headers))
                return
            self._send(topic, raw_key, value, headers, job, answer)

    def _send(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], job: Job, answer: bool
    ) -> None:
        """Blocks until the broker acknowledged (acks=all). The producer retries a record itself for up to
        delivery_timeout_ms, which the wait covers, so a record is sent again only after the producer gave it
        up; a producer in a fatal state is replaced first. `answer`: a result or dead letter (not a retry)."""
        attempts = 0
        while True:
            attempts += 1
            t0 = time.perf_counter()
            producer = self._live_producer()
            try:
                producer.send(topic, key=key, value=value, headers=headers).get(timeout=self.settings.publish_timeout_s)
                break
            except KafkaError as exc:
                if kafka_clients.producer_broken(producer, exc):
                    self._replace_producer(producer, exc)
                problem = kafka_clients.authorization_problem(exc, self.settings)
                if problem is None:
                    self._backoff(attempts, ErrorCode.PUBLISH_FAILED, f"{topic}: {type(exc).__name__}")
                elif self._denied_wait(f"publish to {topic}", problem, self._abandon):
                    # an ACL, not this record: retried until granted, never dead-lettered
                    raise Abandoned from exc
        self._recurring.succeeded(f"publish to {topic}")
        self._transient_streak = 0
        self.metrics.stage_seconds.labels(stage="publish").observe(time.perf_counter() - t0)
        if job.timestamp_ms > 0 and answer:
            self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - job.timestamp_ms / 1e3))

    def _live_producer(self) -> KafkaProducer:
        with self._producer_lock:
            if self.producer is None:
                raise Abandoned  # stopping: clients are closed
            return self.producer

    def _replace_producer(self, broken: KafkaProducer, error: BaseException) -> None:
        """Recreate a producer that can no longer deliver (once, however many threads saw it fail)."""
        with self._producer_lock:
            if self.producer is not broken or self._stopping.is_set():
                return
            log.error("producer unusable (%s: %s): replacing it", type(error).__name__, error)
            with contextlib.suppress(Exception):
                # (kafka-python is untyped: the `is` test above narrowed this Any to self.producer's `Any | None`)
                broken.close(timeout=0)  # type: ignore[union-attr]
            try:
                self.producer = kafka_clients.producer(self.settings)
            except kafka_clients.BrokerUnreachable as exc:
                log.error("new producer failed: %s (next publish tries again)", exc)
            else:
                self.metrics.failures.labels(reason=ErrorCode.PRODUCER_REPLACED).inc()

    def _wire(
        self, offsets: dict[tuple[str, int], int], graceful: bool = False
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Offsets to commit, each with its partition's marks (attempts.py) as metadata."""
        graceful = graceful or self._graceful
        return {
            TopicPartition(*tp): OffsetAndMetadata(
                o, self._marks[tp].encode(o, graceful) if tp in self._marks else "", -1
            )
            for tp, o in offsets.items()
        }

    def _backoff(self, attempts: int, code: str, message: str, systemic: bool = True) -> float:
        """Sleep before the next try and return how long. A systemic cause (the store or the broker down for
        everyone) counts towards not-ready; one object's fault does not (other requests go on)."""
        if systemic:
            self._transient_streak += 1
        self.metrics.failures.labels(reason=code).inc()
        delay = self._backoff_s(attempts)
        log.warning("transient failure (attempt %d, retry in %.1f s): %s", attempts, delay, message)
        if self._abandon.wait(delay):
            raise Abandoned
        return delay

    def _denied_wait(self, where: str, problem: str, wake: threading.Event) -> bool:
        """Like _backoff for an operation Kafka denies (an ACL): reported once while it lasts, not per try.
        Returns whether `wake` ended the wait."""
        failures = self._recurring.failed(where, problem)
        self.metrics.failures.labels(reason="access_denied").inc()
        return wake.wait(self._backoff_s(failures))

    def _backoff_s(self, attempts: int) -> float:
        s = self.settings
        # (typeshed types int ** int as Any: a negative exponent makes a float)
        backoff: float = min(s.retry_backoff_max_s, s.retry_backoff_base_s * 2 ** (attempts - 1))
        return backoff * random.uniform(0.5, 1.0)


def _span_attributes(job: Job) -> dict[str, Any]:
    """A job's fields as span attributes (its trace id is the span's own)."""
    return {
        f"videotag.{name}": value for name, value in job.fields().items() if value is not None and name != "trace_id"
    }


def _request_document(request: VideoRequest) -> dict[str, Any]:
    """One video's request (request.schema.json), as a message of its own."""
    document: dict[str, Any] = {"video_id": request.video_id, "bucket": request.bucket, "key": request.key}
    if request.trace_id is not None:
        document["trace_id"] = request.trace_id
    if request.submitted_at is not None:
        document["submitted_at"] = request.submitted_at
    if request.attributes:
        document["attributes"] = request.attributes
    return document


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("videotag")
    except PackageNotFoundError:
        return "unknown"


def run_worker(settings: Settings) -> int:
    """`videotag worker`: run until SIGTERM/SIGINT, drain, exit 0; a second signal exits at once."""
    check_fit(settings)  # max_inflight against the cgroup memory limit, before anything is loaded
    worker = Worker(settings)
    signals = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now; uncommitted work will be redelivered")
            os._exit(130)
        log.info("%s: draining", signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    try:
        worker.run()
        worker.drain()
    finally:
        worker.stop()
        _exit_after(STOP_MARGIN_S, 1 if worker.breaker.broken else 0)
    return 1 if worker.breaker.broken else 0


def _exit_after(seconds: float, code: int) -> None:
    """Exit 0 after `seconds` even if a video's thread is still inside a call that cannot be interrupted (a
    stalled read, a network run): the interpreter would wait for it at exit. What it held is uncommitted, so
    it is redelivered; its temporary file is swept at the next start."""

    def exit_now() -> None:
        time.sleep(seconds)
        log.warning("threads still busy %.0f s after stop: exiting", seconds)
        logging.shutdown()
        os._exit(code)

    threading.Thread(target=exit_now, name="exit-watchdog", daemon=True).start()
