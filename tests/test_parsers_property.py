"""Hostile input: property tests of the request parser, and a corpus of bad videos through the decoder and
through a real worker.

The parser contract (worker/messages.py): any message either parses into VideoRequests whose fields are
strings, or raises models.errors.InputError with one of a fixed set of codes; never anything else, since an
exception escaping the consumer loop would crash every worker that receives the message in turn. Each input
shape (request, S3 and MinIO events, s3:TestEvent, EventBridge, SNS-wrapped) has its own properties.

The corpus is generated under tests/data/bad/ at test time (gitignored), never committed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from models.errors import InputError
from worker.local.demo import encode_clip
from worker.messages import MAX_MESSAGE_BYTES, VideoRequest, parse_request

ROOT = Path(__file__).resolve().parents[1]
BAD_DIR = ROOT / "tests" / "data" / "bad"
PARSER_CODES = {"invalid_json", "schema_violation", "message_too_large", "too_many_records", "bucket_not_allowed"}
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(value: bytes | None, video_id_from: str = "key", **options) -> list[VideoRequest] | None:
    """The parser contract; returns the requests, or None when the message was rejected."""
    try:
        requests = parse_request(value, video_id_from, **options)
    except InputError as exc:
        assert exc.code in PARSER_CODES, exc.code
        assert isinstance(exc.message, str) and len(exc.message) <= 1000, len(exc.message)
        return None
    assert isinstance(requests, list)
    for request in requests:
        assert isinstance(request, VideoRequest)
        for text in (request.video_id, request.bucket, request.key):
            assert isinstance(text, str) and text
        assert request.trace_id is None or isinstance(request.trace_id, str)
        assert request.submitted_at is None or isinstance(request.submitted_at, str)
        assert isinstance(request.attributes, dict)
    return requests


# strategies -----------------------------------------------------------------------------------------------

PATH_LIKE = [
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "./x.mp4",
    "a/../../b",
    "a\x00b",
    "\x00",
    "C:\\x\\y",
    "~/.ssh/id_rsa",
    "%2e%2e%2f",
    "..%2F..%2Fx",
    "a//b",
    "/",
    "\u202egpj.mp4",
    "\ud800",
    "\udfff\ud800",
    "x" * 5000,
    "\n",
    " ",
    "a\\..\\b",
    "file:///etc/passwd",
    "s3://other/key",
]
# NaN and Infinity are not JSON (RFC 8259): parse_request refuses them (tests/test_messages.py).
finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)
field_values = st.one_of(
    st.text(),
    st.sampled_from(PATH_LIKE),
    st.builds(lambda a, b: a + b, st.sampled_from(PATH_LIKE), st.text(max_size=20)),
    json_values,
)
bucket_names = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True), field_values)


@st.composite
def requests_like(draw: st.DrawFn) -> dict:
    document = {"video_id": draw(field_values), "bucket": draw(bucket_names), "key": draw(field_values)}
    for name in ("submitted_at", "trace_id", "attributes"):
        if draw(st.booleans()):
            document[name] = draw(st.one_of(json_values, st.just("2026-11-24T10:00:00Z")))
    for name in draw(
        st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["video_id", "Records", "../x"])), max_size=2)
    ):
        document[name] = draw(json_values)
    for name in draw(st.lists(st.sampled_from(["video_id", "bucket", "key"]), max_size=2)):
        document.pop(name, None)
    return document


@st.composite
def s3_events(draw: st.DrawFn) -> dict:
    def record() -> object:
        if draw(st.integers(0, 4)) == 0:
            return draw(json_values)
        s3 = {"bucket": {"name": draw(bucket_names)}, "object": {"key": draw(field_values)}}
        if draw(st.integers(0, 4)) == 0:
            s3 = draw(json_values)
        out = {"s3": s3}
        if draw(st.booleans()):
            out["eventName"] = draw(
                st.one_of(
                    st.sampled_from(["ObjectCreated:Put", "s3:ObjectCreated:Post", "ObjectRemoved:Delete", ""]),
                    json_values,
                )
            )
        return out

    records = [record() for _ in range(draw(st.integers(0, 4)))]
    return {"Records": draw(st.one_of(st.just(records), json_values))}


@st.composite
def eventbridge_events(draw: st.DrawFn) -> dict:
    detail: object = {"bucket": {"name": draw(bucket_names)}, "object": {"key": draw(field_values)}}
    if draw(st.integers(0, 4)) == 0:
        detail = draw(json_values)
    kind = draw(
        st.one_of(st.sampled_from(["Object Created", "Object Deleted", "Object Restore Completed"]), json_values)
    )
    return {"version": "0", "source": "aws.s3", "detail-type": kind, "detail": detail}


test_events = st.builds(
    lambda extra: {**extra, "Event": "s3:TestEvent"},
    st.dictionaries(st.text(max_size=10).filter(lambda k: k != "Records"), json_values, max_size=4),
)


def sns(inner: object) -> dict:
    return {"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:uploads", "Message": json.dumps(inner)}


def outcome(value: bytes, video_id_from: str = "key", **options) -> object:
    """The requests a message yields, or the code it is refused with."""
    try:
        return parse_request(value, video_id_from, **options)
    except InputError as exc:
        return exc.code


def encode(document: object, ensure_ascii: bool) -> bytes:
    # Lone surrogates cannot be UTF-8: surrogatepass makes the invalid bytes a hostile producer could send.
    return json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


# properties -----------------------------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\xff\xfe{}")
@example(b"\xef\xbb\xbf{}")  # a UTF-8 byte-order mark
@example(b"NaN")
@example(b"1e999999")
@example(b'{"video_id": "v", "bucket": "abc", "key": "k", "video_id": 5}')
def test_random_bytes(value: bytes) -> None:
    check(value)


@PROPERTY
@given(json_values, st.booleans())
def test_any_json_value(document: object, ensure_ascii: bool) -> None:
    check(encode(document, ensure_ascii))


@PROPERTY
@given(requests_like(), st.booleans())
def test_request_shaped_documents(document: dict, ensure_ascii: bool) -> None:
    requests = check(encode(document, ensure_ascii))
    if requests is not None:
        [request] = requests
        assert (request.video_id, request.bucket, request.key) == (
            document["video_id"],
            document["bucket"],
            document["key"],
        )


@PROPERTY
@given(s3_events(), st.sampled_from(["key", "bucket_key"]), st.booleans())
def test_s3_event_shaped_documents(document: dict, video_id_from: str, ensure_ascii: bool) -> None:
    requests = check(encode(document, ensure_ascii), video_id_from)
    if requests:
        for request in requests:
            assert request.key in {urllib.parse.unquote_plus(r["s3"]["object"]["key"]) for r in document["Records"]}
            expected = request.key if video_id_from == "key" else f"{request.bucket}/{request.key}"
            assert request.video_id == expected


@PROPERTY
@given(eventbridge_events(), st.sampled_from(["key", "bucket_key"]), st.booleans())
def test_eventbridge_shaped_documents(document: dict, video_id_from: str, ensure_ascii: bool) -> None:
    requests = check(encode(document, ensure_ascii), video_id_from)
    if requests:
        [request] = requests
        assert document["detail-type"] == "Object Created"
        assert request.key == document["detail"]["object"]["key"]  # as sent: EventBridge does not URL-encode
        assert request.bucket == document["detail"]["bucket"]["name"]
        assert request.video_id == (request.key if video_id_from == "key" else f"{request.bucket}/{request.key}")


@PROPERTY
@given(test_events, st.booleans())
def test_s3_test_events_yield_nothing(document: dict, ensure_ascii: bool) -> None:
    assert check(encode(document, ensure_ascii)) in ([], None)
    if ensure_ascii:  # valid UTF-8 whatever the extra fields hold: always skipped, never dead-lettered
        assert check(encode(document, ensure_ascii)) == []


@PROPERTY
@given(
    st.one_of(s3_events(), eventbridge_events(), test_events, requests_like()),
    st.sampled_from(["key", "bucket_key"]),
    st.booleans(),
)
def test_sns_wrapped_documents_are_their_message(inner: dict, video_id_from: str, ensure_ascii: bool) -> None:
    """An SNS notification yields what its Message would yield sent as it is (SNS escapes it as JSON text)."""
    assert outcome(encode(sns(inner), ensure_ascii), video_id_from) == outcome(encode(inner, True), video_id_from)


@PROPERTY
@given(s3_events(), st.text(max_size=30), st.booleans())
def test_minio_events_are_s3_events(document: dict, key: str, ensure_ascii: bool) -> None:
    """MinIO adds EventName and Key beside the Records; they change nothing."""
    minio = {"EventName": "s3:ObjectCreated:Put", "Key": key, **document}
    assert outcome(encode(minio, ensure_ascii)) == outcome(encode(document, ensure_ascii))


@PROPERTY
@given(st.integers(1, 40), st.integers(1, 40), st.booleans())
def test_records_per_message_are_capped(records: int, cap: int, wrapped: bool) -> None:
    document: dict = {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "uploads"}, "object": {"key": f"v{i}.mp4"}}}
            for i in range(records)
        ]
    }
    got = outcome(encode(sns(document) if wrapped else document, True), max_records=cap)
    assert got == "too_many_records" if records > cap else len(got) == records


@PROPERTY
@given(st.one_of(requests_like(), s3_events(), eventbridge_events()), st.data(), st.booleans())
def test_allowed_buckets_refuse_every_other_bucket(document: dict, data: st.DataObject, ensure_ascii: bool) -> None:
    value = encode(document, ensure_ascii)
    anywhere = outcome(value)
    named = sorted({request.bucket for request in anywhere}) if isinstance(anywhere, list) else []
    allowed = frozenset(data.draw(st.lists(st.sampled_from(named), max_size=3)) if named else []) | data.draw(
        st.frozensets(st.text(max_size=8), max_size=2)
    )
    limited = outcome(value, allowed_buckets=allowed)
    if isinstance(anywhere, str) or set(named) <= allowed:  # refused anyway, for the same reason; or all allowed
        assert limited == anywhere
    else:
        assert limited == "bucket_not_allowed"


@PROPERTY
@given(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True),
    st.text(min_size=1, max_size=200),
    st.text(min_size=1, max_size=200),
    st.dictionaries(st.text(), json_values, max_size=3),
    st.booleans(),
)
def test_valid_requests_round_trip(bucket: str, key: str, video_id: str, attributes: dict, ascii_: bool) -> None:
    document = {"video_id": video_id, "bucket": bucket, "key": key, "attributes": attributes}
    try:
        value = json.dumps(document, ensure_ascii=ascii_).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only the \\u escape can carry it
        value = json.dumps(document).encode("utf-8")
    [request] = check(value) or [None]
    assert request == VideoRequest(video_id=video_id, bucket=bucket, key=key, attributes=attributes)


# explicit shapes: size, nesting --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1, 16 << 20])
def test_huge_messages(size: int) -> None:
    head = b'{"video_id": "v", "bucket": "abc", "key": "k"'  # padded with JSON white space (attributes are capped)
    value = head + b" " * max(0, size - len(head) - 1) + b"}"
    started = time.perf_counter()
    requests = check(value)
    assert time.perf_counter() - started < 5
    assert (requests is None) == (len(value) > MAX_MESSAGE_BYTES)


NESTED_SHAPES = {
    "root": lambda d: b"[" * d + b"]" * d,
    "video_id": lambda d: b'{"video_id": ' + b"[" * d + b"]" * d + b', "bucket": "abc", "key": "k"}',
    "bucket_object": lambda d: b'{"video_id": "v", "bucket": ' + b'{"a": ' * d + b"1" + b"}" * d + b', "key": "k"}',
    "attributes": lambda d: (
        b'{"video_id": "v", "bucket": "abc", "key": "k", "attributes": {"a": ' + b"[" * d + b"]" * d + b"}}"
    ),
    "unknown_field": lambda d: b'{"video_id": "v", "bucket": "abc", "key": "k", "x": ' + b"[" * d + b"]" * d + b"}",
    "event_name": lambda d: (
        b'{"Records": [{"eventName": '
        + b"[" * d
        + b"]" * d
        + b', "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}'
    ),
    "event_s3": lambda d: b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": ' + b"[" * d + b"]" * d + b"}]}",
}


@PROPERTY
@given(st.sampled_from(sorted(NESTED_SHAPES)), st.one_of(st.integers(1, 500), st.integers(1200, 200_000)))
def test_deep_nesting(shape: str, depth: int) -> None:
    check(NESTED_SHAPES[shape](depth))


def _json_depth_limit(shape: str) -> int:
    """The deepest nesting json.loads accepts from this call depth (it depends on the interpreter's stack)."""
    low, high = 1, 5000
    while low < high:
        mid = (low + high + 1) // 2
        try:
            json.loads(NESTED_SHAPES[shape](mid))
            low = mid
        except RecursionError:
            high = mid - 1
    return low


@pytest.mark.parametrize("shape", sorted(NESTED_SHAPES))
def test_nesting_just_below_the_decoders_limit(shape: str) -> None:
    """Documents that json.loads still accepts, nested just below its limit: what follows must not recurse
    deeper (jsonschema formatting the offending value did, and raised RecursionError)."""
    limit = _json_depth_limit(shape)
    failures = {}
    for depth in range(max(1, limit - 60), limit + 3):
        try:
            check(NESTED_SHAPES[shape](depth))
        except RecursionError:
            failures[depth] = "RecursionError"
    assert failures == {}


def test_the_worker_dead_letters_what_it_could_never_answer() -> None:
    """Whatever escapes or slips through the parser, the worker's consumer loop turns into a dead letter: a
    RecursionError would crash every worker in turn, and a lone surrogate or an attributes value nested near
    the recursion limit would fail to serialise and be retried for ever."""
    from types import SimpleNamespace

    from worker.settings import Settings
    from worker.worker import Worker

    limit = _json_depth_limit("video_id")
    values = [NESTED_SHAPES["video_id"](depth) for depth in range(max(1, limit - 60), limit + 3)]
    values += [NESTED_SHAPES["attributes"](depth) for depth in (65, 500, limit - 5)]
    values += [
        b'{"video_id": "\\ud800", "bucket": "abc", "key": "k"}',
        b'{"video_id": "v", "bucket": "abc", "key": "k", "trace_id": "\\udc00"}',
        b'{"Records": [{"eventName": "ObjectCreated:Put", '
        b'"s3": {"bucket": {"name": "b"}, "object": {"key": "\\udfff"}}}]}',
    ]
    worker = Worker(Settings())
    try:
        for offset, value in enumerate(values):
            worker._accept(
                SimpleNamespace(topic="t", partition=0, offset=offset, timestamp=0, key=None, value=value, headers=[])
            )
        codes = [job.error.code if job.error else None for job in worker._backlog]
    finally:
        worker._executor.shutdown()
    assert len(codes) == len(values)
    assert set(codes) <= {"invalid_json", "schema_violation"}, codes
    assert codes[-3:] == ["schema_violation"] * 3
    shallow = NESTED_SHAPES["attributes"](63)  # {"a": [[...]]}: 64 levels with the attributes object
    worker = Worker(Settings())
    try:
        worker._accept(
            SimpleNamespace(topic="t", partition=0, offset=0, timestamp=0, key=None, value=shallow, headers=[])
        )
        assert worker._backlog[0].error is None  # 64 levels are still fine
    finally:
        worker._executor.shutdown()


# the bad-video corpus -------------------------------------------------------------------------------------


def _liar_avi(source: Path, dest: Path, frames: int) -> Path:
    """An MJPEG AVI whose headers (avih dwTotalFrames, strh dwLength) declare `frames` frames."""
    data = bytearray(source.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    assert avih > 0 and strh > 0
    data[avih + 8 + 16 : avih + 8 + 20] = frames.to_bytes(4, "little")
    data[strh + 8 + 32 : strh + 8 + 36] = frames.to_bytes(4, "little")
    dest.write_bytes(bytes(data))
    return dest


# name → outcome of in-process decoding (an error code, or "result")
CORPUS = {
    "giant-declared.y4m": "resolution_too_large",  # 12000x12000 in the header, 1 KB of data
    "wide.mp4": "resolution_too_large",  # a real 7696x16 H.264 stream
    "tall.mp4": "resolution_too_large",  # 16x7696
    "many-tiny-frames.mp4": "result",  # 16x16 at 1000 fps, 30 000 frames
    "liar-frame-count.avi": "result",  # 10 real frames, 100 000 000 declared
    "empty.mp4": "empty_file",
    "text.mp4": "not_a_video",
    "truncated.mp4": "corrupt_video",
}


@pytest.fixture(scope="module")
def corpus() -> dict[str, Path]:
    BAD_DIR.mkdir(parents=True, exist_ok=True)
    files = {name: BAD_DIR / name for name in CORPUS}
    files["giant-declared.y4m"].write_bytes(b"YUV4MPEG2 W12000 H12000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 1024)
    for name, size in (("wide.mp4", "7696x16"), ("tall.mp4", "16x7696")):
        encode_clip(f"testsrc2=size={size}:rate=1", 1, files[name])
    encode_clip("testsrc2=size=16x16:rate=1000", 30, files["many-tiny-frames.mp4"])
    honest = encode_clip(
        "testsrc2=size=16x16:rate=10", 1, BAD_DIR / "honest.avi", codec=("-c:v", "mjpeg", "-pix_fmt", "yuvj420p")
    )
    _liar_avi(honest, files["liar-frame-count.avi"], 100_000_000)
    honest.unlink()
    files["empty.mp4"].write_bytes(b"")
    files["text.mp4"].write_text("not a video\n" * 100)
    files["truncated.mp4"].write_bytes(files["many-tiny-frames.mp4"].read_bytes()[:4096])
    return files


READ_ALL = r"""
import json, resource, sys, time
from models.errors import InputError
from models.video import InProcessDecoder

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

decode = InProcessDecoder("faithful", 256, 224, 7680, 4320)
base = peak_kib()
out = {}
for path in sys.argv[1:]:
    started = time.perf_counter()
    try:
        video = decode(path, 4)
        outcome = {"outcome": "result", "decoded": video.frames_decoded, "reported": video.frames_reported}
    except InputError as exc:
        outcome = {"outcome": exc.code}
    outcome |= {"seconds": time.perf_counter() - started, "peak_kib": peak_kib()}
    out[path] = outcome
print(json.dumps({"base_kib": base, "files": out}))
"""


def test_bad_corpus_through_in_process_decoding(corpus: dict[str, Path], tmp_path: Path) -> None:
    """Each file ends with a stable code or a normal result, in bounded time and memory, writing nothing."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-c", READ_ALL, *map(str, corpus.values())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(run.stdout.strip().splitlines()[-1])
    base = report["base_kib"]
    for name, path in corpus.items():
        got = report["files"][str(path)]
        print(
            f"decoded {name}: {got['outcome']} in {got['seconds']:.2f} s, peak RSS "
            f"+{(got['peak_kib'] - base) / 1024:.0f} MiB"
        )
        assert got["outcome"] == CORPUS[name], (name, got)
        assert got["seconds"] < 60, (name, got)
    assert (max(f["peak_kib"] for f in report["files"].values()) - base) < 256 * 1024  # never a giant frame
    assert report["files"][str(corpus["many-tiny-frames.mp4"])]["decoded"] == 30_000
    liar = report["files"][str(corpus["liar-frame-count.avi"])]
    assert (liar["decoded"], liar["reported"]) == (10, 100_000_000)
    assert list(tmp_path.iterdir()) == []


# the same corpus and hostile messages through a worker process -------------------------------------------


@pytest.fixture
def big_topics(kafka_broker):
    """As `topics`, but the input topic takes records of up to 4 MiB (Kafka's default is 1 MiB): the test sends
    messages larger than the worker accepts, to see them dead-lettered rather than refused by the broker."""
    from tests.kafka_helpers import Topics, unique_name

    names = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"))
    kafka_broker.create_topics([names.input], partitions=3, config={"max.message.bytes": str(4 << 20)})
    kafka_broker.create_topics([names.output, names.dlq])
    return names


@pytest.fixture
def bad_worker(tmp_path: Path, kafka_broker, s3_server, big_topics, unique_group_id) -> Iterator:
    from tests.integration.worker_process import WorkerProcess

    worker = WorkerProcess(
        tmp_path,
        kafka_broker,
        s3_server,
        big_topics,
        unique_group_id,
        seg_num="2",
        max_object_bytes="1000000",
        retry_backoff_base_s="0.2",
        retry_backoff_max_s="1",
    )
    try:
        yield worker
    finally:
        worker.close()


def _request(video_id: str, bucket: str, key: str) -> bytes:
    return json.dumps({"video_id": video_id, "bucket": bucket, "key": key}).encode()


@pytest.mark.integration
def test_hostile_inputs_through_a_worker(
    bad_worker, corpus: dict[str, Path], kafka_broker, s3_server, big_topics, bucket: str, tmp_path: Path
) -> None:
    """Every hostile message and object ends with a result or a dead letter with a stable code; the worker
    never dies, holds bounded memory, leaves its temp dir empty and writes no file named by a key."""
    from kafka import KafkaProducer

    from tests.fault.helpers import AnswerCollector

    client = s3_server.client()
    for name, path in corpus.items():
        client.upload_file(str(path), bucket, f"bad/{name}")
    client.put_object(Bucket=bucket, Key="bad/oversize.mp4", Body=os.urandom(1_200_000))
    marker = f"pwned-{uuid.uuid4().hex[:8]}"
    plan: list[tuple[str, bytes, set[str]]] = []  # (Kafka key, value, acceptable outcomes)
    for name, outcome in CORPUS.items():
        plan.append((f"corpus-{name}", _request(f"corpus-{name}", bucket, f"bad/{name}"), {outcome}))
    plan.append(("oversize", _request("oversize", bucket, "bad/oversize.mp4"), {"object_too_large"}))
    for i, key in enumerate(
        [
            f"../../{marker}",
            f"/tmp/{marker}",
            f"a/../{marker}",
            "..",
            ".",
            "a\x00b",
            f"..\\..\\{marker}",
            f"%2e%2e/{marker}",
        ]
    ):
        plan.append((f"path-{i}", _request(f"path-{i}", bucket, key), {"no_such_key", "invalid_request"}))
    plan.append(
        (
            "surrogate-id",
            b'{"video_id": "\\ud800", "bucket": "' + bucket.encode() + b'", "key": "k"}',
            {"schema_violation"},
        )
    )
    plan.append(
        (
            "surrogate-key",
            b'{"video_id": "s", "bucket": "' + bucket.encode() + b'", "key": "\\udfff"}',
            {"schema_violation"},
        )
    )
    plan.append(
        ("surrogate-attr", _request("x", bucket, "k")[:-1] + b', "attributes": {"\\ud800": 1}}', {"schema_violation"})
    )
    for depth in range(850, 1001, 3):  # covers the window where json.loads passes and jsonschema recursed
        plan.append((f"nested-{depth}", NESTED_SHAPES["video_id"](depth), {"invalid_json", "schema_violation"}))
    for depth in range(900, 1001, 4):  # deep attributes on a real video: the result echoes them
        value = (
            b'{"video_id": "attrs-%d", "bucket": "%s", "key": "bad/liar-frame-count.avi", "attributes": {"a": '
            % (depth, bucket.encode())
            + b"[" * depth
            + b"]" * depth
            + b"}}"
        )
        plan.append((f"attrs-{depth}", value, {"result", "invalid_json"}))
    plan.append(
        ("huge", b'{"video_id": "huge", "pad": "' + b"x" * (MAX_MESSAGE_BYTES + 10) + b'"}', {"message_too_large"})
    )
    plan.append(("binary", os.urandom(64) + b"\xff", {"invalid_json"}))
    plan.append(("binary-big", b"\xff" + os.urandom(900_000), {"invalid_json"}))  # base64 grows it past 1 MiB
    plan.append(("escapes-big", b"\x01" * 900_000, {"invalid_json"}))  # JSON escapes grow it six-fold
    plan.append(("tombstone", None, {"invalid_json"}))  # type: ignore[arg-type]
    plan.append(("good", _request("good", bucket, "bad/many-tiny-frames.mp4"), {"result"}))

    bad_worker.wait_ready()
    hwm_before = _vm_hwm_kib(bad_worker.process.pid)
    collector = AnswerCollector(kafka_broker.bootstrap_servers, big_topics)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all", max_request_size=4 << 20)
    try:
        sent = [producer.send(big_topics.input, key=key.encode(), value=value) for key, value, _ in plan]
        producer.flush(30)
        for future in sent:
            future.get(timeout=30)  # the broker took every message
        missing = collector.wait_for({key for key, _, _ in plan}, timeout=120)
        answers = collector.by_id()
    finally:
        producer.close()
        collector.close()
    alive = bad_worker.process.poll() is None
    hwm_after = _vm_hwm_kib(bad_worker.process.pid) if alive else 0
    outcomes = {
        key: sorted({a.kind if a.kind == "result" else a.code for a in answers.get(key, [])}) for key, _, _ in plan
    }
    print(
        f"\nhostile inputs through a worker: {len(plan)} messages, unanswered {sorted(missing)}, worker "
        f"alive {alive}, peak RSS {hwm_before / 1024:.0f} -> {hwm_after / 1024:.0f} MiB"
    )
    log_tail = bad_worker.log()[-3000:]
    assert alive, f"the worker died:\n{log_tail}"
    assert missing == set(), f"unanswered (retried forever?): {sorted(missing)}\n{log_tail}"
    wrong = {key: outcomes[key] for key, _, ok in plan if len(outcomes[key]) != 1 or outcomes[key][0] not in ok}
    assert wrong == {}, wrong
    # Dead letters too large to publish whole keep a prefix of the original, flagged.
    for key in ("huge", "binary-big", "escapes-big"):
        [letter] = answers[key]
        assert letter.value["original"].get("truncated") is True, key
    assert hwm_after - hwm_before < 512 * 1024, "peak memory grew by more than 512 MiB"
    assert list(bad_worker.temp_dir.iterdir()) == []
    # Where a key joined to a local path would land: the worker's temp dir and cwd, their parents, /tmp, /.
    places = {bad_worker.temp_dir, *bad_worker.temp_dir.parents, ROOT, *ROOT.parents, Path("/tmp")}
    written = [*tmp_path.rglob(f"{marker}*"), *(p for place in places for p in place.glob(f"{marker}*"))]
    assert written == []


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
