"""Backfill (`videotag enqueue --from-s3 / --from-manifest`): the pure parts, then the real thing against the
suite's SeaweedFS S3 server (a bucket of 3001 keys: videos, non-videos, another prefix, a later upload) and
Apache Kafka, through the command line as an operator runs it; and what a plain enqueue or a DLQ replay does when
the broker refuses a request."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.kafka_helpers import consume_all, produce, unique_name
from tests.model_fixtures import cli_env, run_cli
from worker.commands.backfill import (
    BATCH,
    BackfillError,
    Entry,
    RateLimiter,
    Stats,
    inventory_entry,
    inventory_rows,
    is_video,
    parse_rate,
    parse_since,
    read_marker,
    wanted,
    write_marker,
)
from worker.local.stack import KafkaServer, S3Server
from worker.messages import request_message
from worker.settings import load_settings

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
REQUEST_FIELDS = {"video_id", "bucket", "key", "submitted_at"}


# --------------------------------------------------------------------------------------------------------
# Pure parts


def test_video_extensions_case_and_since() -> None:
    assert is_video("a/b.mp4") and is_video("a/B.MOV") and is_video("x.webm") and is_video("clip.MKV")
    assert not is_video("a/b.jpg") and not is_video("a/mp4") and not is_video("a/b.mp4.part")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    assert wanted(Entry("b", "v.mp4", now, "v.mp4"), now) is None
    assert wanted(Entry("b", "v.mp4", now - timedelta(seconds=1), "v.mp4"), now) == "too_old"
    assert wanted(Entry("b", "v.mp4", None, "v.mp4"), now) == "too_old"  # unknown age never passes --since
    assert wanted(Entry("b", "v.txt", now, "v.txt"), None) == "not_video"
    assert parse_since("2026-11-01") == now
    assert parse_since("2026-11-01T08:00+08:00") == now
    with pytest.raises(BackfillError, match="ISO date"):
        parse_since("yesterday")


def test_rate_is_a_token_bucket() -> None:
    assert parse_rate("200/s") == parse_rate("200") == 200.0 and parse_rate("0.5/s") == 0.5
    for bad in ("0", "-3", "fast", "10/m"):
        with pytest.raises(BackfillError):
            parse_rate(bad)
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    limiter = RateLimiter(10, clock=lambda: clock[0], sleep=sleep)
    for _ in range(35):
        limiter.acquire()
    # One second's burst (10) at once, then one every 0.1 s: the 35th at 2.5 s.
    assert clock[0] == pytest.approx(2.5)


def test_inventory_rows_are_decoded_and_old_versions_skipped() -> None:
    columns = ["Bucket", "Key", "Size", "LastModifiedDate", "IsLatest", "IsDeleteMarker"]
    text = (
        "b,my+video+%E8%A7%86%E9%A2%91.mp4,1,2026-11-01T00:00:00.000Z,true,false\n"
        "b,a%2Bb.mp4,1,2026-11-01T00:00:00.000Z,false,false\n"
        "b,gone.mp4,,2026-11-01T00:00:00.000Z,true,true\n"
    )
    rows = list(inventory_rows(gzip.compress(text.encode()), columns))
    entry = inventory_entry(rows[0], [0, 1])
    assert entry == Entry("b", "my video 视频.mp4", datetime(2026, 11, 1, tzinfo=UTC), [0, 1])
    assert inventory_entry(rows[1], [0, 2]) is None and inventory_entry(rows[2], [0, 3]) is None


def test_a_marker_belongs_to_its_source(tmp_path: Path) -> None:
    marker = tmp_path / "m.json"
    assert read_marker(marker, "s3://a/") is None
    write_marker(marker, "s3://a/", "k1", False, Stats(enqueued=3))
    assert read_marker(marker, "s3://a/")["position"] == "k1"
    with pytest.raises(BackfillError, match="another backfill"):
        read_marker(marker, "s3://b/")
    marker.write_text("{half", encoding="utf-8")
    with pytest.raises(BackfillError, match="not a backfill marker"):
        read_marker(marker, "s3://a/")


# --------------------------------------------------------------------------------------------------------
# Against SeaweedFS and Apache Kafka

VIDEOS = [f"uploads/a/v{i:05d}" + (".MOV" if i % 10 == 0 else ".mp4") for i in range(2000)]
NOT_VIDEOS = [f"uploads/a/t{i:05d}.jpg" for i in range(500)] + ["uploads/readme.txt"]
OTHER_PREFIX = [f"other/v{i:04d}.mp4" for i in range(300)]
LATER = [f"uploads/b/late{i:03d}.mkv" for i in range(200)]


def _put_all(client, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))


@pytest.fixture(scope="module")
def filled(s3_server: S3Server) -> tuple[str, datetime]:
    """A bucket of 3001 keys; the LATER ones were uploaded at or after the returned time, all others before."""
    bucket = unique_name("backfill")
    s3_server.create_bucket(bucket)
    client = s3_server.client()
    _put_all(client, bucket, VIDEOS + NOT_VIDEOS + OTHER_PREFIX)
    # LastModified has whole seconds: the boundary is a whole second after every earlier upload.
    boundary = datetime.fromtimestamp(int(time.time()) + 2, UTC)
    time.sleep(max(0.0, boundary.timestamp() - time.time()) + 0.1)
    _put_all(client, bucket, LATER)
    return bucket, boundary


def _enqueue(s3: S3Server, *args: str, broker: KafkaServer | None = None) -> subprocess.CompletedProcess:
    kafka = ["--bootstrap-servers", broker.bootstrap_servers] if broker else []
    return run_cli("enqueue", "--s3-endpoint-url", s3.endpoint_url, *kafka, *args, timeout=300, **S3_ENV)


def _topic(broker: KafkaServer) -> str:
    name = unique_name("backfill")
    broker.create_topics([name], partitions=3)
    return name


def _records(broker: KafkaServer, topic: str, expected: int) -> list[dict]:
    """Every record of the topic, checked to be the request of its key, when the topic holds `expected`."""
    records = consume_all(broker.bootstrap_servers, topic, expected, timeout=120)
    assert _end_offsets(broker, topic) == len(records) == expected
    values = [json.loads(r.value) for r in records]
    for record, value in zip(records, values, strict=True):
        assert set(value) == REQUEST_FIELDS and record.key == value["video_id"].encode() == value["key"].encode()
    return values


def _end_offsets(broker: KafkaServer, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def test_from_s3_enqueues_each_video_under_the_prefix_once(
    s3_server: S3Server, kafka_broker: KafkaServer, filled: tuple[str, datetime], tmp_path: Path
) -> None:
    bucket, _ = filled
    topic = _topic(kafka_broker)
    backfill = ("--from-s3", f"s3://{bucket}/uploads/", "--topic", topic, "--marker", str(tmp_path / "m.json"))
    run = _enqueue(s3_server, *backfill, broker=kafka_broker)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    # 2701 keys under the prefix: three pages of at most 1000.
    assert run.stderr.splitlines()[-1] == (
        f"enqueued to {topic} 2200 of 2701 objects (3 pages; skipped: 501 not "
        "videos, 0 older than --since, 0 not current)"
    )
    values = _records(kafka_broker, topic, 2200)
    assert sorted(v["key"] for v in values) == sorted(VIDEOS + LATER)
    assert {v["bucket"] for v in values} == {bucket}
    marker = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert marker["complete"] and marker["enqueued"] == 2200 and marker["position"] == "uploads/readme.txt"
    again = _enqueue(s3_server, *backfill, broker=kafka_broker)  # the same backfill, run again
    assert again.returncode == 0 and "says this backfill finished; nothing sent" in again.stderr
    assert _end_offsets(kafka_broker, topic) == 2200


def test_dry_run_since_and_start_after_send_nothing(
    s3_server: S3Server, kafka_broker: KafkaServer, filled: tuple[str, datetime], tmp_path: Path
) -> None:
    bucket, boundary = filled
    topic = _topic(kafka_broker)
    marker = tmp_path / "m.json"
    run = _enqueue(
        s3_server,
        "--from-s3",
        f"s3://{bucket}/",
        "--since",
        boundary.isoformat(),
        "--dry-run",
        "--topic",
        topic,
        "--marker",
        str(marker),
        broker=kafka_broker,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["key"] for line in lines] == LATER  # in key order
    assert all(set(line) == REQUEST_FIELDS and line["bucket"] == bucket for line in lines)
    assert "would enqueue 200 of 3001 objects (4 pages; skipped: 501 not videos, 2300 older than" in run.stderr
    after = VIDEOS[1499]
    run = _enqueue(s3_server, "--from-s3", f"s3://{bucket}/uploads/a/", "--start-after", after, "--dry-run")
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["key"] for line in run.stdout.splitlines()] == VIDEOS[1500:]
    assert not marker.exists() and _end_offsets(kafka_broker, topic) == 0


def test_an_interrupted_backfill_resumes_from_its_marker(
    s3_server: S3Server, kafka_broker: KafkaServer, filled: tuple[str, datetime], tmp_path: Path
) -> None:
    """SIGKILLed mid-run (rate-limited so that it is), then run again: every video arrives, those before the
    marker exactly once, and at most one batch (sent but not yet marked) twice."""
    bucket, _ = filled
    topic = _topic(kafka_broker)
    marker = tmp_path / "m.json"
    argv = [
        "enqueue",
        "--s3-endpoint-url",
        s3_server.endpoint_url,
        "--bootstrap-servers",
        kafka_broker.bootstrap_servers,
        "--from-s3",
        f"s3://{bucket}/uploads/a/",
        "--topic",
        topic,
        "--marker",
        str(marker),
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *argv, "--rate", "300/s"],
        env=cli_env(**S3_ENV),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if marker.is_file() and json.loads(marker.read_text(encoding="utf-8"))["enqueued"] >= 3 * BATCH:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        _, err = first.communicate(timeout=30)
    state = json.loads(marker.read_text(encoding="utf-8"))
    assert not state["complete"] and 3 * BATCH <= state["enqueued"] < 2000, (state, err)
    position = state["position"]
    second = run_cli(*argv, timeout=300, **S3_ENV)
    assert second.returncode == 0, second.stderr
    assert second.stderr.splitlines()[-1].endswith(f"; resumed after {position}")
    sent_after = sum(1 for key in VIDEOS if key > position)
    assert f"enqueued to {topic} {sent_after} of " in second.stderr
    total = _end_offsets(kafka_broker, topic)
    counts = Counter(v["key"] for v in _records(kafka_broker, topic, total))
    assert set(counts) == set(VIDEOS)
    twice = [key for key, n in counts.items() if n > 1]
    assert max(counts.values()) <= 2 and len(twice) <= BATCH and all(key > position for key in twice)
    print(
        f"\nkilled after {state['enqueued']} marked; resumed after {position}: {sent_after} sent again, "
        f"{len(twice)} duplicates"
    )


def _inventory(client, bucket: str, rows: list[list[str]], files: int, schema: str, name: str = "daily") -> str:
    """An S3 Inventory report in `bucket`: `files` gzip CSV data files and the manifest.json naming them."""
    entries = []
    for i in range(files):
        text = io.StringIO()
        for row in rows[i::files]:
            text.write(",".join(f'"{cell}"' for cell in row) + "\n")
        data = gzip.compress(text.getvalue().encode("utf-8"))
        key = f"inventory/{bucket}/{name}/data/{i:04d}.csv.gz"
        client.put_object(Bucket=bucket, Key=key, Body=data)
        entries.append({"key": key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()})
    manifest = {
        "sourceBucket": bucket,
        "destinationBucket": f"arn:aws:s3:::{bucket}",
        "version": "2016-11-30",
        "creationTimestamp": "1764547200000",
        "fileFormat": "CSV",
        "fileSchema": schema,
        "files": entries,
    }
    client.put_object(
        Bucket=bucket,
        Key=f"inventory/{bucket}/{name}/2026-12-01T00-00Z/manifest.json",
        Body=json.dumps(manifest).encode(),
    )
    return f"s3://{bucket}/inventory/{bucket}/{name}/2026-12-01T00-00Z/manifest.json"


def test_from_manifest_reads_an_inventory_report(
    s3_server: S3Server, kafka_broker: KafkaServer, bucket: str, tmp_path: Path
) -> None:
    client = s3_server.client()
    keys = [f"lib/{i:04d} 视频 a+b.mp4" for i in range(1200)] + ["lib/poster.jpg"]
    schema = "Bucket, Key, Size, LastModifiedDate, ETag, IsLatest, IsDeleteMarker"
    rows = [
        [bucket, urllib.parse.quote_plus(key, safe="/"), "1", "2026-11-20T10:00:00.000Z", "e", "true", "false"]
        for key in keys
    ]
    rows += [
        [bucket, "lib/old.mp4", "1", "2026-11-20T10:00:00.000Z", "e", "false", "false"],
        [bucket, "lib/deleted.mp4", "", "2026-11-21T10:00:00.000Z", "", "true", "true"],
        [bucket, "lib/before.mp4", "1", "2026-10-01T10:00:00.000Z", "e", "true", "false"],
    ]
    uri = _inventory(client, bucket, rows, files=3, schema=schema)
    topic = _topic(kafka_broker)
    run = _enqueue(s3_server, "--from-manifest", uri, "--since", "2026-11-01", "--topic", topic, broker=kafka_broker)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"enqueued to {topic} 1200 of 1202 objects (3 data files; skipped: 1 not "
        "videos, 1 older than --since, 2 not current)"
    )
    values = _records(kafka_broker, topic, 1200)
    assert sorted(v["key"] for v in values) == keys[:1200]
    # Resumed from a marker in the second data file: the first file and that file's first 100 rows are done.
    marker = tmp_path / "inventory.json"
    write_marker(marker, uri, [1, 100], False, Stats())
    resumed = _enqueue(s3_server, "--from-manifest", uri, "--marker", str(marker), "--dry-run")
    assert resumed.returncode == 0, resumed.stderr
    rest = [urllib.parse.unquote_plus(row[1]) for row in rows[1::3][100:] + rows[2::3] if row[5:] == ["true", "false"]]
    assert [json.loads(line)["key"] for line in resumed.stdout.splitlines()] == [k for k in rest if is_video(k)]
    undated = _inventory(client, bucket, rows, files=1, schema="Bucket, Key", name="undated")
    run = _enqueue(s3_server, "--from-manifest", undated, "--since", "2026-11-01", "--dry-run")
    assert run.returncode == 1 and "--since needs the LastModifiedDate column" in run.stderr
    # A data file that is not the one the manifest describes (a partial copy) stops the run, in one line.
    client.put_object(Bucket=bucket, Key=f"inventory/{bucket}/daily/data/0001.csv.gz", Body=gzip.compress(b""))
    bad = _enqueue(s3_server, "--from-manifest", uri, "--dry-run")
    assert bad.returncode == 1 and bad.stderr.strip().endswith(
        "MD5 differs from the manifest's (a partial or replaced data file)"
    ), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    orc = _enqueue(s3_server, "--from-manifest", uri.replace("manifest.json", "x.json"), "--dry-run")
    assert orc.returncode == 1 and "expected the URI of an S3 Inventory manifest.json" in orc.stderr


def test_backfill_usage_errors(s3_server: S3Server) -> None:
    for args, message in [
        (["--from-s3", "s3://b/", "k.mp4", "--bucket", "bkt"], "give one of"),
        (["--from-s3", "s3://b/", "--rate", "fast"], "--rate fast"),
        (["--from-s3", "b/uploads"], "expected s3://BUCKET/"),
    ]:
        run = _enqueue(s3_server, *args, "--dry-run")
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
    missing = _enqueue(s3_server, "--from-s3", f"s3://{unique_name('none')}/", "--dry-run")
    assert missing.returncode == 1 and "NoSuchBucket" in missing.stderr, missing.stderr


def test_requests_the_broker_refused_are_never_marked_done(
    s3_server: S3Server, filled: tuple[str, datetime], tmp_path: Path, monkeypatch
) -> None:
    """flush() returns whether or not the records were taken: the marker stays at the last batch whose every
    send succeeded, and the run stops saying so (a fake producer; the listing is the real one)."""
    from worker.commands import backfill as module

    class Future:
        def __init__(self, error: Exception | None) -> None:
            self.exception = error

        def failed(self) -> bool:
            return self.exception is not None

    class Producer:
        sent = 0

        def send(self, topic: str, key: bytes, value: bytes) -> Future:
            Producer.sent += 1
            return Future(RuntimeError("KafkaTimeoutError") if Producer.sent == 2 * BATCH + 5 else None)

        def flush(self) -> None: ...

        def close(self) -> None: ...

    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(module.kafka_clients, "producer", lambda settings: Producer())
    bucket, _ = filled
    settings = load_settings(env={}, overrides={"s3_endpoint_url": s3_server.endpoint_url})
    marker = tmp_path / "m.json"
    options = module.Options(f"s3://{bucket}/uploads/a/", manifest=False, marker=marker, quiet=True)
    with pytest.raises(BackfillError, match=r"refused 1 of 100 records .*the marker holds the last ack") as e:
        module.backfill(settings, options, "t", io.StringIO())
    assert f"({VIDEOS[2 * BATCH + 4]}): RuntimeError('KafkaTimeoutError')" in str(e.value)  # the refused key
    state = json.loads(marker.read_text(encoding="utf-8"))
    assert (state["position"], state["enqueued"], state["complete"]) == (VIDEOS[2 * BATCH - 1], 2 * BATCH, False)


def test_plain_enqueue_and_dlq_replay_report_what_the_broker_refused(
    kafka_broker: KafkaServer, s3_server: S3Server
) -> None:
    """A request the broker will not take (here: larger than its topic's max.message.bytes) is an error naming it,
    exit 1, not a silent loss; what fits is still enqueued. The same for a DLQ replay."""
    small = unique_name("small")
    kafka_broker.create_topics([small], config={"max.message.bytes": "400"})
    too_long = "uploads/" + "x" * 500 + ".mp4"
    invalid = _enqueue(s3_server, "--topic", small, "--bucket", "b", "uploads/v.mp4", broker=kafka_broker)
    assert invalid.returncode == 2 and invalid.stderr.strip().splitlines() == [
        "videotag enqueue: invalid request: bucket: 'b' is too short"
    ]  # checked before anything is sent
    refused = _enqueue(s3_server, "--topic", small, "--bucket", "bkt", too_long, broker=kafka_broker)
    assert refused.returncode == 1, refused.stderr
    assert f"the broker refused 1 of 1 records ({too_long})" in refused.stderr and refused.stdout == ""
    fits = _enqueue(s3_server, "--topic", small, "--bucket", "bkt", "uploads/v.mp4", broker=kafka_broker)
    assert fits.returncode == 0, fits.stderr
    assert [v["key"] for v in _records(kafka_broker, small, 1)] == ["uploads/v.mp4"]

    dlq = unique_name("dlq")
    kafka_broker.create_topics([dlq])
    dead = {"original": {"encoding": "utf-8", "value": json.dumps(request_message("bkt", too_long))}}
    produce(kafka_broker.bootstrap_servers, dlq, [json.dumps(dead).encode()], keys=[too_long.encode()])
    replay = _enqueue(s3_server, "--topic", small, "--dlq-topic", dlq, "--from-dlq", broker=kafka_broker)
    assert replay.returncode == 1, replay.stderr
    assert f"the broker refused 1 of 1 records ({dlq}[0]@0)" in replay.stderr
    assert _end_offsets(kafka_broker, small) == 1  # nothing more
