"""Every Kafka client the project creates (consumer, producer, admin), built from the settings in one place.

Invariants:
- Security options (TLS, SASL) are applied to every client the same way; secrets only pass through here.
- The producer's delivery timeout is the settings' `delivery_timeout_ms` and a publish waits `publish_timeout_s`,
  which settings load checks to be longer: the worker never re-sends a record its producer is still retrying.
- A static member (`group_instance_id`) does not leave its group on close (KIP-345): `remove_static_member` is the
  explicit leave, used on a scale-down stop.
- This module imports only kafka-python and the settings: `videotag enqueue` starts without Paddle or OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, KafkaAdminClient, MemberToRemove
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from worker.settings import Settings

ASSIGNORS: dict[str, type] = {
    "range": RangePartitionAssignor,
    "roundrobin": RoundRobinPartitionAssignor,
    "sticky": StickyPartitionAssignor,
    "cooperative-sticky": CooperativeStickyAssignor,
}
LINGER_MS = 5
BOOTSTRAP_TIMEOUT_MS = 10_000  # how long one attempt to reach the cluster may take before it counts as failed
RECORD_VALUE_LIMIT = 1_000_000  # results and dead letters are built to fit this (worker/worker.py)
# A topic must take our largest value plus its key, headers and batch overhead: 16 KiB covers those.
REQUIRED_MAX_MESSAGE_BYTES = RECORD_VALUE_LIMIT + 16 * 1024


class BrokerUnreachable(Exception):
    """No broker answered: the address is wrong, or the cluster is down. Retry; not a configuration error."""


def security_options(settings: Settings) -> dict[str, Any]:
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


def rebalance_protocol(strategy: str) -> Literal["eager", "cooperative"]:
    """Cooperative assignors hand partitions over incrementally (only the moved ones are revoked)."""
    return "cooperative" if strategy.startswith("cooperative") else "eager"


def _common(settings: Settings) -> dict[str, Any]:
    return {"bootstrap_servers": settings.bootstrap_servers, "client_id": settings.client_id,
            "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **security_options(settings)}


def _connect(kind: type, *args: Any, **options: Any) -> Any:
    try:
        return kind(*args, **options)
    except (KafkaTimeoutError, KafkaConnectionError) as exc:  # kafka-python 3: "Unable to bootstrap from ..."
        raise BrokerUnreachable(f"no Kafka broker answered at {options['bootstrap_servers']} ({exc})") from exc


def group_consumer(settings: Settings, max_poll_records: int) -> KafkaConsumer:
    """The worker's consumer: manual commits, the group's timeouts and assignor, static membership when set."""
    return _connect(
        KafkaConsumer, group_id=settings.group_id, group_instance_id=settings.group_instance_id,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=max_poll_records,
        session_timeout_ms=settings.session_timeout_ms, heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        partition_assignment_strategy=(ASSIGNORS[settings.partition_assignment_strategy],),
        **_common(settings),
    )


def group_reader(settings: Settings) -> KafkaConsumer:
    """A consumer in the worker's group that joins nothing (partitions are assigned by hand): reads and commits
    for an operator tool."""
    return _connect(KafkaConsumer, group_id=settings.group_id, enable_auto_commit=False, **_common(settings))


def reader(settings: Settings, *topics: str) -> KafkaConsumer:
    """A consumer outside any group that reads `topics` from the start (DLQ replay, demo output)."""
    return _connect(KafkaConsumer, *topics, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                    **_common(settings))


def producer(settings: Settings, transactional_id: str | None = None) -> KafkaProducer:
    """Idempotent, acks=all; a record is retried by the producer itself for up to `delivery_timeout_ms`. With a
    `transactional_id`, a transactional producer whose open transaction the broker aborts after
    `transaction_timeout_ms` if it dies with one."""
    transactional = {"transactional_id": transactional_id,
                     "transaction_timeout_ms": settings.transaction_timeout_ms} if transactional_id else {}
    return _connect(KafkaProducer, acks="all", linger_ms=LINGER_MS, delivery_timeout_ms=settings.delivery_timeout_ms,
                    **transactional, **_common(settings))


def admin(settings: Settings) -> KafkaAdminClient:
    return _connect(KafkaAdminClient, request_timeout_ms=BOOTSTRAP_TIMEOUT_MS, **_common(settings))


def producer_broken(client: KafkaProducer, error: BaseException | None = None) -> bool:
    """Whether `client` can no longer deliver anything: closed, its sender thread dead, or a fatal (not
    retriable) producer error such as a fenced or out-of-sequence idempotent producer. kafka-python has no
    public health check, so its state is read defensively."""
    if getattr(client, "_closed", False):
        return True
    sender = getattr(client, "_sender", None)
    if sender is not None and not sender.is_alive():
        return True
    manager = getattr(client, "_transaction_manager", None)
    if manager is not None and manager.has_fatal_error():
        return True
    return isinstance(error, KafkaError) and type(error).__name__ in {
        "IllegalStateError", "ProducerFencedError", "OutOfOrderSequenceNumberError", "UnknownProducerIdError",
        "InvalidProducerEpochError",
    }


def remove_static_member(settings: Settings) -> str:
    """Remove this process's static member from its group now (instead of after `session_timeout_ms`);
    returns what happened, for the log."""
    if settings.group_instance_id is None:
        return "dynamic member: left on close"
    client = admin(settings)
    try:
        results = client.remove_group_members(
            settings.group_id, [MemberToRemove(group_instance_id=settings.group_instance_id, reason="shutdown")])
    finally:
        client.close()
    outcome = next(iter(results.values()), None) if results else None
    return f"removed static member {settings.group_instance_id}: {getattr(outcome, '__name__', outcome)}"


@dataclass(frozen=True)
class Preflight:
    """What the worker learned about its topics at start; `problems` stop it from taking work."""

    input_partitions: int
    problems: tuple[str, ...]
    created: tuple[str, ...] = ()


def topic_problems(settings: Settings, existing: set[str], max_message_bytes: dict[str, int]) -> list[str]:
    """The pure part of the preflight: missing topics, an output or DLQ topic too small for our records."""
    problems = [f"topic {t!r} does not exist" for t in _topics(settings) if t not in existing]
    for topic in (settings.output_topic, settings.dlq_topic):
        limit = max_message_bytes.get(topic)
        if limit is not None and limit < REQUIRED_MAX_MESSAGE_BYTES:
            problems.append(f"topic {topic!r} has max.message.bytes={limit}, below what our largest record needs "
                            f"({REQUIRED_MAX_MESSAGE_BYTES}): raise it to at least that")
    return problems


def _topics(settings: Settings) -> list[str]:
    return list(dict.fromkeys([settings.input_topic, settings.output_topic, settings.dlq_topic]))


def preflight(settings: Settings) -> Preflight:
    """Check (and, when `create_topics` allows, create) the worker's topics. Raises BrokerUnreachable."""
    client = admin(settings)
    try:
        existing = set(client.list_topics())
        created: list[str] = []
        missing = [t for t in _topics(settings) if t not in existing]
        if missing and settings.create_topics:
            partitions = {settings.input_topic: settings.create_topics_partitions}
            client.create_topics({t: {"num_partitions": partitions.get(t, 1), "replication_factor": -1}
                                  for t in missing})
            existing |= set(missing)
            created = missing
        limits = _max_message_bytes(client, [t for t in (settings.output_topic, settings.dlq_topic) if t in existing])
        described = client.describe_topics([settings.input_topic]) if settings.input_topic in existing else []
        partitions_count = len(described[0]["partitions"]) if described else 0
        return Preflight(partitions_count, tuple(topic_problems(settings, existing, limits)), tuple(created))
    except KafkaError as exc:
        raise BrokerUnreachable(f"preflight failed: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def _max_message_bytes(client: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    if not topics:
        return {}
    found = client.describe_configs([ConfigResource("TOPIC", t, {"max.message.bytes": None}) for t in topics],
                                    config_filter="all")
    return {name: int(configs["max.message.bytes"]["value"])
            for name, configs in found.get("topic", {}).items() if "max.message.bytes" in configs}
