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
    assert (req.video_id, req.bucket, req.key, req.trace_id, req.attributes) == ("v1", "videos", "a/b.mp4", "t-1",
                                                                               {"user": 7})


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


@pytest.mark.parametrize("doc", [{"Records": []}, {"Records": [{"s3": {}}]}, {"Records": "x"},
                                 {"Records": [{"s3": {"bucket": {"name": 1}, "object": {"key": "k"}}}]}])
def test_malformed_s3_events(doc):
    with pytest.raises(InputError) as info:
        parse_request(json.dumps(doc).encode())
    assert info.value.code == "schema_violation"


def test_result_and_request_messages_follow_their_schemas():
    [req] = parse_request(_request(trace_id="t", attributes={"a": 1}))
    tags = [{"class_id": 3, "class_name": "猫", "probability": 0.9}]
    mine = [{"class_id": 0, "class_name": "cats", "probability": 0.7}]
    result = result_message(req, {"videotag": tags, "mine": mine},
                            {"extractor": "e", "predictor": "p", "weights": "sha256:0"},
                            {"fetch": 1.0, "decode": 2.0, "extract": 3.0, "predict": 4.0, "total": 10.0},
                            {"decoded": 5}, "s3://features/v/k.npy")
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
