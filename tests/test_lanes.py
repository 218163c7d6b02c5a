"""Priority lanes and retry headers: the pure decisions of worker/lanes.py, and how settings and ACLs use them."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from models.errors import ErrorCode
from tests.test_rebalance import FakeConsumer
from worker import kafka_clients
from worker.lanes import (
    ATTEMPTS,
    DUE,
    ORIGIN_TOPIC,
    RetryState,
    lane_order,
    lane_problems,
    lane_rank,
    not_due,
    parse_retry,
    paused_lanes,
)
from worker.settings import Settings, SettingsError, load_settings
from worker.storage import TransientError
from worker.worker import Worker

NOW_MS = 1_800_000_000_000


def test_lane_order_puts_the_retry_topic_between_fresh_and_backfill() -> None:
    assert lane_order(["fresh"], None) == ["fresh"]
    assert lane_order(["fresh"], "retry") == ["fresh", "retry"]
    assert lane_order(["fresh", "backfill", "old"], "retry") == ["fresh", "retry", "backfill", "old"]
    assert lane_order(["fresh", "backfill"], None) == ["fresh", "backfill"]


def test_lane_problems_name_duplicates_and_overlaps() -> None:
    assert lane_problems(["a", "b"], "r", "out", "dlq") == []
    assert lane_problems(["a", "a"], None, "out", "dlq") == ["setting 'input_topics': ['a'] listed more than once"]
    assert lane_problems(["a"], "a", "out", "dlq") == ["setting 'retry_topic': 'a' is also an input topic"]
    assert lane_problems(["a"], "r", "r", "dlq") == [
        "setting 'output_topic': 'r' is also read as an input or retry topic"
    ]
    assert lane_problems(["a", "dlq"], None, "out", "dlq") == [
        "setting 'dlq_topic': 'dlq' is also read as an input or retry topic"
    ]
    assert lane_problems([], None, "out", "dlq") == [
        "setting 'input_topics': names no topic (unset it to read input_topic)"
    ]


def test_lower_lanes_pause_while_a_higher_one_has_work() -> None:
    lanes = ["fresh", "retry", "backfill"]
    assert paused_lanes(lanes, set()) == set()
    assert paused_lanes(lanes, {"backfill"}) == set()
    assert paused_lanes(lanes, {"retry", "backfill"}) == {"backfill"}
    assert paused_lanes(lanes, {"fresh"}) == {"retry", "backfill"}
    assert paused_lanes(lanes, {"fresh", "backfill"}) == {"retry", "backfill"}
    assert paused_lanes(["only"], {"only"}) == set()
    assert [lane_rank(lanes, t) for t in ("fresh", "retry", "backfill", "elsewhere")] == [0, 1, 2, 3]


def _state(**changes: object) -> RetryState:
    values = dict(
        attempts=2,
        budget_spent_s=1.5,
        due_ms=NOW_MS + 3000,
        origin_topic="fresh",
        origin_partition=4,
        origin_offset=1234,
        last_error="access_denied: 403",
    )
    return RetryState(**(values | changes))  # type: ignore[arg-type]


def test_retry_headers_round_trip_and_say_when_due() -> None:
    state = _state()
    assert parse_retry(state.headers(), NOW_MS, 600) == state
    assert not_due(state, NOW_MS) and not not_due(state, NOW_MS + 3000) and not not_due(None, NOW_MS)
    long_error = _state(last_error="x" * 2000)
    assert len(parse_retry(long_error.headers(), NOW_MS, 600).last_error) == 500  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [(ATTEMPTS, b"2")],  # the rest missing
        [(name, b"\xff\xfe") if name == ATTEMPTS else (name, value) for name, value in _state().headers()],
        [(name, b"two") if name == ATTEMPTS else (name, value) for name, value in _state().headers()],
        [(name, None) if name == DUE else (name, value) for name, value in _state().headers()],
        [(name, b"") if name == ORIGIN_TOPIC else (name, value) for name, value in _state().headers()],
        _state(attempts=0).headers(),
        _state(budget_spent_s=float("nan")).headers(),
        _state(origin_offset=-1).headers(),
        _state(due_ms=NOW_MS + 601_000).headers(),  # further away than the whole budget: no worker set that
    ],
)
def test_garbled_retry_headers_make_a_fresh_request(headers: list[tuple[str, bytes | None]] | None) -> None:
    assert parse_retry(headers, NOW_MS, 600) is None


def test_settings_default_to_the_single_input_topic_and_refuse_overlaps() -> None:
    plain = load_settings(env={})
    assert plain.lanes() == ["videotag.requests"] and plain.retry_topic is None
    laned = load_settings(env={"VIDEOTAG_INPUT_TOPICS": "fresh, backfill", "VIDEOTAG_RETRY_TOPIC": "retry"})
    assert laned.lanes() == ["fresh", "retry", "backfill"]
    assert load_settings(env={}, overrides={"input_topics": ["a", "b"]}).lanes() == ["a", "b"]
    with pytest.raises(SettingsError, match="'retry_topic': 'fresh' is also an input topic"):
        load_settings(env={"VIDEOTAG_INPUT_TOPICS": "fresh,backfill", "VIDEOTAG_RETRY_TOPIC": "fresh"})
    with pytest.raises(SettingsError, match="listed more than once"):
        load_settings(env={"VIDEOTAG_INPUT_TOPICS": "a,b,a"})


def test_every_lane_and_the_retry_topic_need_their_acls() -> None:
    settings = load_settings(env={"VIDEOTAG_INPUT_TOPICS": "fresh,backfill", "VIDEOTAG_RETRY_TOPIC": "retry"})
    needed = {(a.name, a.operation) for a in kafka_clients.required_access(settings) if a.resource == "TOPIC"}
    assert needed == {
        ("fresh", "READ"),
        ("backfill", "READ"),
        ("retry", "READ"),
        ("retry", "WRITE"),
        ("videotag.tags", "WRITE"),
        ("videotag.dlq", "WRITE"),
    }
    described = {
        t: {"error_code": 0, "partitions": [{}]} for t in ("fresh", "backfill", "videotag.tags", "videotag.dlq")
    }
    problems = kafka_clients.topic_problems(settings, described, {"retry": 1000})
    assert problems == [
        "topic 'retry' does not exist",
        f"topic 'retry' has max.message.bytes=1000, below what our largest record needs "
        f"({kafka_clients.REQUIRED_MAX_MESSAGE_BYTES}): raise it to at least that",
    ]


# The worker's use of them, on a fake consumer (tests/test_rebalance.py) -------------------------------------------

FRESH, RETRY, BACKFILL = TopicPartition("fresh", 0), TopicPartition("retry", 0), TopicPartition("backfill", 0)


class LaneConsumer(FakeConsumer):
    """Ends and positions per partition, and the seeks the worker made."""

    def __init__(self) -> None:
        super().__init__({FRESH, RETRY, BACKFILL})
        self.ends: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int) -> dict[TopicPartition, int]:
        return {tp: self.ends.get(tp, 0) for tp in partitions}

    def position(self, tp: TopicPartition, timeout_ms: int) -> int:
        return self.positions.get(tp, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


def _lane_worker(**settings: object) -> tuple[Worker, LaneConsumer]:
    worker = Worker(Settings(input_topics="fresh,backfill", retry_topic="retry", **settings))  # type: ignore[arg-type]
    consumer = LaneConsumer()
    worker.consumer = consumer  # type: ignore[assignment]
    worker._not_connected = None
    return worker, consumer


def _consumer_record(
    tp: TopicPartition, offset: int, value: bytes, headers: list[tuple[str, bytes]] | None = None
) -> ConsumerRecord:
    return ConsumerRecord(
        tp.topic, tp.partition, -1, offset, 0, 0, b"k", value, headers or [], None, -1, len(value), -1
    )


REQUEST = b'{"video_id": "v", "bucket": "videos", "key": "a.mp4"}'


def test_the_worker_pauses_lower_lanes_while_a_higher_one_has_lag_or_taken_records() -> None:
    worker, consumer = _lane_worker()
    consumer.ends = {BACKFILL: 5000}
    worker._set_paused(False)
    assert consumer.paused() == set()  # only the backfill has work: it is read
    consumer.ends[FRESH] = 3  # fresh uploads arrive
    worker._ends_at = 0.0
    worker._set_paused(False)
    assert consumer.paused() == {RETRY, BACKFILL}
    consumer.positions[FRESH] = 3  # all taken, one still waiting for a slot
    worker._accept(_consumer_record(FRESH, 2, REQUEST))
    worker._ends_at = 0.0
    worker._set_paused(False)
    assert consumer.paused() == {RETRY, BACKFILL}
    worker._backlog.clear()  # started
    worker._set_paused(False)
    assert consumer.paused() == set()  # positions kept: pause and resume only, no seek
    assert consumer.seeks == []
    worker._set_paused(True)  # full: everything waits
    assert consumer.paused() == {FRESH, RETRY, BACKFILL}


def test_a_retry_not_yet_due_waits_at_its_offset_without_holding_back_the_backfill() -> None:
    worker, consumer = _lane_worker()
    now_ms = int(time.time() * 1000)
    later = RetryState(1, 0.4, now_ms + 60_000, "fresh", 0, 7, "access_denied: 403")
    consumer.ends = {RETRY: 10, BACKFILL: 100}
    assert worker._accept(_consumer_record(RETRY, 9, REQUEST, later.headers())) is False
    assert consumer.seeks == [(RETRY, 9)] and not worker._backlog and ("retry", 0) not in worker.tracker.partitions
    worker._set_paused(False)
    assert consumer.paused() == {RETRY}  # asleep until due; the backfill below it goes on
    worker._sleeping[("retry", 0)] = now_ms - 1  # due now
    worker._ends_at = 0.0
    worker._set_paused(False)
    assert consumer.paused() == {BACKFILL}  # the retry lane has lag again: read before the backfill
    due = RetryState(2, 1.5, now_ms - 10, "fresh", 0, 7, "access_denied: 403")
    assert worker._accept(_consumer_record(RETRY, 9, REQUEST, due.headers())) is True
    [job] = worker._backlog
    assert job.retry == due and job.budget_spent == 1.5
    assert worker._accept(_consumer_record(RETRY, 10, REQUEST, [("videotag-retry-attempts", b"x")])) is True
    assert worker._backlog[-1].retry is None and worker._backlog[-1].budget_spent == 0  # garbled: fresh


class FailingFetcher:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def fetch(self, bucket: str, key: str) -> Any:
        raise self.error


def _faulted(worker: Worker, record: ConsumerRecord, code: ErrorCode = ErrorCode.ACCESS_DENIED) -> list[Any]:
    """Run the worker's tagging of every job of `record` against an object that fails with `code`; the outputs
    (exactly-once: held, not sent)."""
    worker.fetcher = FailingFetcher(TransientError(code, "403 Forbidden", outage=False))  # type: ignore[assignment]
    worker._accept(record)
    outputs = []
    while worker._backlog:
        job = worker._backlog.popleft()
        worker._tag(job)
        outputs += job.outputs
    return outputs


def test_an_object_fault_goes_to_the_retry_topic_then_to_the_dlq_naming_where_it_came_from() -> None:
    worker, _ = _lane_worker(delivery="exactly_once", retry_budget_s=10.0)
    [out] = _faulted(worker, _consumer_record(FRESH, 7, REQUEST))
    assert out.topic == "retry" and out.value == REQUEST and out.request_timestamp_ms == 0
    state = parse_retry(out.headers, int(time.time() * 1000), 10.0)
    assert state is not None and (state.attempts, state.origin_topic, state.origin_offset) == (1, "fresh", 7)
    assert 0 < state.budget_spent_s <= worker.settings.retry_backoff_base_s and "403" in state.last_error
    assert worker.metrics.retries_published.labels(reason="access_denied")._value.get() == 1

    spent = RetryState(6, 10.5, 0, "fresh", 0, 7, "access_denied: 403")  # the budget is gone
    [dead] = _faulted(worker, _consumer_record(RETRY, 3, REQUEST, spent.headers()))
    letter = json.loads(dead.value)
    assert dead.topic == "videotag.dlq" and letter["error"]["code"] == "access_denied"
    assert (letter["original"]["topic"], letter["original"]["offset"], letter["attempts"]) == ("fresh", 7, 7)
    assert "gave up after 7 attempts" in letter["error"]["message"]


def test_of_an_s3_event_only_the_failing_video_goes_to_the_retry_topic() -> None:
    worker, _ = _lane_worker(delivery="exactly_once")
    event = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "videos"}, "object": {"key": f"clip-{i}.mp4"}}}
            for i in range(2)
        ]
    }
    outputs = _faulted(worker, _consumer_record(FRESH, 1, json.dumps(event).encode()))
    assert [json.loads(o.value) for o in outputs] == [
        {"video_id": "clip-0.mp4", "bucket": "videos", "key": "clip-0.mp4"},
        {"video_id": "clip-1.mp4", "bucket": "videos", "key": "clip-1.mp4"},
    ]


def test_a_request_too_large_for_the_retry_topic_is_retried_in_place() -> None:
    worker, _ = _lane_worker(delivery="exactly_once")
    # A valid request (padded with white space) that leaves no room for the retry headers.
    huge = REQUEST + b" " * (kafka_clients.RECORD_VALUE_LIMIT - len(REQUEST))
    worker._accept(_consumer_record(FRESH, 1, huge))
    job = worker._backlog.popleft()
    assert job.request is not None
    exc = TransientError(ErrorCode.ACCESS_DENIED, "403 Forbidden", outage=False)
    assert worker._retry_later(job, exc, 1) is False and job.outputs == []
    worker.settings = dataclasses.replace(worker.settings, retry_topic=None)
    assert worker._retry_later(job, exc, 1) is False
