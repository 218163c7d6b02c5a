"""The embedded local stack against its real binaries: round trips, persistence across restarts, cleanup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from tests.kafka_helpers import Topics, consume_all, produce, unique_name
from worker.local.stack import GRPC_OFFSET, KafkaBroker, LocalStack, S3Server, free_port

pytestmark = pytest.mark.integration


def _gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _error_code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _group_consumer(bootstrap: str, group_id: str) -> KafkaConsumer:
    """A consumer for manual assign + commit: no JoinGroup, so no Tansu join delay."""
    return KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)


def test_free_port_leaves_room_for_grpc_twin() -> None:
    port = free_port(span_check=GRPC_OFFSET)
    for candidate in (port, port + GRPC_OFFSET):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", candidate))


def test_s3_round_trip_and_error_codes(s3_server: S3Server, bucket: str) -> None:
    s3 = s3_server.client()
    body = os.urandom(70_000)
    s3.put_object(Bucket=bucket, Key="clips/a.mp4", Body=body)
    assert s3.get_object(Bucket=bucket, Key="clips/a.mp4")["Body"].read() == body

    with pytest.raises(ClientError) as missing_key:
        s3.get_object(Bucket=bucket, Key="clips/nope.mp4")
    assert _error_code(missing_key) == ("NoSuchKey", 404)

    with pytest.raises(ClientError) as missing_bucket:
        s3.get_object(Bucket=unique_name("absent"), Key="a")
    assert _error_code(missing_bucket) == ("NoSuchBucket", 404)


def test_kafka_round_trip_keeps_keys_and_headers(kafka_broker: KafkaBroker, topics: Topics) -> None:
    values = [f"job-{i}".encode() for i in range(9)]
    keys: list[bytes | None] = [f"video-{i % 3}".encode() for i in range(9)]
    headers = [("trace-id", b"abc123"), ("attempt", b"1")]
    produce(kafka_broker.bootstrap_servers, topics.input, values, keys=keys, headers=headers)

    records = consume_all(kafka_broker.bootstrap_servers, topics.input, expected=9, timeout=30)

    assert sorted((r.key, r.value) for r in records) == sorted(zip(keys, values, strict=True))
    assert all(r.headers == headers for r in records)
    partitions_by_key = {r.key: {q.partition for q in records if q.key == r.key} for r in records}
    assert all(len(parts) == 1 for parts in partitions_by_key.values())  # one key, one partition
    for partition in {r.partition for r in records}:  # per-partition order is production order
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == sorted(offsets)


def test_broker_on_s3_storage_keeps_records_and_offsets_across_restarts(
    s3_server: S3Server, tmp_path: Path, unique_group_id: str
) -> None:
    with KafkaBroker(tmp_path, s3=s3_server, s3_bucket=unique_name("tansu")) as broker:
        bootstrap = broker.bootstrap_servers
        broker.create_topics(["jobs"], partitions=1)
        produce(bootstrap, "jobs", [b"a", b"b", b"c"])
        tp = TopicPartition("jobs", 0)
        consumer = _group_consumer(bootstrap, unique_group_id)
        try:
            consumer.assign([tp])
            consumer.commit({tp: OffsetAndMetadata(2, "", -1)})
        finally:
            consumer.close()

        broker.restart()  # graceful
        assert broker.bootstrap_servers == bootstrap
        produce(bootstrap, "jobs", [b"d"])
        broker.kill()  # crash: acks=all records and commits must already be in S3
        assert not broker.running
        broker.start()
        assert broker.bootstrap_servers == bootstrap

        records = consume_all(bootstrap, "jobs", expected=4, timeout=30)
        assert [r.value for r in records] == [b"a", b"b", b"c", b"d"]
        consumer = _group_consumer(bootstrap, unique_group_id)
        try:
            consumer.assign([tp])
            assert consumer.committed(tp) == 2
        finally:
            consumer.close()


def test_memory_broker_restart_keeps_its_port_but_not_its_data(tmp_path: Path) -> None:
    with KafkaBroker(tmp_path) as broker:
        broker.create_topics(["gone-after-restart"])
        port = broker.port
        broker.restart()
        assert broker.port == port
        admin = broker.admin()
        try:
            assert "gone-after-restart" not in admin.list_topics()
        finally:
            admin.close()


def test_broker_restart_fails_cleanly_while_its_port_is_taken(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path).start()
    try:
        port = broker.port
        broker.stop()
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(RuntimeError, match="not ready"):
                broker.start(timeout=2)
            assert not broker.running
        broker.start()  # port free again: same address as before
        assert broker.port == port
    finally:
        broker.stop()


def test_broker_refuses_tls_it_cannot_provide(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="TLS"):
        KafkaBroker(tmp_path, cert=tmp_path / "c.pem", key=tmp_path / "k.pem")


def test_s3_kill_and_restart_keeps_objects_and_credentials(tmp_path: Path) -> None:
    with S3Server(tmp_path, access_key="videotag", secret_key="s3cret-key") as server:
        s3 = server.client()
        s3.create_bucket(Bucket="frames")
        s3.put_object(Bucket="frames", Key="k", Body=b"survives a crash")
        endpoint, pid = server.endpoint_url, server.pid

        server.kill()
        assert not server.running and _gone(pid)
        server.restart()

        assert server.endpoint_url == endpoint
        assert server.client().get_object(Bucket="frames", Key="k")["Body"].read() == b"survives a crash"
        wrong = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="videotag",
            aws_secret_access_key="wrong",
            config=Config(s3={"addressing_style": "path"}),
        )
        with pytest.raises(ClientError) as denied:
            wrong.get_object(Bucket="frames", Key="k")
        assert _error_code(denied) == ("SignatureDoesNotMatch", 403)


def test_localstack_leaves_no_process_or_directory_behind() -> None:
    with LocalStack() as stack:
        root, pids = stack.root, [stack.s3.pid, stack.kafka.pid]
        assert root.is_dir() and all(not _gone(pid) for pid in pids)
        stack.create_bucket("videos")
        stack.create_bucket("videos")  # idempotent
        stack.s3.client().put_object(Bucket="videos", Key="a.mp4", Body=b"x")
        stack.create_topics(["jobs", "results"], partitions=2)
        produce(stack.bootstrap_servers, "jobs", [b"job"])
    assert all(_gone(pid) for pid in pids)
    assert not root.exists()


def test_localstack_failing_start_stops_what_started(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_start(self: KafkaBroker, timeout: float = 20) -> KafkaBroker:
        raise RuntimeError("broker failed to start")

    monkeypatch.setattr(KafkaBroker, "start", broken_start)
    stack = LocalStack()
    with pytest.raises(RuntimeError, match="broker failed"):
        stack.start()
    assert stack.s3.pid is not None and _gone(stack.s3.pid)
    assert not stack.root.exists()


def test_servers_die_with_an_owner_that_never_stops_them() -> None:
    script = (
        "from worker.local.stack import LocalStack\n"
        "stack = LocalStack().start()\n"
        "print(stack.s3.pid, stack.kafka.pid, stack.root, flush=True)\n"
        "raise SystemExit(3)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 3, done.stderr
    s3_pid, kafka_pid, root = done.stdout.split()
    assert _gone(int(s3_pid)) and _gone(int(kafka_pid))
    assert not Path(root).exists()


def test_the_demo_runs_end_to_end() -> None:
    """`make run`'s command: the embedded stack, generated clips, a worker, results printed, exit 0."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo", "--layers", "50", "--engine", "dygraph", "--seg-num", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "tagged" in run.stdout and "dead-lettered of 5" in run.stdout, run.stdout[-2000:]
