"""The message contract: request parsing, S3 events, result and DLQ records."""

import json

import jsonschema
import pytest

from models.errors import InputError
from worker import messages
from worker.messages import dlq_message, original_value, parse_request, request_message, result_message


def _request(**fields):
    return json.dumps({"video_id": "v1", "bucket": "videos", "key": "a/b.mp4", **fields}).encode()


def test_valid_request_with_optional_fields():
    [req] = parse_request(_request(trace_id="t-1", attributes={"user": 7}, submitted_at="2026-01-01T00:00:00Z"))
    assert (req.video_id, req.bucket, req.key, req.trace_id, req.attributes) == (
        "v1",
        "videos",
        "a/b.mp4",
        "t-1",
        {"user": 7},
    )


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (None, "invalid_json"),
        (b"[1, 2]", "schema_violation"),
        (b'{"video_id": "v", "bucket": "abc", "key": "k", "attributes": {"x": NaN}}', "invalid_json"),
        (b'{"video_id": "v"}', "schema_violation"),
        (_request(video_id=5), "schema_violation"),
        (_request(bucket="UPPER_case"), "schema_violation"),
        (_request(unknown_field=1), "schema_violation"),
        (_request(attributes="not an object"), "schema_violation"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b" " * (messages.MAX_MESSAGE_BYTES + 1), "message_too_large"),
    ],
)
def test_bad_requests_have_stable_codes(value, code):
    with pytest.raises(InputError) as info:
        parse_request(value)
    assert info.value.code == code


def _s3_event(*keys, event="ObjectCreated:Put", bucket="uploads"):
    records = [{"eventName": event, "s3": {"bucket": {"name": bucket}, "object": {"key": k, "size": 10}}} for k in keys]
    return json.dumps({"EventName": "s3:" + event, "Key": "ignored", "Records": records}).encode()


def test_s3_event_with_several_records_and_url_encoded_keys():
    reqs = parse_request(_s3_event("clips/my+video%C3%A9.mp4", "b.mp4"))
    assert [(r.bucket, r.key, r.video_id) for r in reqs] == [
        ("uploads", "clips/my videoé.mp4", "clips/my videoé.mp4"),
        ("uploads", "b.mp4", "b.mp4"),
    ]


def test_s3_event_video_id_can_include_bucket():
    [req] = parse_request(_s3_event("x.mp4"), video_id_from="bucket_key")
    assert req.video_id == "uploads/x.mp4"


def test_s3_event_minio_style_event_names_and_deletions():
    assert parse_request(_s3_event("x.mp4", event="s3:ObjectCreated:Put"))[0].key == "x.mp4"
    assert parse_request(_s3_event("x.mp4", event="ObjectRemoved:Delete")) == []


@pytest.mark.parametrize(
    "doc",
    [
        {"Records": []},
        {"Records": [{"s3": {}}]},
        {"Records": "x"},
        {"Records": [{"s3": {"bucket": {"name": 1}, "object": {"key": "k"}}}]},
    ],
)
def test_malformed_s3_events(doc):
    with pytest.raises(InputError) as info:
        parse_request(json.dumps(doc).encode())
    assert info.value.code == "schema_violation"


def test_result_and_request_messages_follow_their_schemas():
    [req] = parse_request(_request(trace_id="t", attributes={"a": 1}))
    tags = [{"class_id": 3, "class_name": "猫", "probability": 0.9}]
    mine = [{"class_id": 0, "class_name": "cats", "probability": 0.7}]
    result = result_message(
        req,
        {"videotag": tags, "mine": mine},
        {"extractor": "e", "predictor": "p", "weights": "sha256:0"},
        {"fetch": 1.0, "decode": 2.0, "extract": 3.0, "predict": 4.0, "total": 10.0},
        {"decoded": 5},
        "s3://features/v/k.npy",
    )
    jsonschema.validate(result, messages.schema("result"))
    assert result["attributes"] == {"a": 1} and result["trace_id"] == "t"
    assert result["tags"] == tags and result["heads"] == {"videotag": tags, "mine": mine}
    assert result["features_uri"] == "s3://features/v/k.npy"
    bad = {**result, "heads": {"mine": [{"class_id": 0, "class_name": "cats", "probability": 1.5}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, messages.schema("result"))
    jsonschema.validate(request_message("videos", "k.mp4"), messages.schema("request"))
    with pytest.raises(ValueError):
        request_message("Bad_Bucket", "k.mp4")


@pytest.mark.parametrize("raw", [b'{"video_id": 1}', b"\x00\xff\xfe binary"])
def test_dlq_record_keeps_the_original_bytes(raw):
    record = dlq_message(raw, InputError("invalid_json", "bad"), 1, None, "t", 2, 9, b"k")
    jsonschema.validate(record, messages.schema("dlq"))
    assert original_value(json.loads(json.dumps(record))) == raw
    assert record["original"]["offset"] == 9 and record["error"]["code"] == "invalid_json"


# Every input shape, as AWS, MinIO and SNS send it -----------------------------------------------------------

S3_RECORD = {
    "eventVersion": "2.1",
    "eventSource": "aws:s3",
    "awsRegion": "us-east-1",
    "eventTime": "2026-11-24T10:00:00.000Z",
    "eventName": "ObjectCreated:Put",
    "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "videotag",
        "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
        "object": {"key": "2026/11/my+video%C3%A9.mp4", "size": 1048576, "sequencer": "0055AED6DCD90281E5"},
    },
}
S3_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2026-11-24T10:00:00.000Z",
    "Bucket": "uploads",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3e",
}
EVENTBRIDGE = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2026-11-24T10:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:s3:::uploads"],
    "detail": {
        "version": "0",
        "bucket": {"name": "uploads"},
        "object": {"key": "2026/11/my video+é.mp4", "size": 1048576, "etag": "b1946ac92492d2347c6235b4d2611184"},
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "111122223333",
        "reason": "PutObject",
    },
}
MINIO_EVENT = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "uploads/2026/11/my video.mp4",
    "Records": [
        {
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "eventName": "s3:ObjectCreated:Put",
            "s3": {
                "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
                "object": {"key": "2026%2F11%2Fmy+video.mp4", "size": 1048576, "contentType": "video/mp4"},
            },
            "source": {"host": "172.17.0.1", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.70"},
        }
    ],
}


def sns(inner: object) -> dict:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:111122223333:uploads",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(inner),
        "Timestamp": "2026-11-24T10:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.example/cert.pem",
    }


def _parse(document: object, **options) -> list[tuple[str, str, str]]:
    return [(r.bucket, r.key, r.video_id) for r in parse_request(json.dumps(document).encode(), **options)]


@pytest.mark.parametrize(
    ("document", "shape", "expected"),
    [
        ({"Records": [S3_RECORD]}, "s3_event", [("uploads", "2026/11/my videoé.mp4", "2026/11/my videoé.mp4")]),
        (MINIO_EVENT, "s3_event", [("uploads", "2026/11/my video.mp4", "2026/11/my video.mp4")]),
        (S3_TEST_EVENT, "s3_test_event", []),
        (EVENTBRIDGE, "eventbridge", [("uploads", "2026/11/my video+é.mp4", "2026/11/my video+é.mp4")]),  # as is
        ({**EVENTBRIDGE, "detail-type": "Object Deleted"}, "eventbridge", []),
        (sns({"Records": [S3_RECORD]}), "sns", [("uploads", "2026/11/my videoé.mp4", "2026/11/my videoé.mp4")]),
        (sns(S3_TEST_EVENT), "sns", []),
        (sns(EVENTBRIDGE), "sns", [("uploads", "2026/11/my video+é.mp4", "2026/11/my video+é.mp4")]),
        (sns({"video_id": "uploads/k", "bucket": "uploads", "key": "k"}), "sns", [("uploads", "k", "uploads/k")]),
    ],
)
def test_every_input_shape(document: dict, shape: str, expected: list) -> None:
    assert messages.message_shape(document) == shape
    assert _parse(document) == expected
    # (the wrapped request names its video_id "uploads/k" itself: the same under both settings)
    assert _parse(document, video_id_from="bucket_key") == [(b, k, f"{b}/{k}") for b, k, _ in expected]


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ({**EVENTBRIDGE, "detail": {"bucket": {"name": "uploads"}}}, "schema_violation"),
        ({**EVENTBRIDGE, "detail": {"bucket": {"name": ""}, "object": {"key": "k"}}}, "schema_violation"),
        ({**EVENTBRIDGE, "detail": "text"}, "schema_violation"),
        ({**sns({}), "Message": "{not json"}, "invalid_json"),
        ({**sns({}), "Message": "NaN"}, "invalid_json"),
        (sns(sns({"Records": [S3_RECORD]})), "schema_violation"),  # SNS does not wrap its own notifications
    ],
)
def test_malformed_events(document: dict, code: str) -> None:
    with pytest.raises(InputError) as info:
        _parse(document)
    assert info.value.code == code


def test_records_per_message_are_capped() -> None:
    records = {"Records": [S3_RECORD] * 3}
    assert len(_parse(records, max_records=3)) == 3
    with pytest.raises(InputError) as info:
        _parse(records, max_records=2)
    assert info.value.code == "too_many_records" and "3 records" in info.value.message
    with pytest.raises(InputError) as info:  # the cap counts records, deletions included
        _parse({"Records": [{**S3_RECORD, "eventName": "ObjectRemoved:Delete"}] * 3}, max_records=2)
    assert info.value.code == "too_many_records"
    with pytest.raises(InputError) as info:  # wrapped or not
        _parse(sns(records), max_records=2)
    assert info.value.code == "too_many_records"


@pytest.mark.parametrize(
    "document",
    [
        {"video_id": "v", "bucket": "uploads", "key": "k"},
        {"Records": [S3_RECORD]},
        EVENTBRIDGE,
        sns(EVENTBRIDGE),
        MINIO_EVENT,
    ],
)
def test_allowed_buckets(document: dict) -> None:
    assert _parse(document, allowed_buckets=frozenset({"uploads", "other"}))
    with pytest.raises(InputError) as info:
        _parse(document, allowed_buckets=frozenset({"other"}))
    assert info.value.code == "bucket_not_allowed" and "'uploads'" in info.value.message
    assert _parse(S3_TEST_EVENT, allowed_buckets=frozenset({"other"})) == []  # names no bucket to read


def test_one_bucket_outside_the_list_refuses_the_whole_event() -> None:
    elsewhere = {**S3_RECORD, "s3": {**S3_RECORD["s3"], "bucket": {"name": "elsewhere"}}}
    with pytest.raises(InputError) as info:
        _parse({"Records": [S3_RECORD, elsewhere]}, allowed_buckets=frozenset({"uploads"}))
    assert info.value.code == "bucket_not_allowed"


def test_a_message_without_videos_is_committable_at_once() -> None:
    """The worker starts no job for a test event and commits past it (with nothing before it unfinished)."""
    from types import SimpleNamespace

    from worker.settings import Settings
    from worker.worker import Worker

    worker = Worker(Settings())
    try:
        for offset, document in enumerate(
            [S3_TEST_EVENT, {"video_id": "v", "bucket": "uploads", "key": "k"}, sns(S3_TEST_EVENT)]
        ):
            worker._accept(
                SimpleNamespace(
                    topic="t",
                    partition=0,
                    offset=offset,
                    timestamp=0,
                    key=None,
                    headers=[],
                    value=json.dumps(document).encode(),
                )
            )
            if offset == 0:
                assert not worker._backlog and worker.tracker.to_commit() == {("t", 0): 1}
        assert len(worker._backlog) == 1
        assert worker.tracker.to_commit() == {("t", 0): 1}  # the request at offset 1 is not done
        job = worker._backlog.popleft()
        worker.tracker.finished(job.state, job.offset)
        assert worker.tracker.to_commit() == {("t", 0): 3}  # past both test events
    finally:
        worker._executor.shutdown()


def test_attributes_are_bounded_so_that_every_result_fits_a_record() -> None:
    from worker.messages import MAX_ATTRIBUTES_BYTES

    fits = {"note": "x" * (MAX_ATTRIBUTES_BYTES - 20)}
    [req] = parse_request(_request(attributes=fits))
    assert req.attributes == fits
    with pytest.raises(InputError) as refused:
        parse_request(_request(attributes={"note": "x" * 900_000}))
    assert refused.value.code == "schema_violation" and "65536" in str(refused.value)
    with pytest.raises(InputError):  # multi-byte characters count as their UTF-8 bytes
        parse_request(_request(attributes={"note": "视" * (MAX_ATTRIBUTES_BYTES // 3 + 10)}))
