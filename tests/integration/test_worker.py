"""The worker end to end against the real broker and S3 server: results, dead letters, groups, crashes, drain."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.integration.worker_process import SECRET_KEY, SpawnWorker, WorkerProcess, wait_for_assignment
from tests.kafka_helpers import Topics, consume_all, produce
from worker import messages
from worker.local.demo import make_clips
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four real H.264 clips (and the demo's broken upload, dropped here)."""
    return make_clips(tmp_path_factory.mktemp("clips"), seconds=2.0)[:4]


@pytest.fixture
def workers(
    spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, topics: Topics, unique_group_id: str
) -> Callable[..., WorkerProcess]:
    """workers(**settings) → a worker process on this test's topics and group."""
    return lambda **settings: spawn(kafka_broker, s3_server, topics, unique_group_id, **settings)


def _request(video_id: str, bucket: str, key: str) -> bytes:
    return json.dumps({"video_id": video_id, "bucket": bucket, "key": key}).encode()


def _upload(s3_server: S3Server, bucket: str, clips: list[Path], copies: int) -> list[str]:
    client = s3_server.client()
    keys = []
    for i in range(copies):
        clip = clips[i % len(clips)]
        key = f"in/{i:03d}-{clip.name}"
        client.upload_file(str(clip), bucket, key)
        keys.append(key)
    return keys


def _answers(broker: KafkaServer, topics: Topics, expected: int, timeout: float = 120) -> dict[str, list[dict]]:
    """video_id → every result and DLQ record published for it (duplicates included)."""
    records = [
        json.loads(r.value)
        for r in consume_all(broker.bootstrap_servers, [topics.output, topics.dlq], expected, timeout)
    ]
    answers: dict[str, list[dict]] = {}
    for record in records:
        answers.setdefault(record.get("video_id") or record["original"]["value"], []).append(record)
    return answers


def test_results_and_every_bad_input_in_the_dlq(workers, kafka_broker, s3_server, topics, bucket, clips):
    client = s3_server.client()
    keys = _upload(s3_server, bucket, clips, 3)
    client.put_object(Bucket=bucket, Key="text.mp4", Body=b"this is not a video at all\n" * 10)
    client.put_object(Bucket=bucket, Key="empty.mp4", Body=b"")
    client.put_object(Bucket=bucket, Key="truncated.mp4", Body=clips[0].read_bytes()[:3000])
    client.put_object(Bucket=bucket, Key="huge.mp4", Body=b"\0" * 600_000)
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": keys[0].replace("/", "%2F")}},
            },
            {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": bucket}, "object": {"key": "gone.mp4"}}},
        ]
    }
    values = [_request(f"ok-{i}", bucket, k) for i, k in enumerate(keys)] + [
        b"{broken json",
        b'{"video_id": "no-bucket"}',
        _request("missing-key", bucket, "nope.mp4"),
        _request("missing-bucket", "no-such-bucket-x", "a.mp4"),
        _request("text", bucket, "text.mp4"),
        _request("empty", bucket, "empty.mp4"),
        _request("truncated", bucket, "truncated.mp4"),
        _request("huge", bucket, "huge.mp4"),
        json.dumps(event).encode(),
    ]
    worker = workers(max_object_bytes="500000")
    worker.wait_ready()
    produce(kafka_broker.bootstrap_servers, topics.input, values)
    answers = _answers(kafka_broker, topics, expected=4 + 8)

    for i in range(3):
        [result] = answers[f"ok-{i}"]
        jsonschema.validate(result, messages.schema("result"))
        assert len(result["tags"]) == 20 and result["model"]["weights"] == "random-untrained"
        assert result["frames"]["sampled"] == 4 and result["timings_ms"]["total"] > 0
    [from_event] = answers[keys[0]]
    assert from_event["bucket"] == bucket and "tags" in from_event
    codes = {vid: recs[0]["error"]["code"] for vid, recs in answers.items() if "error" in recs[0]}
    for record in (r for recs in answers.values() for r in recs if "error" in r):
        jsonschema.validate(record, messages.schema("dlq"))
    assert codes == {
        "{broken json": "invalid_json",
        '{"video_id": "no-bucket"}': "schema_violation",
        "missing-key": "no_such_key",
        "missing-bucket": "no_such_bucket",
        "text": "not_a_video",
        "empty": "empty_file",
        "truncated": "corrupt_video",
        "huge": "object_too_large",
    }
    # The partition kept moving and the counters match what was published.
    assert worker.metric("videotag_messages_consumed_total") == len(values)
    assert worker.metric("videotag_videos_processed_total", 'status="ok"') == 4
    assert worker.metric("videotag_videos_processed_total", 'status="dlq"') == 8
    assert worker.metric("videotag_failures_total", 'reason="no_such_key"') == 1
    assert worker.metric("videotag_stage_seconds_count", 'stage="extract"') == 4
    assert worker.metric("videotag_frames_decoded_total") > 0
    assert worker.get("/nothing-here")[0] == 404
    assert SECRET_KEY not in worker.log()
    assert not any(worker.temp_dir.iterdir())  # every download removed


def test_readyz_is_false_until_the_model_is_loaded(workers):
    worker = workers()
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status, body = worker.get("/readyz")
        except OSError:
            time.sleep(0.05)
            continue
        statuses.append((status, body.strip()))
        if status == 200:
            break
        time.sleep(0.05)
    assert statuses[0] == (503, "not ready: model not loaded")
    assert statuses[-1][0] == 200
    assert worker.get("/healthz")[0] == 200


def test_two_workers_share_the_partitions(workers, kafka_broker, s3_server, topics, bucket, clips):
    keys = _upload(s3_server, bucket, clips, 12)
    pair = [workers(), workers()]
    for worker in pair:
        worker.wait_ready()
    wait_for_assignment(pair, partitions=3)
    produce(
        kafka_broker.bootstrap_servers,
        topics.input,
        [_request(k, bucket, k) for k in keys],
        keys=[k.encode() for k in keys],
    )
    answers = _answers(kafka_broker, topics, expected=12)
    assert sorted(answers) == sorted(keys)
    duplicates = sum(len(v) - 1 for v in answers.values())
    processed = [w.metric("videotag_videos_processed_total", 'status="ok"') for w in pair]
    print(f"two workers: processed {processed}, duplicates {duplicates}")
    assert all(n > 0 for n in processed)
    assert duplicates == 0  # no crash, no rebalance after the start: exactly once here


def test_kill_9_mid_video_loses_nothing(workers, kafka_broker, s3_server, topics, bucket, clips):
    keys = _upload(s3_server, bucket, clips, 6)
    slow = {"seg_num": "24", "max_inflight": "2"}
    first = workers(**slow)
    first.wait_ready()
    produce(kafka_broker.bootstrap_servers, topics.input, [_request(k, bucket, k) for k in keys])
    deadline = time.monotonic() + 60
    while first.metric("videotag_inflight_videos") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.metric("videotag_inflight_videos") >= 1
    done_before = first.metric("videotag_videos_processed_total", 'status="ok"')
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = workers(**slow)
    second.wait_ready()
    answers = _answers(kafka_broker, topics, expected=6, timeout=180)
    duplicates = sum(len(v) - 1 for v in answers.values())
    print(f"kill -9: {done_before:.0f} finished before the kill, duplicates after recovery {duplicates}")
    assert sorted(answers) == sorted(keys)
    assert all("tags" in recs[0] for recs in answers.values())


def test_kill_9_of_the_model_process_mid_video_restarts_it_and_loses_nothing(
    workers, kafka_broker, s3_server, topics, bucket, clips
):
    """The networks' process killed with SIGKILL while videos are in flight: the worker reports not-ready, starts
    a new one, and the videos are still tagged (retried, not dead-lettered); the worker itself stays up."""
    keys = _upload(s3_server, bucket, clips, 3)
    worker = workers(seg_num="32", max_inflight="2")
    worker.wait_ready()
    first = worker.model_process_pid()
    assert first is not None
    idle = _cpu_seconds(first)
    produce(kafka_broker.bootstrap_servers, topics.input, [_request(k, bucket, k) for k in keys])
    deadline = time.monotonic() + 120
    while _cpu_seconds(first) - idle < 1.0 and time.monotonic() < deadline:  # a batch has been running 1 s
        time.sleep(0.05)
    assert worker.metric("videotag_inflight_videos") >= 1
    os.kill(first, signal.SIGKILL)
    said = worker.wait_readyz("503", "model process", timeout=30)
    worker.wait_ready(timeout=120)
    answers = _answers(kafka_broker, topics, expected=len(keys), timeout=600)
    dead_letters = consume_all(kafka_broker.bootstrap_servers, topics.dlq, 1, 5)
    second = worker.model_process_pid()
    lost = worker.metric("videotag_failures_total", 'reason="model_process_died"')
    print(f"model process {first} killed: /readyz said {said!r}; restarted as {second}; {lost:.0f} videos retried")
    assert sorted(answers) == sorted(keys)
    assert all("tags" in recs[0] for recs in answers.values())
    assert dead_letters == []
    assert lost >= 1  # a batch was in the process when it died: its video was retried
    assert second is not None and second != first
    assert worker.metric("videotag_model_process_restarts_total") == 1
    assert worker.metric("videotag_model_process_up") == 1
    assert worker.process.poll() is None and "model process" in worker.log()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigterm_drains_commits_and_exits_0(workers, kafka_broker, s3_server, topics, bucket, clips, unique_group_id):
    keys = _upload(s3_server, bucket, clips, 4)
    worker = workers(seg_num="16", max_inflight="2")
    worker.wait_ready()
    produce(kafka_broker.bootstrap_servers, topics.input, [_request(k, bucket, k) for k in keys])
    deadline = time.monotonic() + 60
    while worker.metric("videotag_inflight_videos") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(90) == 0
    drain_s = time.monotonic() - started
    answered = consume_all(kafka_broker.bootstrap_servers, topics.output, 1, 10)
    ids = Counter(json.loads(r.value)["video_id"] for r in answered)
    assert ids and max(ids.values()) == 1 and "draining" in worker.log()
    # What was published is committed, and nothing beyond it.
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap_servers, group_id=unique_group_id, enable_auto_commit=False
    )
    try:
        committed = sum(consumer.committed(TopicPartition(topics.input, p)) or 0 for p in range(3))
    finally:
        consumer.close()
    print(f"SIGTERM: drained in {drain_s:.1f} s, {len(ids)} of {len(keys)} answered and committed")
    assert committed == len(ids)
    # A new worker finishes the rest; the drained ones are not redone.
    second = workers()
    second.wait_ready()
    answers = _answers(kafka_broker, topics, expected=len(keys))
    assert sorted(answers) == sorted(keys)
    assert all(len(v) == 1 for v in answers.values())
