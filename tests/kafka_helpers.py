"""Small Kafka helpers for tests that talk to the broker started by `tests/conftest.py`."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord


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


def consume_all(bootstrap: str, topic: str | list[str], expected: int, timeout: float) -> list[ConsumerRecord]:
    """Read `topic` (or several) from the start in a fresh group until `expected` records arrived in all or
    `timeout` passed."""
    consumer = KafkaConsumer(
        *([topic] if isinstance(topic, str) else topic),
        bootstrap_servers=bootstrap,
        group_id=unique_name("consume-all"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
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
