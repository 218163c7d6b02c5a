"""A real `videotag worker` with `log_format: json` and an OTLP collector: every line it writes is a JSON object,
a video's lines name it, and its results and dead letters carry the request's trace (docs/messages.md, *Trace
context*), as do the spans it exports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.worker_process import SpawnWorker
from tests.kafka_helpers import Topics, consume_all, produce, unique_name
from tests.otlp_collector import Collector
from worker import tracing
from worker.local.demo import make_clips
from worker.local.stack import KafkaServer, S3Server

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
FIELD_TRACE = "0af7651916cd43dd8448eb211c80319c"


def _request(video_id: str, bucket: str, key: str, **extra: str) -> bytes:
    return json.dumps({"video_id": video_id, "bucket": bucket, "key": key, **extra}).encode()


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_json_logs_and_trace_context_end_to_end(
    spawn: SpawnWorker, kafka_broker: KafkaServer, s3_server: S3Server, bucket: str, tmp_path: Path, delivery: str
) -> None:
    topics = Topics(input=unique_name("in"), output=unique_name("out"), dlq=unique_name("dlq"))
    kafka_broker.create_topics([topics.input, topics.output, topics.dlq], partitions=1)
    client = s3_server.client()
    client.upload_file(str(make_clips(tmp_path, seconds=1.0)[0]), bucket, "good.mp4")
    client.put_object(Bucket=bucket, Key="text.mp4", Body=b"this is not a video at all\n" * 10)
    incoming = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode()
    with Collector() as collector:
        # The shipped engine, exported afresh: Paddle then writes glog lines to file descriptor 2 itself.
        worker = spawn(
            kafka_broker,
            s3_server,
            topics,
            unique_name("group"),
            log_format="json",
            engine="inference",
            model_cache_dir=str(tmp_path / "models"),
            otel_exporter_otlp_endpoint=collector.endpoint,
            delivery=delivery,
        )
        worker.wait_ready()
        produce(
            kafka_broker.bootstrap_servers,
            topics.input,
            [_request("good", bucket, "good.mp4")],
            headers=[("traceparent", incoming)],
        )
        produce(
            kafka_broker.bootstrap_servers,
            topics.input,
            [_request("text", bucket, "text.mp4", trace_id=FIELD_TRACE), b"{broken json"],
        )
        records = consume_all(kafka_broker.bootstrap_servers, [topics.output, topics.dlq], 3, timeout=180)
        worker.signal(signal.SIGTERM)
        assert worker.wait(90) == 0
        spans = collector.spans()  # the worker flushes its spans when it stops
    log = worker.log()

    # Every line, start-up and Paddle's included, is one JSON object with the four fields.
    lines = log.splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} of the worker's output is not JSON: {line!r}") from None
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    assert any("endpoints on" in e["message"] for e in entries) and any(e["message"] == "stopped" for e in entries)
    native = [e for e in entries if e["logger"] == "native"]  # Paddle 3.3's export warns through glog
    assert native, "no native line was caught: does Paddle's export still write to stderr? " + log[-2000:]

    # The outputs: one per request, each in its request's trace with a span of the worker's own.
    assert len(records) == 3, log[-3000:]
    by_id = {}
    for record in records:
        value = json.loads(record.value)
        header = tracing.parse_traceparent(tracing.header_value(record.headers))
        assert header is not None, record.headers
        by_id[value.get("video_id") or "malformed"] = (record.topic, value, header)
    topic, result, header = by_id["good"]
    assert topic == topics.output and result["tags"]
    assert header.trace_id == CALLER_TRACE and header.parent_span_id != CALLER_SPAN and header.flags == 1
    topic, letter, text_header = by_id["text"]
    assert topic == topics.dlq and text_header.trace_id == FIELD_TRACE
    topic, letter, malformed_header = by_id["malformed"]
    assert topic == topics.dlq and letter["error"]["code"] == "invalid_json"
    assert malformed_header.trace_id not in (CALLER_TRACE, FIELD_TRACE)

    # A video's records name it: the good one's with the caller's trace, the bad one's with the field's.
    for video_id, trace_id, offset in (("good", CALLER_TRACE, 0), ("text", FIELD_TRACE, 1)):
        mine = [e for e in entries if e.get("video_id") == video_id]
        assert mine, f"no log record names {video_id}"
        assert all(
            e["trace_id"] == trace_id and e["topic"] == topics.input and e["partition"] == 0 and e["offset"] == offset
            for e in mine
        ), mine
    dead = [e for e in entries if e["message"].startswith("dead-letter")]
    assert {e.get("video_id") for e in dead} == {"text", None}
    assert next(e for e in dead if e.get("video_id") is None)["trace_id"] == malformed_header.trace_id

    # The spans: each stage of the good video, children of the caller's span; the publish span is the header's.
    good = {s.name: s for s in spans if s.trace_id == CALLER_TRACE}
    assert set(good) == {"fetch", "decode", "extract", "predict", "publish"}, [s.name for s in spans]
    assert all(s.parent_span_id == CALLER_SPAN and s.service == "videotag-worker" for s in good.values())
    assert good["publish"].span_id == header.parent_span_id
    assert good["decode"].attributes["videotag.video_id"] == "good"
    [text_publish] = [s for s in spans if s.trace_id == FIELD_TRACE]
    assert text_publish.name == "publish" and text_publish.attributes["videotag.outcome"] == "dead_letter"
    assert text_publish.span_id == text_header.parent_span_id


def test_a_replayed_dead_letter_continues_its_trace(kafka_broker: KafkaServer) -> None:
    """`videotag enqueue --from-dlq` sends each original with its dead letter's traceparent."""
    topics = Topics(input=unique_name("in"), output=unique_name("out"), dlq=unique_name("dlq"))
    kafka_broker.create_topics([topics.input, topics.dlq], partitions=1)
    letter = {
        "video_id": "v1",
        "original": {
            "encoding": "text",
            "value": '{"video_id": "v1"}',
            "topic": topics.input,
            "partition": 0,
            "offset": 0,
            "key": "v1",
        },
        "error": {"code": "corrupt_video", "message": "x"},
        "attempts": 1,
        "worker": "w",
        "failed_at": "t",
    }
    header = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode()
    produce(
        kafka_broker.bootstrap_servers,
        topics.dlq,
        [json.dumps(letter).encode()],
        keys=[b"v1"],
        headers=[("traceparent", header)],
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "enqueue",
            "--bootstrap-servers",
            kafka_broker.bootstrap_servers,
            "--dlq-topic",
            topics.dlq,
            "--topic",
            topics.input,
            "--from-dlq",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    [replayed] = consume_all(kafka_broker.bootstrap_servers, topics.input, 1, timeout=30)
    assert replayed.value == b'{"video_id": "v1"}' and replayed.headers == [("traceparent", header)]
