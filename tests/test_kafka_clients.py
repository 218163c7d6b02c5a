"""The one Kafka client factory: options every client shares, the producer health rule, the topic preflight's
pure part, and a `videotag enqueue` that starts without the model and fails in one line."""

from __future__ import annotations

import subprocess
import sys
from typing import ClassVar

from kafka.errors import KafkaTimeoutError

from worker import kafka_clients
from worker.settings import CHOICES, Settings


def test_every_assignment_strategy_setting_has_an_assignor() -> None:
    assert set(kafka_clients.ASSIGNORS) == set(CHOICES["partition_assignment_strategy"])
    assert kafka_clients.rebalance_protocol("cooperative-sticky") == "cooperative"
    assert {kafka_clients.rebalance_protocol(s) for s in ("range", "roundrobin", "sticky")} == {"eager"}


def test_topic_problems_name_missing_topics_and_too_small_record_limits() -> None:
    s = Settings(input_topic="in", output_topic="out", dlq_topic="dlq")
    assert kafka_clients.topic_problems(s, {"in", "out", "dlq"}, {"out": 1048588, "dlq": 2_000_000}) == []
    problems = kafka_clients.topic_problems(s, {"in", "out"}, {"out": 500_000})
    assert problems[0] == "topic 'dlq' does not exist"
    assert "'out' has max.message.bytes=500000" in problems[1] and len(problems) == 2


class _Sender:
    def __init__(self, alive: bool) -> None:
        self.alive = alive

    def is_alive(self) -> bool:
        return self.alive


class _Producer:
    def __init__(self, closed: bool = False, sender_alive: bool = True) -> None:
        self._closed = closed
        self._sender = _Sender(sender_alive)
        self._transaction_manager = None


def test_a_producer_is_broken_when_closed_without_a_sender_or_after_a_fatal_error() -> None:
    assert not kafka_clients.producer_broken(_Producer())  # type: ignore[arg-type]
    assert not kafka_clients.producer_broken(_Producer(), KafkaTimeoutError())  # type: ignore[arg-type]
    assert kafka_clients.producer_broken(_Producer(closed=True))  # type: ignore[arg-type]
    assert kafka_clients.producer_broken(_Producer(sender_alive=False))  # type: ignore[arg-type]
    from kafka.errors import IllegalStateError, ProducerFencedError

    assert kafka_clients.producer_broken(_Producer(), IllegalStateError())  # type: ignore[arg-type]
    assert kafka_clients.producer_broken(_Producer(), ProducerFencedError())  # type: ignore[arg-type]


def test_enqueue_imports_no_model_and_reports_an_unreachable_broker_in_one_line() -> None:
    code = ("import sys; from worker.cli import main;"
            "rc = main(['enqueue', '--bootstrap-servers', '127.0.0.1:9', 's3://b/k.mp4']);"
            "print([m for m in ('paddle', 'cv2', 'av', 'models.tagger') if m in sys.modules], rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "[] 1", run.stdout + run.stderr
    assert run.stderr.splitlines() == [
        "videotag enqueue: no Kafka broker answered at 127.0.0.1:9 "
        "(KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9)"]


def test_a_broken_producer_is_replaced_once_and_the_publish_goes_through(monkeypatch) -> None:
    from worker.worker import Job, Worker

    class Future:
        def __init__(self, error: Exception | None) -> None:
            self.error = error

        def get(self, timeout: float) -> None:
            if self.error:
                raise self.error

    class Fake(_Producer):
        made: ClassVar[list[Fake]] = []

        def __init__(self, fail: bool) -> None:
            super().__init__()
            self.fail, self.sent = fail, 0
            Fake.made.append(self)

        def send(self, topic: str, key: bytes | None, value: bytes) -> Future:
            from kafka.errors import IllegalStateError

            self.sent += 1
            return Future(IllegalStateError("closed") if self.fail else None)

        def close(self, timeout: float = 0) -> None:
            self._closed = True

    worker = Worker(Settings(retry_backoff_base_s=0.01, retry_backoff_max_s=0.01))
    worker.producer = Fake(fail=True)  # type: ignore[assignment]
    monkeypatch.setattr(kafka_clients, "producer", lambda settings: Fake(fail=False))
    worker._publish("out", "v1", {"video_id": "v1"}, Job("in", 0, 0, 0, None, b"{}", None))  # type: ignore[arg-type]
    broken, replacement = Fake.made
    assert broken._closed and broken.sent == 1 and replacement.sent == 1 and worker.producer is replacement
    assert worker.metrics.registry.get_sample_value("videotag_failures_total", {"reason": "producer_replaced"}) == 1
