"""SASL and ACLs on the real broker: workers log in with SCRAM-SHA-512 and PLAIN over TLS (the secure broker's
SASL listener, tests/conftest.py `secure_kafka`), and a worker denied each ACL it needs says so once, waits
not-ready, loses and dead-letters nothing, and carries on when the ACL is granted.

SCRAM users are created through the admin API, PLAIN users are in the broker's JAAS config (tests/apache_kafka.py);
every request is authorized by StandardAuthorizer, so each worker has exactly the ACLs it is granted here.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError

from tests.apache_kafka import PLAIN_USERS, ApacheKafka
from tests.fault.helpers import AnswerCollector, request, tiny_clips
from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import (
    Topics,
    committed,
    grant,
    produce,
    revoke,
    set_scram_user,
    unique_name,
    wait_committed,
    worker_access,
)
from worker.local.stack import S3Server

pytestmark = pytest.mark.integration
PLAIN_USER = next(iter(PLAIN_USERS))


def sasl_settings(broker: ApacheKafka, ca: str, mechanism: str, user: str, password: str) -> dict[str, str]:
    """Worker settings for the SASL listener: SASL_SSL, the broker verified against our CA."""
    return {
        "bootstrap_servers": broker.address("SASL"),
        "security_protocol": "SASL_SSL",
        "ssl_cafile": ca,
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "sasl_password": password,
    }


def _scram_user(broker: ApacheKafka) -> tuple[str, str]:
    user, password = unique_name("scram"), uuid.uuid4().hex
    set_scram_user(broker, user, password)
    return user, password


def test_workers_over_sasl_scram_and_plain(
    spawn: SpawnWorker, secure_kafka: ApacheKafka, pki: dict[str, str], s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A SCRAM-SHA-512 worker and a PLAIN worker (started together), each with the documented ACLs on its own
    topics and group, answer their requests and commit."""
    s3_server.client().upload_file(str(tiny_clips(tmp_path)[0]), bucket, "good.mp4")
    scram, plain = _scram_user(secure_kafka), (PLAIN_USER, PLAIN_USERS[PLAIN_USER])
    runs = []
    for mechanism, (user, password) in (("SCRAM-SHA-512", scram), ("PLAIN", plain)):
        topics = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"))
        secure_kafka.create_topics([topics.input, topics.output, topics.dlq])
        group = unique_name("group")
        grant(secure_kafka, f"User:{user}", worker_access(topics, group))
        worker = spawn(
            secure_kafka,
            s3_server,
            topics,
            group,
            seg_num="2",
            **sasl_settings(secure_kafka, pki["ca"], mechanism, user, password),
        )
        runs.append((mechanism, topics, group, worker))
    answers = {}
    for mechanism, topics, group, worker in runs:
        worker.wait_ready()
        produce(
            secure_kafka.bootstrap_servers,
            topics.input,
            [request("good", bucket, "good.mp4"), request("missing", bucket, "nope.mp4")],
            keys=[b"good", b"missing"],
        )
        collector = AnswerCollector(secure_kafka.bootstrap_servers, topics)
        try:
            assert collector.wait_for({"good", "missing"}, timeout=60) == set(), worker.log()[-3000:]
            answers[mechanism] = sorted(a.kind if a.kind == "result" else a.code for a in collector.snapshot())
        finally:
            collector.close()
        assert wait_committed(secure_kafka.bootstrap_servers, group, topics.input, 2) == 2
    print(f"\nSASL: {answers}")
    assert answers == {"SCRAM-SHA-512": ["no_such_key", "result"], "PLAIN": ["no_such_key", "result"]}
    assert PLAIN_USERS[PLAIN_USER] not in runs[1][3].log() and scram[1] not in runs[0][3].log()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_a_wrong_password_is_refused(secure_kafka: ApacheKafka, pki: dict[str, str], mechanism: str) -> None:
    """The broker refuses the login and says why in its log. (What the worker then says, whether or not
    kafka-python caught the broker's answer before the connection closed, is in tests/test_security.py.)"""
    user = _scram_user(secure_kafka)[0] if mechanism.startswith("SCRAM") else PLAIN_USER
    reason = {
        "SCRAM-SHA-512": "invalid credentials with SASL mechanism SCRAM-SHA-512",
        "PLAIN": "Invalid username or password",
    }[mechanism]
    refusals = rf"Failed authentication with /127\.0\.0\.1 .*{reason}"
    before = secure_kafka.logged(refusals)
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        KafkaAdminClient(
            bootstrap_servers=secure_kafka.address("SASL"),
            bootstrap_timeout_ms=2000,
            security_protocol="SASL_SSL",
            ssl_cafile=pki["ca"],
            sasl_mechanism=mechanism,
            sasl_plain_username=user,
            sasl_plain_password="not-the-password",
        )
    assert secure_kafka.logged(refusals) > before


def test_a_worker_denied_an_acl_says_so_once_waits_not_ready_and_carries_on_when_granted(
    spawn: SpawnWorker,
    secure_kafka: ApacheKafka,
    secure_topics: Topics,
    pki: dict[str, str],
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
) -> None:
    """One SCRAM worker meets each denial in turn, where the worker detects it:
    1. at start (the preflight): no READ on the input topic, no WRITE on the output and DLQ topics;
    2. consuming: no READ on its group;
    3. publishing: WRITE on the output and DLQ topics revoked while it runs, with a request of each kind in flight.
    Each is logged once while its retries fail, names the ACL, and is /readyz's reason; nothing is dead-lettered
    or committed while denied; granted, the worker carries on and answers everything."""
    user, password = _scram_user(secure_kafka)
    principal, group = f"User:{user}", unique_name("group")
    read_input, read_group, write_output, write_dlq = worker_access(secure_topics, group)
    s3_server.client().upload_file(str(tiny_clips(tmp_path)[0]), bucket, "good.mp4")
    collector = AnswerCollector(secure_kafka.bootstrap_servers, secure_topics)
    worker = spawn(
        secure_kafka,
        s3_server,
        secure_topics,
        group,
        seg_num="2",
        **sasl_settings(secure_kafka, pki["ca"], "SCRAM-SHA-512", user, password),
    )
    try:
        produce(
            secure_kafka.bootstrap_servers, secure_topics.input, [request("early", bucket, "good.mp4")], keys=[b"early"]
        )
        # 1. the preflight: three topic ACLs missing, named in one reason
        start = worker.wait_readyz("503", "READ on topic", "WRITE on topic", "(output topic)", "(DLQ topic)")
        time.sleep(4)  # a few retries (0.4, 0.8, 1.6 s apart), which must not add lines
        grant(secure_kafka, principal, [read_input, write_output, write_dlq])
        # 2. consuming: the group
        group_denied = worker.wait_readyz("503", "consume: Kafka denied READ on group", timeout=30)
        time.sleep(3)
        denied_before_group = (
            worker.metric("videotag_messages_consumed_total"),
            committed(secure_kafka.bootstrap_servers, group, secure_topics.input),
            len(collector.snapshot()),
        )
        grant(secure_kafka, principal, [read_group])
        assert collector.wait_for({"early"}, timeout=60) == set(), worker.log()[-3000:]
        worker.wait_readyz("200", timeout=30)
        # 3. publishing: WRITE revoked on both, a result and a dead letter to publish
        revoke(secure_kafka, principal, [write_output, write_dlq])
        time.sleep(1)  # the ACLs reach the broker's authorizer
        produce(
            secure_kafka.bootstrap_servers,
            secure_topics.input,
            [request("late", bucket, "good.mp4"), b'{"video_id": "bad"}'],
            keys=[b"late", b"bad"],
        )
        publish_denied = worker.wait_readyz("503", "publish to", "Kafka denied WRITE on topic", timeout=60)
        time.sleep(4)
        denied_publishing = (
            committed(secure_kafka.bootstrap_servers, group, secure_topics.input),
            sorted(a.ident for a in collector.snapshot()),
        )
        grant(secure_kafka, principal, [write_output, write_dlq])
        missing = collector.wait_for({"early", "late", "bad"}, timeout=60)
        done = wait_committed(secure_kafka.bootstrap_servers, group, secure_topics.input, 3)
        ready_again = worker.readyz()
        log = worker.log()
        answers = {a.ident: a.kind if a.kind == "result" else a.code for a in collector.snapshot()}
        failures = worker.metric("videotag_failures_total", 'reason="access_denied"')
    finally:
        collector.close()
    said = [
        line.split(" ERROR worker.worker: ", 1)[1]
        for line in log.splitlines()
        if " ERROR worker.worker: " in line and "Kafka denied" in line
    ]
    print(
        f"\nACL denials: start [{start}], consume [{group_denied}], publish [{publish_denied}]; while denied "
        f"consumed/committed/answers {denied_before_group}, publishing denied committed/answers "
        f"{denied_publishing}; logged:\n  " + "\n  ".join(said) + f"\nanswers {answers}, access_denied {failures}"
    )
    assert "READ on topic" in start and secure_topics.input in start and secure_topics.dlq in start
    assert denied_before_group == (0, 0, 0)  # nothing consumed, committed or answered
    assert denied_publishing == (1, ["early"])  # nothing past the unanswered requests, no dead letter
    assert missing == set() and answers == {"early": "result", "late": "result", "bad": "schema_violation"}
    assert done == 3 and ready_again == "200 ready: ok"
    # once per denial, however many tries failed (retried with backoff): the start, the group, each topic
    tries = dict(re.findall(r"INFO worker\.worker: (.+?): works again after (\d+) failed tries", log))
    assert len(tries) == 4 and all(int(n) >= 2 for n in tries.values()), tries
    assert failures >= int(tries["consume"]) + int(tries[f"publish to {secure_topics.output}"])
    starts = [s for s in said if s.startswith("cannot start consuming")]
    assert len(starts) == 1 and "try 1;" in starts[0]
    assert len([s for s in said if s.startswith("consume:")]) == 1
    assert sorted(s.split(":")[0] for s in said if s.startswith("publish to")) == [
        f"publish to {secure_topics.dlq}",
        f"publish to {secure_topics.output}",
    ]
    assert len(said) == 4, said
    assert "works again" in log and password not in log
