"""Every input users send, through a real worker on one partition: object-store events of each kind, an AV1
video, a file without video, a plain request; each answered as docs/messages.md says, and the committed offset
reaching the end of the partition (a message without a video must not hold it back)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, consume_all, produce, unique_name
from worker.local.demo import encode_clip, run_ffmpeg
from worker.local.stack import KafkaBroker, S3Server

pytestmark = pytest.mark.integration


def _files(directory: Path) -> dict[str, Path]:
    source = "testsrc2=size=64x48:rate=25"
    files = {name: directory / name for name in ("h264.mp4", "av1.mp4", "audio.m4a")}
    encode_clip(source, None, files["h264.mp4"], frames=25, codec=("-c:v", "libx264", "-pix_fmt", "yuv420p"))
    av1 = ("-c:v", "libaom-av1", "-cpu-used", "8", "-pix_fmt", "yuv420p")
    encode_clip(source, None, files["av1.mp4"], frames=25, codec=av1)
    run_ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(files["audio.m4a"]))
    return files


def _committed(broker: KafkaBroker, group_id: str, tp: TopicPartition) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    try:
        return consumer.committed(tp)
    finally:
        consumer.close()


def test_every_input_shape_on_one_partition(
    spawn: SpawnWorker,
    kafka_broker: KafkaBroker,
    s3_server: S3Server,
    bucket: str,
    unique_group_id: str,
    tmp_path: Path,
) -> None:
    topics = Topics(input=unique_name("in"), output=unique_name("out"), dlq=unique_name("dlq"))
    kafka_broker.create_topics([topics.input, topics.output, topics.dlq], partitions=1)
    files = _files(tmp_path)
    client = s3_server.client()
    client.upload_file(str(files["h264.mp4"]), bucket, "in/bridge clip.mp4")  # EventBridge sends the key as is
    client.upload_file(str(files["av1.mp4"]), bucket, "in/av1 clip.mp4")  # S3 notifications URL-encode it
    client.upload_file(str(files["audio.m4a"]), bucket, "in/audio.m4a")
    client.upload_file(str(files["h264.mp4"]), bucket, "in/good.mp4")
    s3_notification = {
        "Records": [
            {
                "eventName": "ObjectCreated:CompleteMultipartUpload",
                "s3": {"bucket": {"name": bucket}, "object": {"key": "in/av1+clip.mp4"}},
            }
        ]
    }
    messages = [
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-24T10:00:00.000Z", "Bucket": bucket},
        {
            "version": "0",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"bucket": {"name": bucket}, "object": {"key": "in/bridge clip.mp4"}},
        },
        {"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:uploads", "Message": json.dumps(s3_notification)},
        {"video_id": "audio", "bucket": bucket, "key": "in/audio.m4a"},
        {"video_id": "good", "bucket": bucket, "key": "in/good.mp4"},
    ]
    worker = spawn(kafka_broker, s3_server, topics, unique_group_id)
    worker.wait_ready()
    produce(kafka_broker.bootstrap_servers, topics.input, [json.dumps(m).encode() for m in messages])

    partition = TopicPartition(topics.input, 0)
    deadline = time.monotonic() + 300
    while (committed := _committed(kafka_broker, unique_group_id, partition)) != len(messages):
        assert time.monotonic() < deadline, f"committed {committed} of {len(messages)}:\n{worker.log()[-3000:]}"
        time.sleep(1)
    # Everything is committed, so everything is published: read all of it (and nothing more turns up).
    results = [json.loads(r.value) for r in consume_all(kafka_broker.bootstrap_servers, topics.output, 4, 10)]
    letters = [json.loads(r.value) for r in consume_all(kafka_broker.bootstrap_servers, topics.dlq, 2, 10)]
    decoders = {result["video_id"]: result["frames"]["decoder"] for result in results}
    assert decoders == {"in/bridge clip.mp4": "opencv", "in/av1 clip.mp4": "pyav", "good": "opencv"}
    assert all(result["frames"]["decoded"] == 25 for result in results)
    assert [(letter["video_id"], letter["error"]["code"]) for letter in letters] == [("audio", "no_video_stream")]
    assert worker.process.poll() is None
