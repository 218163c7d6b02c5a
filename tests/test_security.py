"""Security properties: secrets never leak, temp files are private and always removed, the HTTP endpoints serve
nothing else and bind where told, TLS and SASL settings reach kafka-python, the images run as non-root.

Planted secrets (an S3 key, a SASL password, the password of the TLS client key) are searched for, in every form
they could take, in what a worker shows: its log, /readyz, /metrics, results and dead letters, and in settings
and errors as text. The Kafka ones are also in real use against the secure broker (tests/conftest.py
`secure_kafka`), through a refused login and a refused ACL. TLS, SASL and ACLs end to end are in
tests/integration/test_tls.py and test_sasl_acl.py.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.config
import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.errors import InputError
from tests.apache_kafka import PLAIN_USERS, ApacheKafka
from tests.fault.helpers import AnswerCollector, StallingProxy, request, tiny_clips
from tests.integration.worker_process import SECRET_KEY, SpawnWorker, WorkerProcess
from tests.kafka_helpers import Topics, grant, produce, set_scram_user, unique_name, worker_access
from tests.pki import SSL_PASSWORD
from worker.health import HealthServer
from worker.kafka_clients import security_options
from worker.local.stack import KafkaServer, S3Server
from worker.metrics import Metrics
from worker.settings import Settings
from worker.storage import ObjectFetcher, TempBudget, TransientError, make_client

ROOT = Path(__file__).resolve().parents[1]
SASL_PASSWORD = "planted-sasl-password-Q7x9"


def _variants(secret: str) -> list[str]:
    """The secret as it could show up in text: raw, base64, URL-quoted, hex."""
    raw = secret.encode()
    return [secret, base64.b64encode(raw).decode(), urllib.parse.quote(secret, safe=""), raw.hex()]


def _assert_no_secret(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        for form in _variants(secret):
            assert form not in text, f"{where} contains a secret ({form[:6]}...)"


# secrets in logs, metrics, dead letters; temp files in a real worker ---------------------------------------


@pytest.mark.integration
def test_no_secret_in_logs_metrics_or_answers(
    kafka_broker: KafkaServer, topics: Topics, unique_group_id: str, tmp_path: Path
) -> None:
    """A worker with S3 credentials in use (the S3 server checks signatures) and SASL/TLS passwords configured
    (PLAINTEXT: set but unused; test_no_kafka_secret_when_a_login_or_an_acl_is_refused uses them) handles good
    and bad requests and an S3 response that stalls mid-stream; then its log, /metrics and every result and dead
    letter are searched for the secrets. (INFO level: the CLI's --log-level default overrides VIDEOTAG_LOG_LEVEL,
    so DEBUG is covered in-process by the next test.)"""
    s3 = S3Server(tmp_path / "auth-s3", access_key="test", secret_key=SECRET_KEY).start()
    proxy = StallingProxy(s3.port)
    collector = None
    worker = None
    try:
        bucket = "secure"
        s3.create_bucket(bucket)
        client = s3.client()
        clip = tiny_clips(tmp_path)[0]
        client.upload_file(str(clip), bucket, "good.mp4")
        client.upload_file(str(clip), bucket, "mid/stalled.mp4")
        client.put_object(Bucket=bucket, Key="corrupt.mp4", Body=clip.read_bytes()[:3000])
        client.put_object(Bucket=bucket, Key="text.mp4", Body=b"no video here\n" * 50)
        worker = WorkerProcess(
            tmp_path,
            kafka_broker,
            s3,
            topics,
            unique_group_id,
            seg_num="2",
            s3_endpoint_url=proxy.endpoint_url,
            s3_read_timeout_s="1",
            retry_backoff_base_s="0.5",
            retry_backoff_max_s="1",
            security_protocol="PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="svc-videotag",
            sasl_password=SASL_PASSWORD,
            ssl_password=SSL_PASSWORD,
        )
        worker.wait_ready()
        collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
        proxy.set_rule("/mid/", "midstream")
        values = {
            "good": request("good", bucket, "good.mp4"),
            "corrupt": request("corrupt", bucket, "corrupt.mp4"),
            "text": request("text", bucket, "text.mp4"),
            "missing": request("missing", bucket, "nope.mp4"),
            "json": b'{"video_id": "json", "bucket": ',
            "schema": b'{"video_id": "schema"}',
            "stalled": request("stalled", bucket, "mid/stalled.mp4"),
        }
        produce(kafka_broker.bootstrap_servers, topics.input, list(values.values()), keys=[k.encode() for k in values])
        # While the body stalls, the partial download sits in the temp dir: private to the worker's user.
        modes = set()
        deadline = time.monotonic() + 30
        while not modes and time.monotonic() < deadline:
            for path in worker.temp_dir.glob("*"):
                with contextlib.suppress(FileNotFoundError):
                    modes.add(stat.S_IMODE(path.stat().st_mode))
            time.sleep(0.02)
        time.sleep(3)
        proxy.clear()
        missing = collector.wait_for(set(values), timeout=90)
        answers = collector.snapshot()
        metrics = worker.get("/metrics")[1]
        log = worker.log()
        timeouts = worker.metric("videotag_failures_total", 'reason="s3_unavailable"')
        with pytest.raises(OSError):  # bound to 127.0.0.1 only
            socket.create_connection(("127.0.0.2", worker.metrics_port), timeout=2).close()
    finally:
        if worker is not None:
            worker.close()
        if collector is not None:
            collector.close()
        proxy.close()
        s3.stop()
    print(
        f"\nsecurity: {len(answers)} answers, mid-stream timeouts {timeouts:.0f}, temp file modes "
        f"{sorted(oct(m) for m in modes)}, log {len(log)} chars"
    )
    assert missing == set()
    assert timeouts >= 1 and modes == {0o600}
    assert "***" in log  # the settings line shows the secrets redacted
    secrets = [SECRET_KEY, SASL_PASSWORD, SSL_PASSWORD]
    _assert_no_secret("the worker log", log, secrets)
    _assert_no_secret("/metrics", metrics, secrets)
    for answer in answers:
        _assert_no_secret(f"the answer to {answer.ident}", json.dumps(answer.value, ensure_ascii=False), secrets)
    assert {a.ident: a.kind if a.kind == "result" else a.code for a in answers} == {
        "good": "result",
        "stalled": "result",
        "corrupt": "corrupt_video",
        "text": "not_a_video",
        "missing": "no_such_key",
        "json": "invalid_json",
        "schema": "schema_violation",
    }
    assert list(worker.temp_dir.iterdir()) == []


@pytest.mark.integration
def test_s3_errors_and_debug_logs_name_no_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Exceptions from a refused signature or an unknown key carry codes, never the keys; and with every logger
    at DEBUG (botocore logs each request it signs), a good fetch and the refused ones log no secret either."""
    right, wrong = "right-secret-key-8a8a", "wrong-secret-key-5b5b"
    s3 = S3Server(tmp_path / "auth-s3", access_key="right-access-key", secret_key=right).start()
    try:
        s3.create_bucket("creds")
        s3.client().put_object(Bucket="creds", Key="v.mp4", Body=b"x" * 100)
        messages = []
        # every logger at DEBUG: botocore's too, which the CLI quiets to WARNING (a CLI test may have run main())
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="botocore"):
            for access, secret in (("right-access-key", right), ("right-access-key", wrong), ("unknown-key", wrong)):
                client = boto3.client(
                    "s3",
                    endpoint_url=s3.endpoint_url,
                    region_name="us-east-1",
                    aws_access_key_id=access,
                    aws_secret_access_key=secret,
                    config=botocore.config.Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
                )
                fetcher = ObjectFetcher(client, str(tmp_path / "tmp"), 1 << 20, TempBudget(1 << 30))
                if secret == right:
                    with fetcher.fetch("creds", "v.mp4") as (_, size):
                        assert size == 100
                    continue
                with pytest.raises(TransientError) as caught, fetcher.fetch("creds", "v.mp4"):
                    pass
                messages.append(f"{caught.value!s} {caught.value!r} {caught.value.__cause__!s}")
    finally:
        s3.stop()
    print(f"\nS3 auth errors: {messages}; DEBUG log {len(caplog.text)} chars")
    assert all("s3_credentials" in m for m in messages) and len(messages) == 2
    assert "Signature" in caplog.text  # botocore did log the signing at DEBUG
    _assert_no_secret("the S3 error messages", " ".join(messages), [wrong, right])
    _assert_no_secret("the DEBUG log", caplog.text, [wrong, right])


# temp files ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.integration
def test_temp_files_are_private_and_always_removed(
    s3_server: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0600 even under umask 0, and gone after success, a corrupt video, an exception in the caller, an S3
    stream that stalls mid-body, and a refused oversize object (never written at all)."""
    from models.video import InProcessDecoder

    decode = InProcessDecoder("faithful", 256, 224, 7680, 4320)

    clip = tiny_clips(tmp_path)[0]
    client = s3_server.client()
    client.upload_file(str(clip), bucket, "good.mp4")
    client.put_object(Bucket=bucket, Key="corrupt.mp4", Body=clip.read_bytes()[:3000])
    client.upload_file(str(clip), bucket, "mid/stalled.mp4")
    client.put_object(Bucket=bucket, Key="big.mp4", Body=b"\0" * 50_000)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    proxy = StallingProxy(s3_server.port)
    proxy.set_rule("/mid/", "midstream")
    temp = tmp_path / "work"
    fetcher = ObjectFetcher(make_client(proxy.endpoint_url, "us-east-1", 1, 1), str(temp), 40_000, TempBudget(1 << 30))
    seen: dict[str, set[int]] = {}
    try:
        with _umask(0):
            with fetcher.fetch(bucket, "good.mp4") as (path, size):
                seen["good"] = {stat.S_IMODE(path.stat().st_mode)}
                assert path.parent == temp and size == clip.stat().st_size
                decode(path, 2)
            assert list(temp.iterdir()) == []

            with pytest.raises(InputError, match="corrupt_video"), fetcher.fetch(bucket, "corrupt.mp4") as (path, _):
                seen["corrupt"] = {stat.S_IMODE(path.stat().st_mode)}
                decode(path, 2)
            assert list(temp.iterdir()) == []

            with pytest.raises(RuntimeError), fetcher.fetch(bucket, "good.mp4"):
                raise RuntimeError("the caller failed")
            assert list(temp.iterdir()) == []

            stop = threading.Event()
            modes: set[int] = set()

            def watch() -> None:
                while not stop.is_set():
                    for path in temp.glob("*"):
                        with contextlib.suppress(FileNotFoundError):
                            modes.add(stat.S_IMODE(path.stat().st_mode))
                    time.sleep(0.01)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            with pytest.raises(TransientError, match="s3_unavailable"), fetcher.fetch(bucket, "mid/stalled.mp4"):
                pass
            stop.set()
            watcher.join()
            seen["midstream"] = modes
            assert list(temp.iterdir()) == []

            with pytest.raises(InputError, match="object_too_large"), fetcher.fetch(bucket, "big.mp4"):
                pass
            assert list(temp.iterdir()) == []
    finally:
        proxy.close()
    print(f"\ntemp file modes by path: { {k: sorted(oct(m) for m in v) for k, v in seen.items()} }")
    assert seen == {"good": {0o600}, "corrupt": {0o600}, "midstream": {0o600}}


# the HTTP endpoints --------------------------------------------------------------------------------------


@pytest.fixture
def health() -> Iterator[tuple[HealthServer, list[bool]]]:
    state = [True]
    server = HealthServer(Metrics(), "127.0.0.1", 0, lambda: (state[0], "ok" if state[0] else "broken")).start()
    try:
        yield server, state
    finally:
        server.stop()


def _http(port: int, method: str, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_only_the_three_endpoints_are_served(health: tuple[HealthServer, list[bool]]) -> None:
    server, state = health
    port = server.port
    assert _http(port, "GET", "/metrics")[0] == 200
    assert b"videotag_ready" in _http(port, "GET", "/metrics")[1]
    assert _http(port, "GET", "/healthz") == (200, b"ok\n")
    assert _http(port, "GET", "/readyz")[0] == 200
    state[0] = False
    assert _http(port, "GET", "/readyz") == (503, b"not ready: broken\n")
    assert _http(port, "HEAD", "/healthz") == (200, b"")
    assert _http(port, "GET", "//metrics")[0] == 200  # http.server folds leading slashes: the same endpoint
    for path in [
        "/",
        "/metrics/",
        "/Metrics",
        "/metrics.txt",
        "/healthz/../metrics",
        "/%2e%2e/etc/passwd",
        "/../../etc/passwd",
        "/debug/pprof",
        "/favicon.ico",
        "/admin",
        "/.env",
        "/readyz/x",
        "http://127.0.0.1/metrics/x",
    ]:
        assert _http(port, "GET", path) == (404, b"not found\n"), path
    for method in ["POST", "PUT", "DELETE", "PATCH"]:
        for path in ["/metrics", "/healthz", "/readyz", "/other"]:
            assert _http(port, method, path) == (405, b"method not allowed\n"), (method, path)
    for method in ["OPTIONS", "TRACE", "CONNECT", "PROPFIND"]:
        status, _ = _http(port, method, "/metrics")
        assert status == 501, (method, status)  # not implemented: nothing served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # garbage instead of HTTP
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = sock.recv(65536)
    assert b"400" in reply and b"videotag" not in reply
    assert _http(port, "GET", "/healthz") == (200, b"ok\n")  # and it still serves


@pytest.mark.parametrize(("bind", "other"), [("127.0.0.2", "127.0.0.1"), ("127.0.0.1", "127.0.0.2")])
def test_endpoints_bind_to_the_chosen_address(bind: str, other: str) -> None:
    server = HealthServer(Metrics(), bind, 0, lambda: (True, "ok")).start()
    try:
        assert _http(server.port, "GET", "/healthz", host=bind)[0] == 200
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, server.port), timeout=2).close()
    finally:
        server.stop()


# Kafka security settings and secrets ---------------------------------------------------------------------


def test_security_options_pass_every_setting() -> None:
    assert security_options(Settings()) == {"security_protocol": "PLAINTEXT"}
    settings = Settings(
        security_protocol="SASL_SSL",
        ssl_cafile="/ca.pem",
        ssl_certfile="/c.pem",
        ssl_keyfile="/c.key",
        ssl_password="kp",
        ssl_check_hostname=False,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="p",
    )
    assert security_options(settings) == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/c.key",
        "ssl_password": "kp",
        "ssl_check_hostname": False,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    plain_sasl = security_options(
        Settings(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username="u",
            sasl_password="p",
            ssl_cafile="/ca.pem",
        )
    )
    assert "ssl_cafile" not in plain_sasl and plain_sasl["sasl_plain_password"] == "p"
    assert "sasl_plain_password" not in security_options(Settings(security_protocol="SSL", sasl_password="p"))
    # kafka-python accepts every option it is given (it raises on unknown ones).
    for kind in (KafkaProducer, KafkaConsumer):
        with pytest.raises(Exception, match="Unrecognized configs"):
            kind(bootstrap_servers="127.0.0.1:1", no_such_option=1)
    redacted = json.dumps(settings.redacted())
    assert '"p"' not in redacted and '"kp"' not in redacted


def test_settings_repr_hides_the_secrets() -> None:
    """A Settings in a traceback, an f-string or an exception shows the secrets redacted, the rest as set."""
    settings = Settings(sasl_password=SASL_PASSWORD, ssl_password=SSL_PASSWORD, sasl_username="svc-videotag")
    for text in (repr(settings), f"{settings}", str(ValueError(settings)), repr([settings])):
        _assert_no_secret("a Settings as text", text, [SASL_PASSWORD, SSL_PASSWORD])
        assert "sasl_username='svc-videotag'" in text and "sasl_password='***'" in text


@pytest.mark.integration
def test_no_kafka_secret_when_a_login_or_an_acl_is_refused(
    spawn: SpawnWorker,
    secure_kafka: ApacheKafka,
    secure_topics: Topics,
    pki: dict[str, str],
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
) -> None:
    """A worker logging in with SCRAM over TLS, with a client key unlocked by its ssl_password, goes through a
    refused login (its password is not yet the user's), a refused ACL (WRITE on its DLQ topic) and normal work;
    meanwhile `videotag enqueue --log-level DEBUG` is refused a PLAIN login. The planted SASL and SSL passwords
    appear in none of: the worker's log, its /readyz reasons, /metrics, the result and the dead letter, the
    enqueue's output at DEBUG (kafka-python logs PLAIN tokens at DEBUG: the CLI never lets it)."""
    user, group = unique_name("planted"), unique_name("group")
    set_scram_user(secure_kafka, user, "the-password-before-rotation")
    access = worker_access(secure_topics, group)
    grant(secure_kafka, f"User:{user}", access[:3])  # not WRITE on the DLQ topic
    s3_server.client().upload_file(str(tiny_clips(tmp_path)[0]), bucket, "good.mp4")
    produce(
        secure_kafka.bootstrap_servers,
        secure_topics.input,
        [request("good", bucket, "good.mp4"), b'{"video_id": "bad"}'],
        keys=[b"good", b"bad"],
    )
    plain_user = next(iter(PLAIN_USERS))
    enqueue = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "--log-level", "DEBUG", "enqueue", "s3://bkt/k.mp4"],
        env={
            **os.environ,
            "VIDEOTAG_BOOTSTRAP_SERVERS": secure_kafka.address("SASL"),
            "VIDEOTAG_SECURITY_PROTOCOL": "SASL_SSL",
            "VIDEOTAG_SSL_CAFILE": pki["ca"],
            "VIDEOTAG_SASL_MECHANISM": "PLAIN",
            "VIDEOTAG_SASL_USERNAME": plain_user,
            "VIDEOTAG_SASL_PASSWORD": SASL_PASSWORD,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = spawn(
        secure_kafka,
        s3_server,
        secure_topics,
        group,
        seg_num="2",
        bootstrap_servers=secure_kafka.address("SASL"),
        security_protocol="SASL_SSL",
        ssl_cafile=pki["ca"],
        ssl_certfile=pki["client_cert"],
        ssl_keyfile=pki["client_key"],
        ssl_password=SSL_PASSWORD,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=user,
        sasl_password=SASL_PASSWORD,
    )
    collector = AnswerCollector(secure_kafka.bootstrap_servers, secure_topics)
    try:
        refused = worker.wait_readyz("503", "check sasl_mechanism, sasl_username and sasl_password")
        set_scram_user(secure_kafka, user, SASL_PASSWORD)  # the password rotated to the one the worker has
        denied = worker.wait_readyz("503", "WRITE on topic", "(DLQ topic)")
        grant(secure_kafka, f"User:{user}", access[3:])
        missing = collector.wait_for({"good", "bad"}, timeout=90)
        answers = collector.snapshot()
        metrics = worker.get("/metrics")[1]
        log = worker.log()
        enqueue_out, enqueue_err = enqueue.communicate(timeout=60)
    finally:
        collector.close()
        if enqueue.poll() is None:
            enqueue.kill()
    print(
        f"\nrefused login: {refused}\nrefused ACL: {denied}\nenqueue (exit {enqueue.returncode}): "
        f"{enqueue_err.splitlines()[-1] if enqueue_err else ''}; DEBUG output {len(enqueue_err)} chars"
    )
    assert missing == set(), log[-3000:]
    assert {a.ident: a.kind if a.kind == "result" else a.code for a in answers} == {
        "good": "result",
        "bad": "schema_violation",
    }
    assert enqueue.returncode == 1 and "videotag enqueue: Kafka at" in enqueue_err
    # At DEBUG, kafka-python's own warnings are let through, never its DEBUG dumps of the requests it sends.
    assert " kafka.net." in enqueue_err and "kafka.protocol.parser" not in enqueue_err
    secrets = [SASL_PASSWORD, SSL_PASSWORD]
    _assert_no_secret("the worker log", log, secrets)
    _assert_no_secret("/readyz", refused + denied, secrets)
    _assert_no_secret("/metrics", metrics, secrets)
    for answer in answers:
        _assert_no_secret(f"the answer to {answer.ident}", json.dumps(answer.value, ensure_ascii=False), secrets)
    _assert_no_secret("videotag enqueue at DEBUG", enqueue_out + enqueue_err, secrets)


# container images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_run_as_a_non_root_user(name: str) -> None:
    path = ROOT / "deploy" / name
    if not path.exists():
        pytest.skip(f"deploy/{name} not written yet")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    final_stage = max(i for i, line in enumerate(lines) if re.match(r"(?i)FROM\s", line))
    users = [line.split(None, 1)[1].strip() for line in lines[final_stage:] if re.match(r"(?i)USER\s", line)]
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"} and not user.startswith("$"), users[-1]
    group = users[-1].split(":")[1] if ":" in users[-1] else None
    assert group not in {"root", "0"}, users[-1]
