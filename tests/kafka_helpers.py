"""Small Kafka helpers for tests that talk to the brokers started by `tests/conftest.py`: topics, records,
committed offsets, and the secure broker's users and ACLs (changed through its plaintext admin listener)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLFilter,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourcePatternFilter,
    ResourceType,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from kafka.consumer.fetcher import ConsumerRecord

from worker.kafka_clients import Access, required_access
from worker.local.stack import KafkaServer
from worker.settings import Settings


@dataclass(frozen=True)
class Topics:
    """Per-test topic names, unique so tests never see each other's records."""

    input: str
    output: str
    dlq: str


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
    **security: Any,
) -> None:
    """Send `values` (optionally keyed, all sharing `headers`) with acks=all; raise if any send fails.
    `security`: kafka-python TLS options (security_protocol, ssl_cafile, ...), plaintext without."""
    if keys is not None and len(keys) != len(values):
        raise ValueError("keys and values differ in length")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **security)
    try:
        futures = [
            producer.send(topic, value=value, key=keys[i] if keys else None, headers=headers)
            for i, value in enumerate(values)
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def consume_all(
    bootstrap: str, topic: str | list[str], expected: int, timeout: float, **options: Any
) -> list[ConsumerRecord]:
    """Read `topic` (or several) from the start in a fresh group until `expected` records arrived in all or
    `timeout` passed; `options`: more consumer options (`isolation_level="read_committed"`)."""
    consumer = KafkaConsumer(
        *([topic] if isinstance(topic, str) else topic),
        bootstrap_servers=bootstrap,
        group_id=unique_name("consume-all"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **options,
    )
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and (remaining := deadline - time.monotonic()) > 0:
            for batch in consumer.poll(timeout_ms=int(min(remaining, 0.5) * 1000)).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def committed(bootstrap: str, group_id: str, topic: str, partitions: int = 1) -> int:
    """The offsets `group_id` has committed on `topic`, summed over its partitions (0 where none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def wait_committed(bootstrap: str, group_id: str, topic: str, expected: int, timeout: float = 30) -> int:
    """Poll `committed` until it reaches `expected` or `timeout` passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while (done := committed(bootstrap, group_id, topic)) < expected and time.monotonic() < deadline:
        time.sleep(0.3)
    return done


def set_scram_user(broker: KafkaServer, user: str, password: str) -> None:
    """Create `user` with a SCRAM-SHA-512 credential on the broker, or change its password."""
    admin = broker.admin()
    try:
        errors = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(user, ScramMechanism.SCRAM_SHA_512, password)]
        )
    finally:
        admin.close()
    if errors.get(user):
        raise RuntimeError(f"SCRAM user {user}: {errors[user]}")


def _pattern(access: Access) -> ResourcePattern:
    return ResourcePattern(ResourceType[access.resource], access.name, ACLResourcePatternType.LITERAL)


def grant(broker: KafkaServer, principal: str, accesses: Iterable[Access]) -> None:
    """ALLOW ACLs for `principal` (e.g. "User:alice"), one per access; raises if the broker refuses one."""
    acls = [ACL(principal, "*", ACLOperation[a.operation], ACLPermissionType.ALLOW, _pattern(a)) for a in accesses]
    admin = broker.admin()
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result["failed"]:
        raise RuntimeError(f"ACLs refused: {result['failed']}")


def revoke(broker: KafkaServer, principal: str, accesses: Iterable[Access]) -> None:
    filters = [
        ACLFilter(
            principal,
            "*",
            ACLOperation[a.operation],
            ACLPermissionType.ALLOW,
            ResourcePatternFilter(ResourceType[a.resource], a.name, ACLResourcePatternType.LITERAL),
        )
        for a in accesses
    ]
    admin = broker.admin()
    try:
        admin.delete_acls(filters)
    finally:
        admin.close()


def worker_access(topics: Topics, group_id: str) -> tuple[Access, ...]:
    """The ACLs a worker on these topics and group needs: what docs/deployment.md tells users to grant."""
    return required_access(
        Settings(input_topic=topics.input, output_topic=topics.output, dlq_topic=topics.dlq, group_id=group_id)
    )
