"""Every Kafka client the project creates (consumer, producer, admin), built from the settings in one place.

Invariants:
- Security options (TLS, SASL) are applied to every client the same way; secrets only pass through here.
- The producer's delivery timeout is the settings' `delivery_timeout_ms` and a publish waits `publish_timeout_s`,
  which settings load checks to be longer: the worker never re-sends a record its producer is still retrying.
- A static member (`group_instance_id`) does not leave its group on close (KIP-345): `remove_static_member` is the
  explicit leave, used on a scale-down stop.
- The ACLs a worker needs are `required_access` and no more (docs/deployment.md lists them); the preflight checks
  the topic ones, and `authorization_problem` turns any authorization failure into words naming the ACL to grant.
- A client that cannot bootstrap raises BrokerUnreachable saying why (a refused SASL login, a failed TLS
  handshake, nothing listening), never with a credential in it.
- This module imports only kafka-python and the settings: `videotag enqueue` starts without Paddle or OpenCV.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, KafkaAdminClient, MemberToRemove
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from kafka.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from worker.settings import Settings

log = logging.getLogger(__name__)
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
        options |= {
            "ssl_cafile": settings.ssl_cafile,
            "ssl_certfile": settings.ssl_certfile,
            "ssl_keyfile": settings.ssl_keyfile,
            "ssl_password": settings.ssl_password,
            "ssl_check_hostname": settings.ssl_check_hostname,
        }
    if "SASL" in settings.security_protocol:
        options |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password,
        }
    return options


def rebalance_protocol(strategy: str) -> Literal["eager", "cooperative"]:
    """Cooperative assignors hand partitions over incrementally (only the moved ones are revoked)."""
    return "cooperative" if strategy.startswith("cooperative") else "eager"


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        **security_options(settings),
    }


class _ConnectionFailures(logging.Handler):
    """kafka-python 3 gives up a bootstrap with just "Unable to bootstrap from ..." and says why each connection
    failed (a TLS handshake error, a refused SASL login) only in its log, passing the exception as a log argument:
    this keeps those exceptions."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple):
            self.errors += [a for a in record.args if isinstance(a, BaseException)]


@contextmanager
def _connection_failures() -> Iterator[_ConnectionFailures]:
    """Watch kafka-python's connection manager while a client is built. Where its warnings are silenced (as
    `videotag enqueue` does, to fail in one line, building one client at a time), they are heard here for the
    time being and still not shown."""
    watcher = _ConnectionFailures()
    logger = logging.getLogger("kafka.net.manager")
    level, propagate = logger.level, logger.propagate
    silenced = not logger.isEnabledFor(logging.WARNING)
    if silenced:
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    logger.addHandler(watcher)
    try:
        yield watcher
    finally:
        logger.removeHandler(watcher)
        if silenced:
            logger.setLevel(level)
            logger.propagate = propagate


def bootstrap_failure(servers: str, error: BaseException, failures: list[BaseException], sasl: bool) -> str:
    """Why no client could be built, from kafka-python's bootstrap `error` and the connection `failures` it logged
    meanwhile (`sasl`: whether the client logs in with SASL). Error texts name no credential.

    A broker that refuses a SASL login answers so and closes the connection; kafka-python 3.0 often drops that
    last answer and sees only the closed socket, so with SASL a closed socket is reported as a likely refusal."""
    refused = next((f for f in failures if isinstance(f, SaslAuthenticationFailedError)), None)
    failure = refused or (failures[0] if failures else error)
    # kafka-python's errors name their class in str(); others (ssl.SSLError) do not
    reason = str(failure) if isinstance(failure, KafkaError) else f"{type(failure).__name__}: {failure}"
    check_sasl = "check sasl_mechanism, sasl_username and sasl_password"
    if refused is not None:
        return f"Kafka at {servers} refused the SASL login ({reason}): {check_sasl}"
    if "SSL" in reason:
        return (
            f"TLS with Kafka at {servers} failed ({reason}): check ssl_cafile, ssl_certfile, ssl_keyfile, "
            "ssl_password and that the broker's port speaks TLS"
        )
    if sasl and "socket disconnected" in reason:
        return (
            f"Kafka at {servers} closed the connection ({reason}), as it does when it refuses a SASL login: "
            f"{check_sasl}"
        )
    return f"no Kafka broker answered at {servers} ({reason})"


def _connect(kind: type, *args: Any, **options: Any) -> Any:
    with _connection_failures() as failures:
        try:
            return kind(*args, **options)
        except (KafkaTimeoutError, KafkaConnectionError) as exc:  # kafka-python 3: "Unable to bootstrap from ..."
            sasl = "SASL" in options.get("security_protocol", "")
            raise BrokerUnreachable(
                bootstrap_failure(options["bootstrap_servers"], exc, failures.errors, sasl)
            ) from exc


def group_consumer(settings: Settings, max_poll_records: int) -> KafkaConsumer:
    """The worker's consumer: manual commits, the group's timeouts and assignor, static membership when set."""
    return _connect(
        KafkaConsumer,
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
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
    return _connect(
        KafkaConsumer,
        *topics,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **_common(settings),
    )


def poll_records(consumer: KafkaConsumer, timeout_ms: int) -> dict[Any, list[Any]]:
    """`consumer.poll`, after release_parked_records: before every poll, not only when a partition is resumed,
    since the in-line slot may still hold another partition's last records then (taken, not yet drained: a
    record set is drained by the poll after the one that took its last record)."""
    release_parked_records(consumer)
    return cast(dict[Any, list[Any]], consumer.poll(timeout_ms=timeout_ms))


def release_parked_records(consumer: KafkaConsumer) -> None:
    """Let a resumed partition's parked records flow again (kafka-python 3.0.12, KAFKA-7548's port).

    Records fetched for a partition paused mid-way are parked, and the partition is not fetched again until they
    are restored; they are restored only while no drained record set holds the consumer's in-line slot, which it
    keeps once drained (it is reset only when the in-line partition is paused). A worker that pauses some of its
    partitions while it reads others (priority lanes) would otherwise never read a resumed lane again. Clearing a
    drained slot loses nothing: its records were all returned. Recheck on a kafka-python upgrade
    (tests/integration/test_kafka_semantics.py says when it is no longer needed)."""
    fetcher = getattr(consumer, "_fetcher", None)  # no public accessor
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current:
        fetcher._next_partition_records = None  # type: ignore[union-attr]


def producer(settings: Settings, transactional_id: str | None = None) -> KafkaProducer:
    """Idempotent, acks=all; a record is retried by the producer itself for up to `delivery_timeout_ms`. With a
    `transactional_id`, a transactional producer whose open transaction the broker aborts after
    `transaction_timeout_ms` if it dies with one."""
    transactional = (
        {"transactional_id": transactional_id, "transaction_timeout_ms": settings.transaction_timeout_ms}
        if transactional_id
        else {}
    )
    return _connect(
        KafkaProducer,
        acks="all",
        linger_ms=LINGER_MS,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        **transactional,
        **_common(settings),
    )


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
        "IllegalStateError",
        "ProducerFencedError",
        "OutOfOrderSequenceNumberError",
        "UnknownProducerIdError",
        "InvalidProducerEpochError",
    }


@dataclass(frozen=True)
class Access:
    """One ACL a worker needs: `operation` on the `resource` called `name` (a prefix for transactional ids), its
    `role`."""

    resource: Literal["TOPIC", "GROUP", "TRANSACTIONAL_ID"]
    name: str
    operation: Literal["READ", "WRITE"]
    role: str

    def __str__(self) -> str:
        return f"{self.operation} on {self.resource.lower()} {self.name!r} ({self.role})"


def required_access(settings: Settings) -> tuple[Access, ...]:
    """Every ACL a worker needs, and no more: READ on its input topics, its retry topic and its group (consume,
    commit), WRITE on its output, DLQ and retry topics (publish; with WRITE on any topic the broker also grants the
    idempotent producer its id). Each implies DESCRIBE on its resource."""
    needed = tuple(
        Access("TOPIC", topic, "READ", "retry topic" if topic == settings.retry_topic else "input topic")
        for topic in settings.lanes()
    )
    needed += (
        Access("GROUP", settings.group_id, "READ", "consumer group"),
        Access("TOPIC", settings.output_topic, "WRITE", "output topic"),
        Access("TOPIC", settings.dlq_topic, "WRITE", "DLQ topic"),
    )
    if settings.retry_topic:
        needed += (Access("TOPIC", settings.retry_topic, "WRITE", "retry topic"),)
    if settings.delivery == "exactly_once":  # every id a worker of this group may take starts so (transactions.py)
        needed += (
            Access(
                "TRANSACTIONAL_ID", f"videotag-{settings.group_id}-", "WRITE", "transactional ids: a PREFIXED pattern"
            ),
        )
    return needed


def _named(error: KafkaError) -> set[str]:
    """The resource names kafka-python put in an authorization error: one name, or a set of topic names."""
    arg = error.args[0] if error.args else None
    if isinstance(arg, str):
        return {arg}
    return {str(name) for name in arg} if isinstance(arg, (set, frozenset, list, tuple)) else set()


def authorization_problem(error: BaseException, settings: Settings) -> str | None:
    """What Kafka denied this worker, naming the ACLs to grant its principal; None when `error` is not an
    authorization failure (those are retried or dead-lettered as before: an ACL never is dead-lettered)."""
    if not isinstance(error, AuthorizationError):
        return None
    needed = required_access(settings)
    if isinstance(error, TopicAuthorizationFailedError):
        topics = _named(error)
        denied = (
            [str(a) for a in needed if a.resource == "TOPIC" and a.name in topics]
            or [f"access to topic {t!r}" for t in sorted(topics)]
            or ["access to a topic"]
        )
    elif isinstance(error, GroupAuthorizationFailedError):
        denied = [str(a) for a in needed if a.resource == "GROUP"]
    elif isinstance(error, ClusterAuthorizationFailedError):
        denied = ["IDEMPOTENT_WRITE on the cluster (granted with WRITE on the output or DLQ topic)"]
    elif isinstance(error, TransactionalIdAuthorizationFailedError):
        denied = ["WRITE on this worker's transactional id"]
    else:
        denied = [type(error).__name__]
    return _denial(denied)


def _denial(denied: list[str]) -> str:
    them = "them" if len(denied) > 1 else "it"
    return f"Kafka denied {' and '.join(denied)}: grant {them} to this worker's principal (docs/deployment.md)"


def remove_static_member(settings: Settings) -> str:
    """Remove this process's static member from its group now (instead of after `session_timeout_ms`);
    returns what happened, for the log."""
    if settings.group_instance_id is None:
        return "dynamic member: left on close"
    client = admin(settings)
    try:
        results = client.remove_group_members(
            settings.group_id, [MemberToRemove(group_instance_id=settings.group_instance_id, reason="shutdown")]
        )
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


def topic_problems(
    settings: Settings, described: Mapping[str, Mapping[str, Any]], max_message_bytes: Mapping[str, int]
) -> list[str]:
    """The pure part of the preflight, from our topics as the broker describes them to this worker's principal
    (kafka-python's `describe_topics`, by name): a missing topic, one the principal may not use as the worker
    needs (its ACLs), an output or DLQ topic too small for our records. A broker that reports no authorized
    operations (no authorizer, or Tansu) is taken to allow them."""
    problems = []
    for topic in _topics(settings):
        code = described.get(topic, {}).get("error_code", UnknownTopicOrPartitionError.errno)
        if code == UnknownTopicOrPartitionError.errno:
            problems.append(f"topic {topic!r} does not exist")
    denied = [
        str(access)
        for access in required_access(settings)
        if access.resource == "TOPIC" and not _allows(described.get(access.name, {}), access.operation)
    ]
    if denied:
        problems.append(_denial(denied))
    for topic in _written(settings):
        limit = max_message_bytes.get(topic)
        if limit is not None and limit < REQUIRED_MAX_MESSAGE_BYTES:
            problems.append(
                f"topic {topic!r} has max.message.bytes={limit}, below what our largest record needs "
                f"({REQUIRED_MAX_MESSAGE_BYTES}): raise it to at least that"
            )
    return problems


def _allows(topic: Mapping[str, Any], operation: str) -> bool:
    """Whether a described topic lets this principal do `operation`: not when the broker refused to describe it
    (no ACL at all on it) or lists its authorized operations without this one."""
    allowed = topic.get("authorized_operations") or []
    return topic.get("error_code") != TopicAuthorizationFailedError.errno and (not allowed or operation in allowed)


def _topics(settings: Settings) -> list[str]:
    return list(dict.fromkeys([*settings.lanes(), settings.output_topic, settings.dlq_topic]))


def _written(settings: Settings) -> list[str]:
    """The topics the worker publishes to: each must take our largest record."""
    return [settings.output_topic, settings.dlq_topic, *([settings.retry_topic] if settings.retry_topic else [])]


def preflight(settings: Settings) -> Preflight:
    """Check (and, when `create_topics` allows, create) the worker's topics. Raises BrokerUnreachable."""
    client = admin(settings)
    try:
        described = _describe(client, _topics(settings))
        missing = [t for t in _topics(settings) if described[t]["error_code"] == UnknownTopicOrPartitionError.errno]
        created: list[str] = []
        if missing and settings.create_topics:
            partitions = dict.fromkeys(settings.lanes(), settings.create_topics_partitions)
            client.create_topics(
                {t: {"num_partitions": partitions.get(t, 1), "replication_factor": -1} for t in missing}
            )
            described |= _describe(client, missing)
            created = missing
        limits = _max_message_bytes(client, [t for t in _written(settings) if described[t]["error_code"] == 0])
        partitions_count = max(len(described[t].get("partitions") or []) for t in settings.lanes())
        return Preflight(partitions_count, tuple(topic_problems(settings, described, limits)), tuple(created))
    except KafkaError as exc:
        raise BrokerUnreachable(f"preflight failed: {type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def _describe(client: KafkaAdminClient, topics: list[str]) -> dict[str, dict[str, Any]]:
    """Metadata of `topics` by name, with what this principal may do on each (`authorized_operations`)."""
    return {topic["name"]: topic for topic in client.describe_topics(topics)}


def _max_message_bytes(client: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """The topics' record size limits; none where the broker does not say (an optional check: a broker without
    DescribeConfigs, like Tansu, which drops the connection, or a principal without DESCRIBE_CONFIGS)."""
    if not topics:
        return {}
    try:
        found = client.describe_configs(
            [ConfigResource("TOPIC", t, {"max.message.bytes": None}) for t in topics], config_filter="all"
        )
    except KafkaError as exc:
        log.warning(
            "cannot read max.message.bytes of %s (%s): the record size check is skipped", topics, type(exc).__name__
        )
        return {}
    return {
        name: int(configs["max.message.bytes"]["value"])
        for name, configs in found.get("topic", {}).items()
        if "max.message.bytes" in configs
    }
