"""Apache Kafka for the integration and fault suites: one KRaft JVM (broker + controller) on loopback ports.

The broker users run, with its real group coordinator (static membership, cooperative rebalancing), so the
suites show the worker's promises against it rather than against the lighter Tansu of `videotag demo`.

- The jars come from the Maven registry: tests/kafka/pom.xml names `org.apache.kafka:kafka_2.13` 4.x and a log4j2
  binding; `mvn dependency:copy-dependencies` copies them with their runtime dependencies into
  `.cache/apache-kafka/<digest of the pom>/` once. Later runs find that folder complete and call no Maven at all.
- One combined broker+controller process: a static controller quorum of itself, offsets and transaction state
  with replication factor 1, a small heap, free loopback ports, its log dir formatted on first start and kept
  across restarts (a restart is a real broker restart: topics, offsets and groups survive).
- The PLAINTEXT listener (`bootstrap_servers`, the admin clients) is always there. `listeners` adds client
  listeners to the same JVM, each on its own port (kept across restarts); `secure_config` makes those of the
  security tests: mutual TLS, SASL (SCRAM-SHA-512 and PLAIN) over TLS, and StandardAuthorizer ACLs, the
  plaintext listeners' principal (User:ANONYMOUS: the controller's, and the tests' admin) the super user.
- docs/testing.md shows the same invocation by hand.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from worker.local.stack import LOOPBACK, KafkaServer, free_port

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
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
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
    prints). Like Kafka's own, never one starting with "-": `format -t -xyz` reads it as an option and fails
    (one start in 64, before)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


class ApacheKafka(KafkaServer):
    """Apache Kafka in KRaft combined mode on loopback; `properties` add to (or override) the broker config."""

    name = "Apache Kafka"

    def __init__(
        self, data_dir: Path, properties: Mapping[str, str] | None = None, listeners: Mapping[str, str] | None = None
    ) -> None:
        """`listeners`: extra client listeners, name → security protocol (`{"MTLS": "SSL"}`), configured through
        `properties` (`listener.name.mtls.…`)."""
        self.data_dir = Path(data_dir)
        self.properties = dict(properties or {})
        self.listeners = dict(listeners or {})
        self._controller_port: int | None = None
        self._listener_ports: dict[str, int] = {}
        super().__init__(self.data_dir / "broker.log")

    def address(self, listener: str) -> str:
        """`host:port` of one of the extra `listeners`."""
        if listener not in self._listener_ports:
            raise RuntimeError(f"{self.name}: listener {listener!r} not started")
        return f"{LOOPBACK}:{self._listener_ports[listener]}"

    def logged(self, pattern: str) -> int:
        """How many lines of the broker's own log (every run so far) match the regular expression `pattern`."""
        log = (self.data_dir / "broker.log").read_text(errors="replace")
        return len(re.findall(pattern, log, re.MULTILINE))

    def broker_properties(
        self, port: int, controller_port: int, listener_ports: Mapping[str, int] | None = None
    ) -> dict[str, str]:
        ports = {"PLAINTEXT": port, **(listener_ports or {})}
        advertised = ",".join(f"{name}://{LOOPBACK}:{p}" for name, p in ports.items())
        protocols = {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT", **self.listeners}
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
            "listeners": f"{advertised},CONTROLLER://{LOOPBACK}:{controller_port}",
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{name}:{p}" for name, p in protocols.items()),
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
        return [
            "java",
            HEAP,
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _configure(self, libs: Path, port: int, controller_port: int, listener_ports: Mapping[str, int]) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(LOG4J2)
        config = self.data_dir / "server.properties"
        properties = self.broker_properties(port, controller_port, listener_ports)
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        config.chmod(0o600)  # the PLAIN users' passwords are in it
        if not (self.data_dir / "logs" / "meta.properties").is_file():  # formatted once, kept across restarts
            subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)),
                check=True,
                capture_output=True,
                timeout=120,
            )
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
            listener_ports = self._listener_ports or {name: free_port() for name in self.listeners}
            config = self._configure(libs, port, controller_port, listener_ports)
            self._spawn(self._java(libs, "kafka.Kafka", str(config)), dict(os.environ))
            while time.monotonic() < deadline and self.running and not self._answers(port):
                time.sleep(0.2)
            if self.running and self._answers(port):
                self._port, self._controller_port, self._listener_ports = port, controller_port, listener_ports
                return self
            if time.monotonic() >= deadline:
                raise self._fail(f"not ready on port {port} within {timeout:g} s")
            # It exited: a port taken since we probed. A restart keeps its ports (clients know them): wait.
            self._reap()
            if not restarting:
                self._port = self._controller_port = None
            time.sleep(0.5)


# The security tests' broker ---------------------------------------------------------------------------------

SUPER_USER = "User:ANONYMOUS"  # the plaintext listeners' principal: the controller's, and the tests' admin
SECURE_LISTENERS = {
    "MTLS": "SSL",  # TLS, a client certificate of our CA required; principal User:CN=<its common name>
    "SASL": "SASL_SSL",  # SCRAM-SHA-512 and PLAIN inside TLS (no client certificate); principal User:<name>
    "ROGUE": "SSL",  # a broker certificate from another CA: our clients must refuse it
    "ELSEWHERE": "SSL",  # our CA's certificate for kafka.example.com: refused unless host names go unchecked
}
SASL_MECHANISMS = "SCRAM-SHA-512,PLAIN"
PLAIN_USERS = {"videotag-plain": "plain-password-6Rw2"}  # PLAIN users live in the broker's JAAS config


def _pem_keystore(directory: Path, name: str, key: str, cert: str) -> str:
    """A PEM keystore file (Kafka's `ssl.keystore.type=PEM`): the unencrypted PKCS#8 key, then the certificate."""
    path = directory / f"{name}-keystore.pem"
    path.write_text(Path(key).read_text() + Path(cert).read_text())
    path.chmod(0o600)
    return str(path)


PLAIN_LOGIN = "org.apache.kafka.common.security.plain.PlainLoginModule"
SCRAM_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"


def secure_config(
    pki: Mapping[str, str], plain_users: Mapping[str, str], directory: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """(`listeners`, `properties`) for `ApacheKafka`: SECURE_LISTENERS with their certificates (tests/pki.py's
    `make_pki`), SASL with the PLAIN users given (name → password, fixed in the JAAS config) and SCRAM-SHA-512
    users added later through the admin API, and every request authorized by StandardAuthorizer against ACLs."""
    directory.mkdir(parents=True, exist_ok=True)
    plain = " ".join(f'user_{name}="{password}"' for name, password in plain_users.items())
    properties = {
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": SUPER_USER,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": _pem_keystore(directory, "broker", pki["broker_key"], pki["broker_cert"]),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": pki["ca"],
        "ssl.client.auth": "required",
        "listener.name.sasl.ssl.client.auth": "none",
        "listener.name.sasl.sasl.enabled.mechanisms": SASL_MECHANISMS,
        "listener.name.sasl.plain.sasl.jaas.config": f"{PLAIN_LOGIN} required {plain};",
        "listener.name.sasl.scram-sha-512.sasl.jaas.config": f"{SCRAM_LOGIN} required;",
        "listener.name.rogue.ssl.keystore.location": _pem_keystore(
            directory, "rogue", pki["rogue_key"], pki["rogue_cert"]
        ),
        "listener.name.elsewhere.ssl.keystore.location": _pem_keystore(
            directory, "elsewhere", pki["elsewhere_key"], pki["elsewhere_cert"]
        ),
    }
    return dict(SECURE_LISTENERS), properties
