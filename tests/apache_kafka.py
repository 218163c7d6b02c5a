"""Apache Kafka for the integration and fault suites: one KRaft JVM (broker + controller) on loopback ports.

The broker users run, with its real group coordinator (static membership, cooperative rebalancing), so the
suites show the worker's promises against it rather than against the lighter Tansu of `videotag demo`.

- The jars come from the Maven registry: tests/kafka/pom.xml names `org.apache.kafka:kafka_2.13` 4.x and a log4j2
  binding; `mvn dependency:copy-dependencies` copies them with their runtime dependencies into
  `.cache/apache-kafka/<digest of the pom>/` once. Later runs find that folder complete and call no Maven at all.
- One combined broker+controller process: a static controller quorum of itself, offsets and transaction state
  with replication factor 1, a small heap, free loopback ports, its log dir formatted on first start and kept
  across restarts (a restart is a real broker restart: topics, offsets and groups survive).
- docs/testing.md shows the same invocation by hand.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Self

from worker.localstack import LOOPBACK, KafkaServer, free_port

ROOT = Path(__file__).resolve().parents[1]
POM = ROOT / "tests" / "kafka" / "pom.xml"
CACHE = ROOT / ".cache" / "apache-kafka"
HEAP = "-Xmx512m"
LOG4J2 = """\
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
"""


class KafkaUnavailable(RuntimeError):
    """Java or Maven is missing, or the jars cannot be fetched: the Kafka suites cannot run here."""


def fetch_jars(pom: Path = POM, cache: Path = CACHE) -> Path:
    """The folder of broker jars for `pom`, copied from the Maven registry on first use (offline afterwards)."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    libs = cache / digest
    done = libs / ".complete"
    if done.is_file():
        return libs
    if shutil.which("java") is None:
        raise KafkaUnavailable("`java` not found: Apache Kafka needs Java 17+ (apt-get install openjdk-17-jre)")
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaUnavailable("`mvn` not found: the Kafka jars are fetched with Maven (apt-get install maven)")
    partial = cache / f"{digest}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    run = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={partial}"],
        capture_output=True, text=True, timeout=900,
    )
    if run.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        tail = (run.stdout + run.stderr)[-2000:]
        raise KafkaUnavailable(f"mvn could not fetch Apache Kafka (exit {run.returncode}):\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    done.write_text(f"{pom}\n")
    return libs


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what `kafka-storage random-uuid`
    prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class ApacheKafka(KafkaServer):
    """Apache Kafka in KRaft combined mode on loopback; `properties` add to (or override) the broker config."""

    name = "Apache Kafka"

    def __init__(self, data_dir: Path, properties: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.properties = dict(properties or {})
        self._controller_port: int | None = None
        super().__init__(self.data_dir / "broker.log")

    def broker_properties(self, port: int, controller_port: int) -> dict[str, str]:
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "auto.create.topics.enable": "false",
            # Only delays the very first join of an empty group (every test's fresh group); the worker's own
            # timeouts, which decide whether it keeps making progress, stay at their shipped defaults.
            "group.initial.rebalance.delay.ms": "0",
            **self.properties,
        }

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return ["java", HEAP, "-XX:+UseSerialGC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                "-cp", f"{libs}/*", main, *args]

    def _configure(self, libs: Path, port: int, controller_port: int) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.broker_properties(port, controller_port).items()))
        if not (self.data_dir / "logs" / "meta.properties").is_file():  # formatted once, kept across restarts
            subprocess.run(self._java(libs, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c",
                                      str(config)), check=True, capture_output=True, timeout=120)
        return config

    def start(self, timeout: float = 90) -> Self:
        """Start (on new free ports, or the previous ones when restarting); ready when an admin client answers."""
        if self.running:
            return self
        libs = fetch_jars()
        deadline = time.monotonic() + timeout
        restarting = self._port is not None
        while True:
            port = self._port or free_port()
            controller_port = self._controller_port or free_port()
            config = self._configure(libs, port, controller_port)
            self._spawn(self._java(libs, "kafka.Kafka", str(config)), dict(os.environ))
            while time.monotonic() < deadline and self.running and not self._answers(port):
                time.sleep(0.2)
            if self.running and self._answers(port):
                self._port, self._controller_port = port, controller_port
                return self
            if time.monotonic() >= deadline:
                raise self._fail(f"not ready on port {port} within {timeout:g} s")
            # It exited: a port taken since we probed. A restart keeps its ports (clients know them): wait.
            self._reap()
            if not restarting:
                self._port = self._controller_port = None
            time.sleep(0.5)
