"""What the worker's rebalance handling assumes of kafka-python, checked against the real broker.

If a kafka-python upgrade started resetting kept partitions to their last commit, the worker would redo (not
lose) work; if it stopped calling `on_partitions_lost`, or kept positions after an eviction, the worker would
lose work. This pins the first assumption so that an upgrade that changes it fails here, not in production.
"""

from __future__ import annotations

import threading
import time

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition

from tests.kafka_helpers import Topics
from worker.local.stack import KafkaServer

pytestmark = pytest.mark.integration

PER_PARTITION = 3


class _Assignments(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.assigned: list[set[TopicPartition]] = []

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned.append(set(assigned))


def _consumer(broker: KafkaServer, group_id: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )


def test_a_partition_kept_across_a_rebalance_keeps_its_fetch_position(
    kafka_broker: KafkaServer, topics: Topics, unique_group_id: str
) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all")
    for partition in range(3):
        for i in range(PER_PARTITION):
            producer.send(topics.input, value=b"%d" % i, partition=partition).get(timeout=30)
    producer.close()

    first, listener = _consumer(kafka_broker, unique_group_id), _Assignments()
    first.subscribe([topics.input], listener=listener)
    second = _consumer(kafka_broker, unique_group_id)
    stop = threading.Event()

    def join() -> None:
        second.subscribe([topics.input])
        while not stop.is_set():
            second.poll(timeout_ms=200)

    joiner = threading.Thread(target=join, daemon=True)
    try:
        consumed: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + 60
        while len(consumed) < 3 and time.monotonic() < deadline:  # one record or more from every partition
            for tp, records in first.poll(timeout_ms=200).items():
                consumed[tp] = records[-1].offset + 1
        assert len(consumed) == 3, f"first consumer read only {sorted(consumed)}"
        before = {tp: first.position(tp) for tp in consumed}
        first.pause(*first.assignment())  # no more reading: the positions stay where they are
        rebalances = len(listener.assigned)

        joiner.start()
        deadline = time.monotonic() + 60
        while len(listener.assigned) == rebalances and time.monotonic() < deadline:
            first.poll(timeout_ms=200)
        assert len(listener.assigned) > rebalances, "the second member's join never rebalanced the group"
        kept = listener.assigned[-1]
        assert kept and kept < set(before), f"expected a strict subset of {sorted(before)} kept, got {kept}"
        # nothing was committed, so a position reset would read from the start (offset 0)
        assert {tp: first.position(tp) for tp in kept} == {tp: before[tp] for tp in kept}
        assert all(before[tp] > 0 for tp in kept)
    finally:
        stop.set()
        if joiner.is_alive():
            joiner.join(timeout=10)
        first.close(autocommit=False)
        second.close(autocommit=False)
