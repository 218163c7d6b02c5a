"""`videotag skip`: an operator moves the group past one message by hand (a poison pill that must not wait for
`max_worker_deaths`), keeping it: the message goes to the DLQ with code `skipped_by_operator`, from where
`videotag enqueue --from-dlq` can replay it once the cause is fixed.

Invariant: the group's commit moves only from exactly `offset` to `offset + 1`, and only after the dead letter
is acknowledged. The broker takes a commit from outside the group only while the group has no members, so the
workers are stopped first (a static member removes itself on SIGTERM; scale the deployment to 0).
"""

from __future__ import annotations

import json
import time

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from models.errors import ErrorCode, InputError
from worker import kafka_clients
from worker.messages import dlq_message
from worker.settings import Settings


class SkipRefused(Exception):
    """The group is not where the operator thinks, or it still has members: nothing was changed."""


def skip(settings: Settings, topic: str, partition: int, offset: int, timeout_s: float = 30.0) -> None:
    tp = TopicPartition(topic, partition)
    group = kafka_clients.group_reader(settings)
    try:
        group.assign([tp])
        committed = group.committed(tp)
        if committed != offset:
            raise SkipRefused(
                f"group {settings.group_id} is at offset {committed} of {topic}[{partition}], not "
                f"{offset}: nothing skipped"
            )
        group.seek(tp, offset)
        record = None
        deadline = time.monotonic() + timeout_s
        while record is None and time.monotonic() < deadline:
            for batch in group.poll(timeout_ms=500).values():
                record = next((r for r in batch if r.offset == offset), record)
        if record is None:
            raise SkipRefused(f"no record at offset {offset} of {topic}[{partition}]")
        skipped = InputError(ErrorCode.SKIPPED_BY_OPERATOR, "skipped by an operator (videotag skip)")
        letter = dlq_message(record.value, skipped, 0, None, topic, partition, offset, record.key)
        producer = kafka_clients.producer(settings)
        try:
            producer.send(
                settings.dlq_topic, key=record.key, value=json.dumps(letter, ensure_ascii=False).encode("utf-8")
            ).get(timeout=settings.publish_timeout_s)
        finally:
            producer.close()
        try:
            group.commit({tp: OffsetAndMetadata(offset + 1, "", -1)})
        except Exception as exc:  # e.g. the group has members again: its commit is theirs to make
            raise SkipRefused(
                f"the dead letter is written but the commit was refused ({type(exc).__name__}): stop "
                f"the workers of {settings.group_id} and run skip again"
            ) from exc
    finally:
        group.close()
