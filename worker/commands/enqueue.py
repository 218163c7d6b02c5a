"""`videotag enqueue`: put tagging requests on the input topic (for upload platforms, demos, DLQ replay)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from worker import kafka_clients, tracing
from worker.messages import original_value, request_message
from worker.settings import Settings
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


def send_request(
    producer: KafkaProducer, topic: str, bucket: str, key: str
) -> tuple[dict[str, Any], FutureRecordMetadata]:
    """Send the request for one video, keyed by its video_id; returns it and its send's future (done at the
    producer's next flush). The one place a request is made for the input topic (enqueue and backfill)."""
    message = request_message(bucket, key)
    future = producer.send(topic, key=message["video_id"].encode("utf-8"), value=json.dumps(message).encode("utf-8"))
    return message, future


def enqueue(settings: Settings, topic: str, targets: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Send one request per (bucket, key); returns the requests once all are acknowledged.
    Raises kafka_clients.BrokerUnreachable."""
    producer = kafka_clients.producer(settings)
    try:
        sent = [send_request(producer, topic, bucket, key)[0] for bucket, key in targets]
        producer.flush()
        return sent
    finally:
        producer.close()


def replay_dlq(settings: Settings, topic: str, idle_s: float = 5.0) -> int:
    """Re-send the original message of every record on the DLQ topic (after the cause was fixed) to `topic`;
    returns the count. Reads the DLQ from the start outside any group until it is idle for `idle_s`."""
    consumer = kafka_clients.reader(settings, settings.dlq_topic)
    producer = kafka_clients.producer(settings)
    count = 0
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    dlq = json.loads(record.value)
                    # its traceparent too: the replay continues the request's trace, below the dead letter
                    headers = [(k, v) for k, v in record.headers or [] if k == tracing.HEADER and v is not None]
                    producer.send(topic, key=record.key, value=original_value(dlq), headers=headers)
                    count += 1
                    last = time.monotonic()
        producer.flush()
        return count
    finally:
        consumer.close()
        producer.close()
