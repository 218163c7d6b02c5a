"""Session-wide real servers (SeaweedFS S3, Apache Kafka) on free loopback ports, plus per-test names.

Without Java or Maven the Kafka tests skip, saying why; under CI (CI=true) that is a failure instead, so a
machine that lost its JDK cannot turn the Kafka suites green by skipping them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apache_kafka import ApacheKafka, KafkaUnavailable
from tests.integration.worker_process import SpawnWorker, WorkerProcess
from tests.kafka_helpers import Topics, unique_name
from worker.localstack import KafkaServer, S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    broker = apache_kafka(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.stop()


def apache_kafka(data_dir: Path, properties: dict[str, str] | None = None) -> ApacheKafka:
    """A started Apache Kafka; skips the test (fails it under CI) where Java or Maven is missing."""
    try:
        return ApacheKafka(data_dir, properties).start()
    except KafkaUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Apache Kafka is required under CI: {exc}")
        pytest.skip(f"Apache Kafka unavailable: {exc}")


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session S3 server."""
    name = unique_name("test")
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def topics(kafka_broker: KafkaServer) -> Topics:
    """Fresh input (3 partitions), output and dlq topics on the session broker."""
    names = Topics(input=unique_name("in"), output=unique_name("out"), dlq=unique_name("dlq"))
    kafka_broker.create_topics([names.input], partitions=3)
    kafka_broker.create_topics([names.output, names.dlq], partitions=1)
    return names


@pytest.fixture
def unique_group_id() -> str:
    return unique_name("group")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[SpawnWorker]:
    """spawn(broker, s3, topics, group_id, **settings) → a started `videotag worker` process (SIGKILLed at the
    end of the test whatever happens)."""
    started: list[WorkerProcess] = []

    def start(broker: KafkaServer, s3: S3Server, topics: Topics, group_id: str, env: dict[str, str] | None = None,
              **settings: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, broker, s3, topics, group_id, env, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
