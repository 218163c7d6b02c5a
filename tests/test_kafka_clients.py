"""The one Kafka client factory: options every client shares, the producer health rule, the topic preflight's
pure part (existence, ACLs, record limits), the ACLs a worker needs and how a denial or a failed bootstrap is
put in words, and a `videotag enqueue` that starts without the model and fails in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaTimeoutError

from worker import kafka_clients
from worker.settings import CHOICES, Settings


def test_every_assignment_strategy_setting_has_an_assignor() -> None:
    assert set(kafka_clients.ASSIGNORS) == set(CHOICES["partition_assignment_strategy"])
    assert kafka_clients.rebalance_protocol("cooperative-sticky") == "cooperative"
    assert {kafka_clients.rebalance_protocol(s) for s in ("range", "roundrobin", "sticky")} == {"eager"}


def _topic(name: str, error_code: int = 0, operations: list[str] | None = None) -> dict[str, Any]:
    """A topic as kafka-python's describe_topics gives it (the fields the preflight reads)."""
    return {"name": name, "error_code": error_code, "partitions": [], "authorized_operations": operations}


def test_topic_problems_name_missing_topics_and_too_small_record_limits() -> None:
    s = Settings(input_topic="in", output_topic="out", dlq_topic="dlq")
    every = {t: _topic(t) for t in ("in", "out", "dlq")}
    assert kafka_clients.topic_problems(s, every, {"out": 1048588, "dlq": 2_000_000}) == []
    problems = kafka_clients.topic_problems(s, every | {"dlq": _topic("dlq", 3)}, {"out": 500_000})
    assert problems[0] == "topic 'dlq' does not exist"
    assert "'out' has max.message.bytes=500000" in problems[1] and len(problems) == 2


def test_topic_problems_name_each_acl_the_principal_lacks_in_one_problem() -> None:
    """Authorized operations as Apache Kafka reports them; a topic the principal may not even describe answers
    TOPIC_AUTHORIZATION_FAILED (29); a broker that reports no operations (no authorizer, Tansu) allows all."""
    s = Settings(input_topic="in", output_topic="out", dlq_topic="dlq", group_id="g")
    granted = {
        "in": _topic("in", 0, ["READ", "DESCRIBE"]),
        "out": _topic("out", 0, ["WRITE", "DESCRIBE"]),
        "dlq": _topic("dlq", 0, ["WRITE", "DESCRIBE"]),
    }
    assert kafka_clients.topic_problems(s, granted, {}) == []
    denied = granted | {"in": _topic("in", 0, ["DESCRIBE"]), "dlq": _topic("dlq", 29)}
    assert kafka_clients.topic_problems(s, denied, {}) == [
        "Kafka denied READ on topic 'in' (input topic) and WRITE on topic 'dlq' (DLQ topic): grant them to this "
        "worker's principal (docs/deployment.md)"
    ]
    assert kafka_clients.topic_problems(s, {t: _topic(t, 0, None) for t in granted}, {}) == []


def test_required_access_is_read_on_input_and_group_and_write_on_output_and_dlq() -> None:
    s = Settings(input_topic="in", output_topic="out", dlq_topic="dlq", group_id="g")
    assert [str(a) for a in kafka_clients.required_access(s)] == [
        "READ on topic 'in' (input topic)",
        "READ on group 'g' (consumer group)",
        "WRITE on topic 'out' (output topic)",
        "WRITE on topic 'dlq' (DLQ topic)",
    ]


def test_authorization_problem_names_the_acl_to_grant() -> None:
    """Each authorization error kafka-python raises (with the names it puts in them) becomes the ACL to grant;
    other errors are no authorization problem."""
    from kafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        KafkaTimeoutError,
        NotCoordinatorError,
        TopicAuthorizationFailedError,
        TransactionalIdAuthorizationFailedError,
    )

    s = Settings(input_topic="in", output_topic="out", dlq_topic="dlq", group_id="g")

    def problem(error: Exception) -> str:
        return kafka_clients.authorization_problem(error, s) or "none"

    assert problem(TopicAuthorizationFailedError({"in"})) == (  # from a poll: a set of topics
        "Kafka denied READ on topic 'in' (input topic): grant it to this worker's principal (docs/deployment.md)"
    )
    assert problem(TopicAuthorizationFailedError("out")).startswith(  # from a send: one topic
        "Kafka denied WRITE on topic 'out' (output topic):"
    )
    assert "access to topic 'other'" in problem(TopicAuthorizationFailedError({"other"}))
    assert "READ on group 'g' (consumer group)" in problem(GroupAuthorizationFailedError("g"))
    assert "IDEMPOTENT_WRITE on the cluster" in problem(ClusterAuthorizationFailedError())
    assert "transactional id" in problem(TransactionalIdAuthorizationFailedError())
    assert [problem(e) for e in (KafkaTimeoutError(), NotCoordinatorError(), RuntimeError("x"))] == ["none"] * 3


def test_bootstrap_failure_says_which_credential_to_check() -> None:
    """kafka-python's reasons as it logs them; with SASL a closed socket is most likely a refused login (whose
    answer kafka-python 3.0 often drops), without SASL it is just that."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError, SaslAuthenticationFailedError

    timeout = KafkaTimeoutError("Unable to bootstrap from h:1")
    closed = KafkaConnectionError("socket disconnected")
    refused = SaslAuthenticationFailedError("invalid credentials with SASL mechanism SCRAM-SHA-512")
    tls = KafkaConnectionError("Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    failure = kafka_clients.bootstrap_failure
    assert failure("h:1", timeout, [closed, refused, closed], sasl=True).startswith(
        "Kafka at h:1 refused the SASL login ([Error 58] SaslAuthenticationFailedError: invalid credentials"
    )
    assert failure("h:1", timeout, [closed], sasl=True).endswith(
        "as it does when it refuses a SASL login: check sasl_mechanism, sasl_username and sasl_password"
    )
    assert (
        failure("h:1", timeout, [closed], sasl=False)
        == "no Kafka broker answered at h:1 (KafkaConnectionError: socket disconnected)"
    )
    assert failure("h:1", timeout, [tls], sasl=True).startswith("TLS with Kafka at h:1 failed (")
    assert (
        failure("h:1", timeout, [], sasl=False)
        == "no Kafka broker answered at h:1 (KafkaTimeoutError: Unable to bootstrap from h:1)"
    )


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


@pytest.mark.parametrize(
    "source",
    [["s3://bkt/k.mp4"], ["--from-s3", "s3://b/uploads/"], ["--from-manifest", "s3://inv/b/daily/manifest.json"]],
)
def test_enqueue_imports_no_model_and_reports_an_unreachable_broker_in_one_line(source: list[str]) -> None:
    """Plain, backfill and inventory enqueues alike: no Paddle, OpenCV or PyAV, and one line for no broker."""
    code = (
        "import sys; from worker.cli import main;"
        f"rc = main(['enqueue', '--bootstrap-servers', '127.0.0.1:9', *{source!r}]);"
        "print([m for m in ('paddle', 'cv2', 'av', 'models.tagger') if m in sys.modules], rc)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"},
    )
    assert run.stdout.strip() == "[] 1", run.stdout + run.stderr
    assert run.stderr.splitlines() == [  # kafka-python's own warnings stay silenced; its reason is kept
        "videotag enqueue: no Kafka broker answered at 127.0.0.1:9 (KafkaConnectionError: 111 ECONNREFUSED)"
    ]


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

        def send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> Future:
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
