"""Nothing stuck, on one partition and the shipped defaults (but the retry budget where its end is the subject):
an object the worker may not read, a store that is down for everyone for a while, a request too large to echo,
a message that kills every worker that takes it, an operator skipping a message; the commit reaches the end and
SIGTERM ends the worker promptly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.fault.helpers import AnswerCollector, request, tiny_clips
from tests.integration.worker_process import SpawnWorker, WorkerProcess
from tests.kafka_helpers import Topics, produce, unique_name
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

ADMIN = ("admin-key", "admin-secret-9c1e")
READER = {
    "name": "reader",
    "credentials": [{"accessKey": "reader-key", "secretKey": "reader-secret-5d2a"}],
    "actions": ["Read:videos", "List:videos"],
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tiny_clips(tmp_path_factory.mktemp("stuck-clips"))


def _one_partition(broker: KafkaServer) -> Topics:
    topics = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"))
    broker.create_topics([topics.input, topics.output, topics.dlq], partitions=1)
    return topics


def _committed(broker: KafkaServer, topics: Topics, group: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topics.input, 0))
    finally:
        consumer.close()


def _inflight(worker: WorkerProcess) -> float:
    try:
        return worker.metric("videotag_inflight_videos")
    except OSError:  # not listening yet
        return 0.0


def _until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _skip_offset_1(broker: KafkaServer, group: str, topic: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`videotag skip` of offset 1 of partition 0 of `topic` for `group`, as an operator runs it."""
    command = [sys.executable, "-m", "worker.cli", "skip", "--bootstrap-servers", broker.bootstrap_servers]
    command += ["--group-id", group, *options, "--topic", topic, "--partition", "0", "--offset", "1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_forbidden_object_store_outage_and_huge_attributes_on_one_partition(
    spawn: SpawnWorker, kafka_broker: KafkaServer, clips: list[Path], tmp_path: Path
) -> None:
    s3 = S3Server(tmp_path / "s3", access_key=ADMIN[0], secret_key=ADMIN[1], identities=[READER]).start()
    try:
        for bucket in ("videos", "private"):
            s3.create_bucket(bucket)
            s3.client().upload_file(str(clips[0]), bucket, "clip.mp4")
        s3.client().upload_file(str(clips[1]), "videos", "later.mp4")
        topics = _one_partition(kafka_broker)
        group = unique_name("group")
        worker = _reader_worker(spawn, kafka_broker, s3, topics, group)  # it may read "videos" only
        worker.wait_ready()
        collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
        try:
            s3.stop()  # down for everyone
            values = [
                request("forbidden", "private", "clip.mp4"),
                request("outage", "videos", "clip.mp4"),
                json.dumps(
                    {"video_id": "huge", "bucket": "videos", "key": "clip.mp4", "attributes": {"note": "x" * 900_000}}
                ).encode(),
                request("good", "videos", "later.mp4"),
            ]
            produce(
                kafka_broker.bootstrap_servers, topics.input, values, keys=[b"forbidden", b"outage", b"huge", b"good"]
            )
            assert _until(lambda: "object store unreachable" in worker.get("/readyz")[1], timeout=30), worker.get(
                "/readyz"
            )
            time.sleep(8)  # an outage of any length spends no budget: 8 s here, with a 20 s budget
            s3.start()
            missing = collector.wait_for({"forbidden", "outage", "huge", "good"}, timeout=120)
            answers = collector.by_id()
        finally:
            collector.close()
        assert missing == set()
        outcome = {i: [a.kind if a.kind == "result" else a.code for a in recs] for i, recs in answers.items()}
        assert outcome == {
            "forbidden": ["access_denied"],
            "outage": ["result"],
            "huge": ["schema_violation"],
            "good": ["result"],
        }
        forbidden = answers["forbidden"][0].value["error"]["message"]
        assert "AccessDenied" in forbidden or "403" in forbidden
        assert _until(lambda: _committed(kafka_broker, topics, group) == 4, timeout=30)
        assert worker.get("/readyz")[0] == 200 and worker.get("/healthz")[0] == 200
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        print(f"\nNOTHING STUCK: outcomes {outcome}; SIGTERM to exit {time.monotonic() - started:.1f} s")
    finally:
        s3.stop()


def _reader_worker(spawn: SpawnWorker, broker: KafkaServer, s3: S3Server, topics: Topics, group: str) -> WorkerProcess:
    """Shipped defaults, but a 20 s retry budget: this test is about what happens when it runs out."""
    credentials = READER["credentials"][0]
    return spawn(
        broker,
        s3,
        topics,
        group,
        env={"AWS_ACCESS_KEY_ID": credentials["accessKey"], "AWS_SECRET_ACCESS_KEY": credentials["secretKey"]},
        retry_budget_s="20",
    )


def test_a_message_that_kills_every_worker_is_dead_lettered_and_an_operator_can_skip_one(
    spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, bucket: str, clips: list[Path]
) -> None:
    topics = _one_partition(kafka_broker)
    group = unique_name("group")
    s3_server.client().upload_file(str(clips[0]), bucket, "clip.mp4")
    produce(kafka_broker.bootstrap_servers, topics.input, [request("deadly", bucket, "clip.mp4")], keys=[b"deadly"])
    slow = {"seg_num": "64"}  # long enough to be in flight when the kill comes
    pod = {"POD_NAME": "poison-pod"}  # restarted in its pod, as the chart runs it: it rejoins at once
    for death in range(3):  # three workers die holding it (as if the video killed them: an OOM kill, say)
        worker = spawn(kafka_broker, s3_server, topics, group, env=pod, **slow)
        assert _until(lambda w=worker: _inflight(w) >= 1, timeout=90), f"death {death}: {worker.log()[-1500:]}"
        worker.process.kill()
        worker.wait(10)
    survivor = spawn(kafka_broker, s3_server, topics, group, env=pod, **slow)
    collector = AnswerCollector(kafka_broker.bootstrap_servers, topics)
    try:
        assert collector.wait_for({"deadly"}, timeout=90) == set()
        [answer] = collector.by_id()["deadly"]
        assert answer.code == "worker_crashed" and "3 workers died" in answer.value["error"]["message"]
        assert _until(lambda: _committed(kafka_broker, topics, group) == 1, timeout=30)

        survivor.signal(signal.SIGTERM)  # the operator stops the workers, then skips the next message
        assert survivor.wait(30) == 0
        produce(
            kafka_broker.bootstrap_servers, topics.input, [request("skip-me", bucket, "clip.mp4")], keys=[b"skip-me"]
        )
        run = _skip_offset_1(kafka_broker, group, topics.input, "--dlq-topic", topics.dlq)
        assert run.returncode == 0, run.stderr
        assert collector.wait_for({"skip-me"}, timeout=30) == set()
        assert collector.by_id()["skip-me"][0].code == "skipped_by_operator"
        assert _committed(kafka_broker, topics, group) == 2
        again = _skip_offset_1(kafka_broker, group, topics.input)
        assert again.returncode == 1 and "is at offset 2" in again.stderr  # nothing moves twice
    finally:
        collector.close()
