"""Session-wide real servers (SeaweedFS S3, Apache Kafka) on free loopback ports, plus per-test names.

Without Java or Maven the Kafka tests skip, saying why; under CI (CI=true) that is a failure instead, so a
machine that lost its JDK cannot turn the Kafka suites green by skipping them.

The security tests' broker (TLS, SASL, ACLs: tests/apache_kafka.py's `secure_config`) is a second JVM, started
the first time a test asks for `secure_kafka`: the other suites keep the plain, fast `kafka_broker`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apache_kafka import PLAIN_USERS, ApacheKafka, KafkaUnavailable, secure_config
from tests.integration.worker_process import SpawnWorker, WorkerProcess
from tests.kafka_helpers import Topics, unique_name
from tests.pki import make_pki
from worker.local.stack import KafkaServer, S3Server


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Our CA with broker and client certificates, a rogue CA, a certificate for another host (tests/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, str]) -> Iterator[ApacheKafka]:
    """Apache Kafka with the security listeners (`address("MTLS")`, `address("SASL")`, ...) and ACLs enforced;
    its PLAINTEXT `bootstrap_servers` is the tests' super-user admin door."""
    data_dir = tmp_path_factory.mktemp("secure-kafka")
    listeners, properties = secure_config(pki, PLAIN_USERS, data_dir / "keystores")
    broker = apache_kafka(data_dir, properties, listeners)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def secure_topics(secure_kafka: ApacheKafka) -> Topics:
    """Fresh input, output and dlq topics (1 partition each) on the secure broker."""
    names = Topics(input=unique_name("in"), output=unique_name("out"), dlq=unique_name("dlq"))
    secure_kafka.create_topics([names.input, names.output, names.dlq])
    return names


def apache_kafka(
    data_dir: Path, properties: dict[str, str] | None = None, listeners: dict[str, str] | None = None
) -> ApacheKafka:
    """A started Apache Kafka; skips the test (fails it under CI) where Java or Maven is missing."""
    try:
        return ApacheKafka(data_dir, properties, listeners).start()
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

    def start(
        broker: KafkaServer,
        s3: S3Server,
        topics: Topics,
        group_id: str,
        env: dict[str, str] | None = None,
        **settings: str,
    ) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, broker, s3, topics, group_id, env, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()
