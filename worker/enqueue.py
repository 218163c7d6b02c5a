"""`videotag enqueue`: put tagging requests on the input topic (for upload platforms, demos, DLQ replay)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from worker.messages import original_value, request_message
from worker.storage import split_s3_uri


def parse_target(target: str, bucket: str | None) -> tuple[str, str]:
    """`s3://bucket/key` or a key in `bucket`."""
    if target.startswith("s3://"):
        found, key = split_s3_uri(target)
        if not key:
            raise ValueError(f"{target}: expected s3://BUCKET/KEY")
        return found, key
    if not bucket:
        raise ValueError(f"{target}: give --bucket or an s3://BUCKET/KEY URI")
    return bucket, target


def enqueue(bootstrap_servers: str, topic: str, targets: Iterable[tuple[str, str]],
            security: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Send one request per (bucket, key), keyed by video_id; returns the requests once all are acknowledged."""
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", **(security or {}))
    try:
        sent = []
        for bucket, key in targets:
            message = request_message(bucket, key)
            producer.send(topic, key=message["video_id"].encode("utf-8"), value=json.dumps(message).encode("utf-8"))
            sent.append(message)
        producer.flush()
        return sent
    finally:
        producer.close()


def replay_dlq(bootstrap_servers: str, dlq_topic: str, topic: str, security: dict[str, Any] | None = None,
               idle_s: float = 5.0) -> int:
    """Re-send the original message of every DLQ record (after the cause was fixed); returns the count.

    Reads the DLQ from the start with a throw-away consumer (no group) until it is idle for `idle_s`.
    """
    consumer = KafkaConsumer(dlq_topic, bootstrap_servers=bootstrap_servers, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False, **(security or {}))
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", **(security or {}))
    count = 0
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    dlq = json.loads(record.value)
                    producer.send(topic, key=record.key, value=original_value(dlq))
                    count += 1
                    last = time.monotonic()
        producer.flush()
        return count
    finally:
        consumer.close()
        producer.close()
