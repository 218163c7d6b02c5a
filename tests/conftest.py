"""Session-wide real servers (SeaweedFS S3, Tansu broker) on free loopback ports, plus per-test names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.worker_process import SpawnWorker, WorkerProcess
from tests.kafka_helpers import Topics, unique_name
from worker.localstack import KafkaBroker, S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session S3 server."""
    name = unique_name("test")
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def topics(kafka_broker: KafkaBroker) -> Topics:
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

    def start(broker: KafkaBroker, s3: S3Server, topics: Topics, group_id: str, **settings: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, broker, s3, topics, group_id, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
