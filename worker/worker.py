"""The stateless tagging worker: Kafka requests → S3 object → VideoTag chain → result (or DLQ) → commit.

Lifecycle: `start()` (endpoints, model, clients), `run()` (consume until asked to stop), `drain()` (finish
in-flight work within the grace period, commit), `stop()` (leave the group, close everything).

Only the main thread touches the consumer. Videos run in a thread pool (`max_inflight`); their network
calls are batched by one model thread. A partition is paused, never left unpolled, while the worker is
full, so group membership survives videos that take minutes. With `features_output`, a video's features are
stored before its result is published, so a result's `features_uri` always names an existing object.
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
from typing import Any

import numpy as np
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from models.decoder_process import isolate_decoding
from models.errors import InputError
from models.tagger import VideoTagger
from worker.health import HealthServer
from worker.messages import VideoRequest, dlq_message, parse_request, result_message
from worker.metrics import Metrics
from worker.model import load_tagger
from worker.offsets import OffsetTracker, PartitionOffsets
from worker.pipeline import ModelThread, share_engines
from worker.settings import Settings, SettingsError
from worker.storage import ObjectFetcher, TempBudget, TransientError, make_client, put_object, split_s3_uri

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal_error"
PUBLISH_TIMEOUT_S = 30.0
POLL_TIMEOUT_MS = 50  # also how soon a finished video frees its slot for the next one
DLQ_MAX_BYTES = 1_000_000  # a dead letter must fit the producer's and broker's default 1 MiB record limit


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


def kafka_security(settings: Settings) -> dict[str, Any]:
    """kafka-python client options for TLS and SASL, shared by every client the project creates."""
    options: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if "SSL" in settings.security_protocol:
        options |= {"ssl_cafile": settings.ssl_cafile, "ssl_certfile": settings.ssl_certfile,
                    "ssl_keyfile": settings.ssl_keyfile, "ssl_password": settings.ssl_password,
                    "ssl_check_hostname": settings.ssl_check_hostname}
    if "SASL" in settings.security_protocol:
        options |= {"sasl_mechanism": settings.sasl_mechanism, "sasl_plain_username": settings.sasl_username,
                    "sasl_plain_password": settings.sasl_password}
    return options


class _Rebalance(AsyncConsumerRebalanceListener):
    """kafka-python 3 calls these on its IO thread while the main thread waits inside poll() or close(): they
    may change the worker's state, but a blocking client call there raises, so the commit is awaited."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.worker._revoked(revoked)
        await self.worker._commit_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker._assigned(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.worker._lost(lost)


class Worker:
    def __init__(self, settings: Settings, tagger: VideoTagger | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        try:  # before anything slow: a malformed setting is a usage error
            self._features_at = split_s3_uri(settings.features_output) if settings.features_output else None
        except ValueError as exc:
            raise SettingsError(f"setting 'features_output': {exc}") from exc
        self.metrics = metrics or Metrics()
        self.tagger = tagger
        self.tracker = OffsetTracker()
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self.health: HealthServer | None = None
        self._model_thread = ModelThread(settings.batch_size)
        self._executor = ThreadPoolExecutor(settings.max_inflight, thread_name_prefix="video")
        self._backlog: deque[Job] = deque()
        self._done: queue.Queue[Job] = queue.Queue()
        self._active: dict[int, Job] = {}
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._transient_streak = 0
        self._paused = False
        self._revoking: set[tuple[str, int]] = set()  # revoked, not yet known whether assigned back

    # lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Worker:
        s = self.settings
        self.metrics.set_build_info(_version())
        self.health = HealthServer(self.metrics, s.metrics_host, s.metrics_port, self.ready).start()
        log.info("endpoints on %s:%d; settings %s", s.metrics_host, self.health.port, s.redacted())
        tagger = self.tagger or load_tagger(s)
        self.metrics.model_info.info({k: str(v) for k, v in tagger.info.items()})
        self._model_thread.start()
        self._tagger = share_engines(tagger, self._model_thread)
        if s.decode_timeout_s > 0:  # a crashing or hanging decoder costs one video, not the worker
            self._tagger = isolate_decoding(self._tagger, s.decode_timeout_s)
        self.s3 = make_client(s.s3_endpoint_url, s.s3_region, s.s3_connect_timeout_s, s.s3_read_timeout_s)
        self.fetcher = ObjectFetcher(self.s3, s.temp_dir, s.max_object_bytes, TempBudget(s.temp_dir_max_bytes))
        security = kafka_security(s)
        self.producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, client_id=s.client_id, acks="all",
                                      linger_ms=5, **security)
        self.consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap_servers, group_id=s.group_id, client_id=s.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=s.max_inflight,
            session_timeout_ms=s.session_timeout_ms, heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms, **security,
        )
        self.consumer.subscribe([s.input_topic], listener=_Rebalance(self))
        self.tagger = tagger
        log.info("consuming %s as group %s", s.input_topic, s.group_id)
        return self

    def run(self) -> None:
        assert self.consumer is not None
        while not self._stopping.is_set():
            self._step(accept=True)

    def drain(self) -> None:
        """Finish what is in flight (up to drain_grace_s) while staying in the group; then commit."""
        assert self.consumer is not None
        dropped = len(self._backlog)
        self._backlog.clear()  # not started: uncommitted, so redelivered
        deadline = time.monotonic() + self.settings.drain_grace_s
        log.info("draining: %d in flight, %d not started (left for redelivery)", len(self._active), dropped)
        while self._active and time.monotonic() < deadline:
            self._step(accept=False)
        if self._active:
            log.warning("grace period over with %d videos unfinished: they will be redelivered", len(self._active))
            self._abandon.set()
        self._apply_done()
        self._commit()

    def stop(self) -> None:
        self._stopping.set()
        self._abandon.set()
        if self.consumer is not None:
            self.consumer.close(autocommit=False)  # leaves the group now: no wait for a session timeout
        if self.producer is not None:
            self.producer.close(timeout=10)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._model_thread.stop()
        if self.health is not None:
            self.health.stop()
        log.info("stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    # readiness ---------------------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.tagger is None:
            return False, "model not loaded"
        if self.consumer is None or self.consumer._coordinator.coordinator_unknown():
            # kafka-python has no public "connected to the group" check; the coordinator link is that check.
            return False, "group coordinator (broker) not reachable"
        if self._transient_streak >= self.settings.retry_max_attempts:
            return False, f"{self._transient_streak} transient failures in a row"
        now = time.monotonic()
        if any(now - job.started > self.settings.stuck_after_s for job in list(self._active.values())):
            return False, f"a video has been in flight for over {self.settings.stuck_after_s:.0f} s"
        return True, "ok"

    # the consumer loop (main thread) -------------------------------------------------------------------------

    def _step(self, accept: bool) -> None:
        assert self.consumer is not None
        self._apply_done()
        self._commit()
        # mid-rebalance (poll can return before the group settles), wait: the backlog may belong to another member
        while accept and not self._revoking and self._backlog and len(self._active) < self.settings.max_inflight:
            self._launch(self._backlog.popleft())
        self._set_paused(not accept or bool(self._backlog) or len(self._active) >= self.settings.max_inflight)
        records = self.consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
        for batch in records.values():
            for record in batch:
                self._accept(record)
        self._update_lag()

    def _set_paused(self, paused: bool) -> None:
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        if paused:
            self.consumer.pause(*assignment)
        elif self._paused:
            self.consumer.resume(*assignment)
        self._paused = paused

    def _accept(self, record: Any) -> None:
        self.metrics.messages_consumed.inc()
        try:
            requests: list[VideoRequest | None] = list(parse_request(record.value, self.settings.s3_event_video_id))
            error = None
        except InputError as exc:
            requests, error = [None], exc
        state = self.tracker.started(record.topic, record.partition, record.offset, len(requests))
        for request in requests:
            self._backlog.append(Job(record.topic, record.partition, record.offset, record.timestamp, record.key,
                                     record.value, state, request, error))

    def _launch(self, job: Job) -> None:
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
            self.tracker.finished(job.state, job.offset)
        self.metrics.inflight_videos.set(len(self._active))

    def _commit(self) -> None:
        """Commit the progress of every partition, except those in a rebalance (their next owner is unknown)."""
        assert self.consumer is not None
        offsets = {tp: off for tp, off in self.tracker.to_commit().items() if tp not in self._revoking}
        if offsets:
            with self._committing(offsets):
                self.consumer.commit(_wire(offsets))

    async def _commit_revoked(self) -> None:
        assert self.consumer is not None
        offsets = {tp: off for tp, off in self.tracker.to_commit().items() if tp in self._revoking}
        if offsets:
            with self._committing(offsets):
                await self.consumer.commit_async(_wire(offsets))

    @contextlib.contextmanager
    def _committing(self, offsets: dict[tuple[str, int], int]) -> Iterator[None]:
        try:
            yield
        except KafkaError as exc:  # e.g. the group moved on: the next owner redoes the work
            log.warning("commit of %s failed: %s", offsets, exc)
        else:
            self.tracker.committed(offsets)

    def _revoked(self, revoked: set[TopicPartition]) -> None:
        """An (eager) rebalance begins: what is finished gets committed; wait to learn which partitions come back.

        kafka-python keeps the fetch position of a partition assigned again to the same member, so its
        taken-but-unstarted messages are not fetched again: they must stay in the backlog, and its in-flight
        videos stay tracked so that the next commit cannot pass them."""
        self._apply_done()
        self._revoking = {(tp.topic, tp.partition) for tp in revoked}

    def _assigned(self, assigned: set[TopicPartition]) -> None:
        kept = {(tp.topic, tp.partition) for tp in assigned}
        self._forget(self._revoking - kept)
        self._revoking = set()
        self.metrics.rebalances.labels(kind="assigned").inc()
        self.metrics.assigned_partitions.set(len(kept))
        log.info("assigned %s", sorted(f"{t}[{p}]" for t, p in kept))

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
            with contextlib.suppress(KeyError):  # its new owner reports it now; a stale series would alert
                self.metrics.consumer_lag.remove(topic, str(partition))
        self._backlog = deque(job for job in self._backlog if (job.topic, job.partition) not in gone)
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
        attempts = 0
        while True:
            attempts += 1
            try:
                if job.error is not None:
                    self._dead_letter(job, job.error, attempts=1)
                else:
                    self._tag(job)
                break
            except Abandoned:
                log.info("abandoned offset %d of %s[%d]", job.offset, job.topic, job.partition)
                return  # never reported done, so never committed: redelivered
            except Exception as exc:  # never drop the job: an unfinished offset would stall its partition
                log.exception("unexpected failure on offset %d of %s[%d]", job.offset, job.topic, job.partition)
                try:
                    self._backoff(attempts, INTERNAL_ERROR, f"{type(exc).__name__}")
                except Abandoned:
                    return
        self._done.put(job)

    def _tag(self, job: Job) -> None:
        assert job.request is not None
        request = job.request
        attempts = 0
        while True:
            attempts += 1
            try:
                t0 = time.perf_counter()
                with self.fetcher.fetch(request.bucket, request.key) as (path, size):
                    fetched = time.perf_counter()
                    self.metrics.video_bytes.observe(size)
                    result = self._tagger.tag(path, name=f"s3://{request.bucket}/{request.key}")
                break
            except TransientError as exc:
                self._backoff(attempts, exc.code, str(exc))
            except InputError as exc:
                self._dead_letter(job, exc, attempts)
                return
            except Exception as exc:  # a bug or a library failure on this input: keep the partition moving
                log.exception("internal error on %s", request.video_id)
                self._dead_letter(job, InputError(INTERNAL_ERROR, f"{type(exc).__name__}: {str(exc)[:300]}"),
                                  attempts)
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
        self.metrics.frames_decoded.inc(result.video.frames_decoded)
        video = result.video
        frames = {"decoded": video.frames_decoded, "reported": video.frames_reported,
                  "sampled": len(video.order), "width": video.width, "height": video.height}
        timings["total"] = (time.perf_counter() - t0) * 1e3
        message = result_message(request, result.heads, self.tagger.info if self.tagger else {}, timings, frames,
                                 features_uri)
        self._publish(self.settings.output_topic, request.video_id, message, job)
        self.metrics.videos_processed.labels(status="ok").inc()

    def _store_features(self, request: VideoRequest, features: np.ndarray) -> str:
        """`<features_output><video_id>.npy` ([seg_num, 2048] float32), retried while S3 fails transiently;
        returns its URI. The object's metadata names what made it, like `videotag features`' index.csv."""
        assert self._features_at is not None and self.tagger is not None
        bucket, prefix = self._features_at
        key = f"{prefix}{request.video_id}.npy"
        buffer = io.BytesIO()
        np.save(buffer, features.astype(np.float32, copy=False), allow_pickle=False)
        metadata = {"seg-num": str(len(features)), "extractor-weights": self.tagger.info["extractor_weights"]}
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
        log.warning("dead-letter %s (offset %d of %s[%d]): %s", video_id, job.offset, job.topic, job.partition,
                    error.code)
        self.metrics.failures.labels(reason=error.code).inc()
        record = dlq_message(job.value, error, attempts, video_id, job.topic, job.partition, job.offset, job.key)
        if len(json.dumps(record, ensure_ascii=False).encode("utf-8", "replace")) > DLQ_MAX_BYTES:
            # A message above the size limit (or one whose escaping/base64 grows past it) would be refused by
            # the producer and the broker (1 MiB by default) for ever: keep a prefix, flagged as truncated.
            value = (job.value or b"")[: DLQ_MAX_BYTES // 8]  # JSON escapes grow a byte to at most 6
            record = dlq_message(value, error, attempts, video_id, job.topic, job.partition, job.offset, job.key)
            record["original"]["truncated"] = True
        self._publish(self.settings.dlq_topic, video_id, record, job)
        self.metrics.videos_processed.labels(status="dlq").inc()

    def _publish(self, topic: str, key: str | None, message: dict[str, Any], job: Job) -> None:
        """Blocks until the broker acknowledged (acks=all), retrying transient broker errors."""
        assert self.producer is not None
        value = json.dumps(message, ensure_ascii=False).encode("utf-8")
        attempts = 0
        while True:
            attempts += 1
            t0 = time.perf_counter()
            try:
                self.producer.send(topic, key=key.encode("utf-8") if key else None, value=value).get(
                    timeout=PUBLISH_TIMEOUT_S)
                break
            except KafkaError as exc:
                self._backoff(attempts, "publish_failed", f"{topic}: {type(exc).__name__}")
        self._transient_streak = 0
        self.metrics.stage_seconds.labels(stage="publish").observe(time.perf_counter() - t0)
        if job.timestamp_ms > 0:
            self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - job.timestamp_ms / 1e3))

    def _backoff(self, attempts: int, code: str, message: str) -> None:
        """Sleep before the next try; transient causes are retried until they pass or the worker stops."""
        self._transient_streak += 1
        self.metrics.failures.labels(reason=code).inc()
        s = self.settings
        delay = min(s.retry_backoff_max_s, s.retry_backoff_base_s * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
        log.warning("transient failure (attempt %d, retry in %.1f s): %s", attempts, delay, message)
        if self._abandon.wait(delay):
            raise Abandoned


def _wire(offsets: dict[tuple[str, int], int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("videotag")
    except PackageNotFoundError:
        return "unknown"


def run_worker(settings: Settings) -> int:
    """`videotag worker`: run until SIGTERM/SIGINT, drain, exit 0; a second signal exits at once."""
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
    return 0
