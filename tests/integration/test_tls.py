"""TLS to the broker end to end: a real `videotag worker` over mutual TLS to Apache Kafka's own TLS listener.

The secure broker (tests/conftest.py `secure_kafka`) serves, besides its plaintext admin listener, MTLS (TLS with
a client certificate of our CA required), ROGUE (a broker certificate from another CA) and ELSEWHERE (our CA's
certificate for another host name), with ACLs enforced. Shown: the worker's TLS settings (client certificate
with a password-protected key, the broker verified against our CA) carry all of its Kafka traffic, as the
principal of its certificate with exactly the ACLs docs/deployment.md lists; and a plaintext client, a client
without a certificate, a broker certificate of another CA and one for another host name are all refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from tests.apache_kafka import ApacheKafka
from tests.fault.helpers import AnswerCollector, request, tiny_clips
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, committed, grant, produce, unique_name, worker_access
from tests.pki import CLIENT_CN, SSL_PASSWORD, client_tls_settings
from worker.kafka_clients import security_options
from worker.local.stack import S3Server
from worker.settings import Settings

pytestmark = pytest.mark.integration
REFUSED_WITHIN_MS = 2000


def test_worker_over_mutual_tls(
    spawn: SpawnWorker,
    secure_kafka: ApacheKafka,
    secure_topics: Topics,
    pki: dict[str, str],
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A worker whose only address is the MTLS listener answers (a result, two dead letters) and commits, as
    User:CN=videotag-client with the documented ACLs and nothing more."""
    group = unique_name("group")
    grant(secure_kafka, f"User:CN={CLIENT_CN}", worker_access(secure_topics, group))
    client = s3_server.client()
    client.upload_file(str(tiny_clips(tmp_path)[0]), bucket, "good.mp4")
    client.put_object(Bucket=bucket, Key="text.mp4", Body=b"no video here\n" * 50)
    values = {
        "good": request("good", bucket, "good.mp4"),
        "text": request("text", bucket, "text.mp4"),
        "missing": request("missing", bucket, "nope.mp4"),
    }
    worker = spawn(
        secure_kafka,
        s3_server,
        secure_topics,
        group,
        seg_num="2",
        bootstrap_servers=secure_kafka.address("MTLS"),
        **client_tls_settings(pki),
    )
    worker.wait_ready()
    collector = AnswerCollector(secure_kafka.bootstrap_servers, secure_topics)  # the tests' admin door
    try:
        produce(
            secure_kafka.bootstrap_servers,
            secure_topics.input,
            list(values.values()),
            keys=[k.encode() for k in values],
        )
        missing = collector.wait_for(set(values), timeout=60)
        answers = {a.ident: a.kind if a.kind == "result" else a.code for a in collector.snapshot()}
    finally:
        collector.close()
    done = committed(secure_kafka.bootstrap_servers, group, secure_topics.input)
    log = worker.log()
    print(f"\nmutual TLS: answers {answers}, committed {done}")
    assert missing == set(), log[-3000:]
    assert answers == {"good": "result", "text": "not_a_video", "missing": "no_such_key"}
    assert done == len(values)
    assert SSL_PASSWORD not in log


def _refused(caplog: pytest.LogCaptureFixture, bootstrap: str, **security: Any) -> str:
    """Bootstrap a client that must be refused; returns why kafka-python says its connections failed."""
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="kafka"),
        pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"),
    ):
        KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=REFUSED_WITHIN_MS, **security).close()
    return " ".join(r.getMessage() for r in caplog.records if "Bootstrap connection" in r.getMessage())


def test_tls_refusals(secure_kafka: ApacheKafka, pki: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """With the options the worker builds from its settings: the MTLS listener refuses a plaintext client and
    a client without a certificate at the handshake; our client refuses a broker certificate of another CA and
    one for another host name, unless ssl_check_hostname is off."""
    ours = security_options(Settings(**client_tls_settings(pki)))
    failed_handshake = r"Failed authentication with /127\.0\.0\.1 .*SSL handshake failed"
    before = secure_kafka.logged(failed_handshake)
    plaintext = _refused(caplog, secure_kafka.address("MTLS"))
    without_cert = _refused(
        caplog,
        secure_kafka.address("MTLS"),
        **security_options(Settings(security_protocol="SSL", ssl_cafile=pki["ca"])),
    )
    broker_refused = secure_kafka.logged(failed_handshake) - before
    rogue = _refused(caplog, secure_kafka.address("ROGUE"), **ours)
    elsewhere = _refused(caplog, secure_kafka.address("ELSEWHERE"), **ours)
    unchecked = security_options(Settings(**client_tls_settings(pki), ssl_check_hostname=False))
    admin = KafkaAdminClient(bootstrap_servers=secure_kafka.address("ELSEWHERE"), **unchecked)
    admin.close()
    print(
        f"\nrefused: plaintext [{plaintext[:90]}], no certificate [{without_cert[:90]}], broker handshakes "
        f"failed {broker_refused}, rogue CA [{rogue[:120]}], other host [{elsewhere[:120]}]"
    )
    assert "socket disconnected" in plaintext
    assert "BAD_CERTIFICATE" in without_cert  # the broker's alert: it required a certificate
    assert broker_refused >= 2
    assert "CERTIFICATE_VERIFY_FAILED" in rogue and "unable to get local issuer certificate" in rogue
    assert "CERTIFICATE_VERIFY_FAILED" in elsewhere and "IP address mismatch" in elsewhere
