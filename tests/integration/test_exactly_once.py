"""Exactly-once mode on Apache Kafka: outputs and offsets in one transaction, a zombie fenced, and what it costs.

The kill -9 figures are in tests/fault/test_chaos.py (both delivery modes); here: a worker's outputs (results,
dead letters, the videos of a fanned-out S3 event) appear once each for a read_committed reader and the commit
reaches the end; a producer fenced by a newer one with the same transactional id cannot publish, and its open
transaction is aborted; the throughput of both modes side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from tests.fault.helpers import AnswerCollector, request, tiny_clips
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, produce, unique_name
from worker import kafka_clients
from worker.local.stack import KafkaServer, S3Server
from worker.settings import Settings
from worker.transactions import Output, Transactions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_clips(tmp_path_factory.mktemp("eos-clips"))


def _upload(s3: S3Server, bucket: str, clips: list[Path]) -> list[str]:
    for clip in clips:
        s3.client().upload_file(str(clip), bucket, clip.name)
    return [clip.name for clip in clips]


def _committed(broker: KafkaServer, topic: str, group: str, partitions: int) -> int:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def test_every_output_once_for_a_read_committed_reader(
    spawn: SpawnWorker,
    kafka_broker: KafkaServer,
    s3_server: S3Server,
    topics: Topics,
    bucket: str,
    unique_group_id: str,
    clips: list[Path],
) -> None:
    keys = _upload(s3_server, bucket, clips)
    event = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            for key in keys
        ]
    }
    values = [request(f"eos-{i}", bucket, keys[i % 3]) for i in range(6)] + [
        b"{not json",
        json.dumps(event).encode(),
        request("eos-missing", bucket, "gone.mp4"),
    ]
    worker = spawn(kafka_broker, s3_server, topics, unique_group_id, delivery="exactly_once", seg_num="2")
    worker.wait_ready()
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics, isolation_level="read_committed")
    try:
        produce(kafka_broker.bootstrap_servers, topics.input, values)
        expected = {f"eos-{i}" for i in range(6)} | {"eos-missing", "{not json"} | {f"{k}" for k in keys}
        missing = collector.wait_for(expected, timeout=120)
        deadline = time.monotonic() + 30
        while _committed(kafka_broker, topics.input, unique_group_id, 3) < len(values) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        answers = collector.by_id()
    finally:
        collector.close()
    assert missing == set()
    assert {i: len(a) for i, a in answers.items() if len(a) != 1} == {}
    assert answers["{not json"][0].code == "invalid_json" and answers["eos-missing"][0].code == "no_such_key"
    assert _committed(kafka_broker, topics.input, unique_group_id, 3) == len(values)
    assert worker.metric("videotag_failures_total", 'reason="transaction_failed"') == 0
    assert worker.metric("videotag_group_generation") == 1  # a lone worker joins once: no second rebalance


def test_a_zombie_is_fenced_and_its_open_transaction_aborted(
    kafka_broker: KafkaServer, topics: Topics, unique_group_id: str
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=unique_group_id,
        group_instance_id=unique_name("pod"),
        delivery="exactly_once",
    )
    zombie = Transactions(settings, lambda tid: kafka_clients.producer(settings, tid))
    successor = Transactions(settings, lambda tid: kafka_clients.producer(settings, tid))
    zombie.start()
    assert zombie.producer is not None
    zombie.producer.begin_transaction()
    zombie.producer.send(topics.output, key=b"zombie", value=b"{}").get(timeout=30)  # written, not committed
    successor.start()  # same id: a new epoch; the broker aborts the zombie's open transaction
    with pytest.raises(KafkaError):
        zombie.producer.commit_transaction()
    assert kafka_clients.producer_broken(zombie.producer, None)
    successor.submit({}, [Output(topics.output, b"successor", b"{}", 0)], unique_group_id)
    outcome = successor.finished(wait=True)
    assert outcome is not None and outcome.error is None
    reader = KafkaConsumer(
        topics.output,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 20
        while not seen and time.monotonic() < deadline:
            seen += [r.key for batch in reader.poll(timeout_ms=500).values() for r in batch]
    finally:
        reader.close()
        zombie.close()
        successor.close()
    assert seen == [b"successor"]


def test_throughput_of_both_delivery_modes_side_by_side(
    spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, bucket: str, clips: list[Path]
) -> None:
    keys = _upload(s3_server, bucket, clips)
    requests = 30
    rates = {}
    for delivery in ("at_least_once", "exactly_once"):
        topics = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"))
        kafka_broker.create_topics([topics.input], partitions=3)
        kafka_broker.create_topics([topics.output, topics.dlq])
        ids = [f"{delivery}-{i}" for i in range(requests)]
        produce(
            kafka_broker.bootstrap_servers, topics.input, [request(v, bucket, keys[i % 3]) for i, v in enumerate(ids)]
        )
        collector = AnswerCollector(kafka_broker.bootstrap_servers, topics, isolation_level="read_committed")
        try:
            worker = spawn(kafka_broker, s3_server, topics, unique_name("group"), delivery=delivery, seg_num="2")
            worker.wait_ready()
            start = time.monotonic()
            missing = collector.wait_for(set(ids), timeout=180)
            rates[delivery] = requests / (time.monotonic() - start)
            answers = collector.by_id()
            worker.close()
        finally:
            collector.close()
        assert missing == set()
        assert all(len(a) == 1 for a in answers.values())
    ratio = rates["exactly_once"] / rates["at_least_once"]
    print(
        f"\nTHROUGHPUT {requests} requests, one worker: at-least-once {rates['at_least_once']:.2f}/s, "
        f"exactly-once {rates['exactly_once']:.2f}/s (ratio {ratio:.2f})"
    )
    assert ratio > 0.5, rates
