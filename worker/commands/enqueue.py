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
    """`s3://bucket/key` or a key in `bucket`, checked to make a valid request (before anything is sent)."""
    if target.startswith("s3://"):
        found, key = split_s3_uri(target)
        if not key:
            raise ValueError(f"{target}: expected s3://BUCKET/KEY")
    elif not bucket:
        raise ValueError(f"{target}: give --bucket or an s3://BUCKET/KEY URI")
    else:
        found, key = bucket, target
    request_message(found, key)  # raises ValueError naming what is wrong
    return found, key


def send_request(
    producer: KafkaProducer, topic: str, bucket: str, key: str
) -> tuple[dict[str, Any], FutureRecordMetadata]:
    """Send the request for one video, keyed by its video_id; returns it and its send's future (done at the
    producer's next flush). The one place a request is made for the input topic (enqueue and backfill)."""
    message = request_message(bucket, key)
    future = producer.send(topic, key=message["video_id"].encode("utf-8"), value=json.dumps(message).encode("utf-8"))
    return message, future


class SendRefused(Exception):
    """The broker did not take every record sent (an ACL, a record too large, a topic that is gone): the ones
    named were not enqueued. Final for those records as they are; the rest were acknowledged."""

    def __init__(self, refused: list[str], total: int, first: BaseException) -> None:
        shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
        super().__init__(f"the broker refused {len(refused)} of {total} records ({shown}): {first!r}")
        self.refused = refused


def flush_checked(producer: KafkaProducer, sent: list[tuple[str, FutureRecordMetadata]]) -> None:
    """Flush, then raise SendRefused naming each (name, future) the broker did not acknowledge. flush() returns
    whether or not the broker took the records: a caller that reports them sent must look at every future."""
    producer.flush()
    failed = [(name, future.exception) for name, future in sent if future.failed()]
    if failed:
        raise SendRefused([name for name, _ in failed], len(sent), failed[0][1])


def enqueue(settings: Settings, topic: str, targets: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Send one request per (bucket, key); returns the requests once all are acknowledged.
    Raises kafka_clients.BrokerUnreachable, or SendRefused naming the video_ids the broker did not take."""
    producer = kafka_clients.producer(settings)
    try:
        sent = [send_request(producer, topic, bucket, key) for bucket, key in targets]
        flush_checked(producer, [(message["video_id"], future) for message, future in sent])
        return [message for message, _ in sent]
    finally:
        producer.close()


def replay_dlq(settings: Settings, topic: str, idle_s: float = 5.0) -> int:
    """Re-send the original message of every record on the DLQ topic (after the cause was fixed) to `topic`;
    returns the count once all are acknowledged (else SendRefused naming the dead letters by their offsets).
    Reads the DLQ from the start outside any group until it is idle for `idle_s`."""
    consumer = kafka_clients.reader(settings, settings.dlq_topic)
    producer = kafka_clients.producer(settings)
    sent: list[tuple[str, FutureRecordMetadata]] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    dlq = json.loads(record.value)
                    # its traceparent too: the replay continues the request's trace, below the dead letter
                    headers = [(k, v) for k, v in record.headers or [] if k == tracing.HEADER and v is not None]
                    future = producer.send(topic, key=record.key, value=original_value(dlq), headers=headers)
                    sent.append((f"{record.topic}[{record.partition}]@{record.offset}", future))
                    last = time.monotonic()
        flush_checked(producer, sent)
        return len(sent)
    finally:
        consumer.close()
        producer.close()
