"""TLS to the broker end to end: a real `videotag worker` over mutual TLS to a real Tansu broker.

Tansu 0.6 cannot serve TLS, so a TLS-terminating front (tests/tls_front.py, what an Envoy or stunnel sidecar
does) sits before it and Tansu advertises the front's address: every Kafka connection, the worker's and the
test's own, is TLS to the front, relayed in plaintext to Tansu. What is shown is the client side over the real
Kafka protocol: the worker's TLS settings, its client certificate with a password-protected key, CA
verification of the broker; and that a plaintext client, a client without a certificate and a broker
certificate from another CA are all refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from tests.fault.helpers import AnswerCollector, request, tiny_clips
from tests.integration.worker_process import WorkerProcess
from tests.kafka_helpers import Topics, produce, unique_name
from tests.pki import CLIENT_CN, SSL_PASSWORD, client_tls_settings, make_pki
from tests.tls_front import TLSFront, TLSFrontedBroker
from worker.kafka_clients import security_options
from worker.localstack import S3Server
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def security(pki: dict[str, str]) -> dict[str, Any]:
    """The kafka-python options the worker builds from its TLS settings, for the test's own clients."""
    return security_options(Settings(**client_tls_settings(pki)))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, str],
           security: dict[str, Any]) -> Iterator[TLSFrontedBroker]:
    front = TLSFront(pki["broker_cert"], pki["broker_key"], client_ca=pki["ca"])
    broker = TLSFrontedBroker(tmp_path_factory.mktemp("tls-kafka"), front, security)
    try:
        yield broker.start()
    finally:
        broker.stop()
        front.close()


def _refused(bootstrap: str, **security: Any) -> None:
    """A client that must fail to bootstrap: no Kafka response ever reaches it."""
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        KafkaProducer(bootstrap_servers=bootstrap, bootstrap_timeout_ms=2000, **security).close()


def _committed(broker: TLSFrontedBroker, security: dict[str, Any], group: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False,
                             **security)
    try:
        return consumer.committed(TopicPartition(topic, 0)) or 0
    finally:
        consumer.close()


def test_worker_over_mutual_tls(broker: TLSFrontedBroker, security: dict[str, Any], pki: dict[str, str],
                                s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    """Requests produced over TLS are answered by a worker whose only way to the broker is mutual TLS (a
    good clip gets a result, a non-video is dead-lettered), and the group's offsets are committed."""
    topics = Topics(input=unique_name("in"), output=unique_name("out"), dlq=unique_name("dlq"))
    broker.create_topics([topics.input, topics.output, topics.dlq])
    client = s3_server.client()
    client.upload_file(str(tiny_clips(tmp_path)[0]), bucket, "good.mp4")
    client.put_object(Bucket=bucket, Key="text.mp4", Body=b"no video here\n" * 50)
    values = {"good": request("good", bucket, "good.mp4"), "text": request("text", bucket, "text.mp4"),
              "missing": request("missing", bucket, "nope.mp4")}
    group = unique_name("group")
    first_event = len(broker.front.events)
    worker = WorkerProcess(tmp_path, broker, s3_server, topics, group, seg_num="2", **client_tls_settings(pki))
    collector = None
    try:
        worker.wait_ready()
        worker_events = broker.front.events[first_event:]  # its clients bootstrap before it is ready
        collector = AnswerCollector(broker.bootstrap_servers, topics, **security)
        produce(broker.bootstrap_servers, topics.input, list(values.values()), keys=[k.encode() for k in values],
                **security)
        missing = collector.wait_for(set(values), timeout=45)
        committed, deadline = 0, time.monotonic() + 15
        while committed < len(values) and time.monotonic() < deadline:
            committed = _committed(broker, security, group, topics.input)
            time.sleep(0.3)
        answers = {a.ident: a.kind if a.kind == "result" else a.code for a in collector.snapshot()}
        log = worker.log()
    finally:
        worker.close()
        if collector is not None:
            collector.close()
    events = broker.front.events[first_event:]
    print(f"\nTLS: answers {answers}, committed {committed}, {len(events)} TLS connections through the front")
    assert missing == set(), log[-3000:]
    assert answers == {"good": "result", "text": "not_a_video", "missing": "no_such_key"}
    assert committed == len(values)
    assert ("tls", CLIENT_CN) in worker_events, worker_events
    assert {event[0] for event in events} == {"tls"}, events  # nobody fell back to plaintext
    assert SSL_PASSWORD not in log


def test_plaintext_client_is_refused(broker: TLSFrontedBroker) -> None:
    """A client left on PLAINTEXT gets no Kafka response from the front, though Tansu behind it answers
    the same client on its own plaintext port."""
    first_event = len(broker.front.events)
    _refused(broker.bootstrap_servers)
    events = broker.front.events[first_event:]
    KafkaConsumer(bootstrap_servers=f"127.0.0.1:{broker.port}", bootstrap_timeout_ms=5000).close()
    assert events and {event[0] for event in events} == {"tls_error"}, events
    assert "WRONG_VERSION_NUMBER" in events[0][2], events


def test_client_without_a_certificate_is_refused(broker: TLSFrontedBroker, pki: dict[str, str]) -> None:
    first_event = len(broker.front.events)
    _refused(broker.bootstrap_servers, security_protocol="SSL", ssl_cafile=pki["ca"])
    events = broker.front.events[first_event:]
    assert events and {event[0] for event in events} == {"tls_error"}, events
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in events[0][2], events


def test_broker_certificate_from_another_ca_is_refused(broker: TLSFrontedBroker, pki: dict[str, str],
                                                       security: dict[str, Any]) -> None:
    """A front with a certificate of another CA before the same Tansu: our client aborts the handshake."""
    rogue = TLSFront(pki["rogue_cert"], pki["rogue_key"], client_ca=pki["ca"], upstream_port=broker.port)
    try:
        _refused(rogue.address, **security)
    finally:
        rogue.close()
    assert rogue.events and {event[0] for event in rogue.events} == {"tls_error"}, rogue.events
    assert "UNKNOWN_CA" in rogue.events[0][2], rogue.events
