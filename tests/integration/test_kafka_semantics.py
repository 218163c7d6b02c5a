"""What the worker's rebalance handling assumes of kafka-python, checked against the real broker.

If a kafka-python upgrade started resetting kept partitions to their last commit, the worker would redo (not
lose) work; if it stopped calling `on_partitions_lost`, or kept positions after an eviction, the worker would
lose work. This pins the first assumption so that an upgrade that changes it fails here, not in production.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition

from tests.kafka_helpers import Topics, unique_name
from worker import kafka_clients
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


def test_a_lane_resumed_while_another_partitions_last_records_are_in_line_is_read_again(
    kafka_broker: KafkaServer, unique_group_id: str
) -> None:
    """kafka-python 3.0.12 parks the records fetched for a partition paused mid-way and restores them only while
    its in-line slot is empty (None); a slot that held another partition's last records when the lane was resumed
    keeps a drained record set for ever, and the resumed partition is never fetched again. The worker polls
    through `kafka_clients.poll_records`, which empties a drained slot before every poll: the lane goes on.
    With `consumer.poll` alone (and the slot emptied only when the lane is resumed) the lane stays stuck: if
    an upgrade fixes that, this test says so, and the workaround can go."""
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all")

    def read_low_after_high(poll: Callable[[KafkaConsumer], dict]) -> int:
        high, low = unique_name("high"), unique_name("low")
        kafka_broker.create_topics([high, low], partitions=1)
        for i in range(10):
            producer.send(low, value=b"%d" % i).get(timeout=30)
        consumer = KafkaConsumer(
            bootstrap_servers=kafka_broker.bootstrap_servers,
            group_id=unique_group_id + poll.__name__,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=2,
        )
        try:
            consumer.subscribe([high, low])
            low_tp, high_tp = TopicPartition(low, 0), TopicPartition(high, 0)
            got: dict[TopicPartition, int] = {low_tp: 0, high_tp: 0}

            def step() -> None:
                for tp, records in poll(consumer).items():
                    got[tp] += len(records)

            deadline = time.monotonic() + 60
            while not got[low_tp] and time.monotonic() < deadline:  # two of ten: the other eight stay in line
                step()
            assert got[low_tp] == 2, got
            consumer.pause(low_tp)  # fresh work on the higher lane: the lower one waits
            for i in range(2):  # one batch of exactly max_poll_records: taken by one poll, not yet drained
                producer.send(high, value=b"%d" % i)
            producer.flush(timeout=30)
            while got[high_tp] < 2 and time.monotonic() < deadline:
                step()
            assert got[high_tp] == 2, got
            consumer.resume(low_tp)  # the higher lane is empty again
            kafka_clients.release_parked_records(consumer)  # what the worker did, at resume time only
            until = time.monotonic() + 10
            while got[low_tp] < 10 and time.monotonic() < until:
                step()
            return got[low_tp]
        finally:
            consumer.close(autocommit=False)

    def plain(consumer: KafkaConsumer) -> dict:
        return consumer.poll(timeout_ms=200)

    def worker(consumer: KafkaConsumer) -> dict:
        return kafka_clients.poll_records(consumer, timeout_ms=200)

    try:
        assert read_low_after_high(worker) == 10
        assert read_low_after_high(plain) == 2  # kafka-python's own behaviour: stuck (see the docstring)
    finally:
        producer.close()
