"""The message contract (docs/messages.md, worker/schemas/): parsing requests, building results and DLQ records.

Requests are validated against the same JSON Schema files that document them. The object store can enqueue
uploads itself: S3 event notifications (AWS `Records`, MinIO), AWS's `s3:TestEvent`, EventBridge "Object
Created" events, and any of them wrapped in an SNS notification are accepted too.

Invariants: a message either yields its requests (none for a test event or deletions: it is committed with
nothing published) or raises InputError with one of the message codes of models/errors.py, for the message as a
whole; a message with more than `max_records` records, or naming a bucket outside `allowed_buckets`, starts no
video.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal, TypedDict, get_args

import jsonschema

from models.errors import ErrorCode, InputError

MAX_EVENT_RECORDS = 1000  # the default of the max_event_records setting
VideoIdFrom = Literal["key", "bucket_key"]  # the s3_event_video_id setting
VIDEO_ID_FROM: tuple[VideoIdFrom, ...] = get_args(VideoIdFrom)
MAX_ATTRIBUTES_DEPTH = 64  # far below the interpreter's recursion limit, which json.dumps of the result hits
MAX_MESSAGE_BYTES = 1 << 20  # requests are a few hundred bytes; S3 events batch at most a few records
MAX_ATTRIBUTES_BYTES = 64 * 1024  # echoed into the result: bounded so that every result fits a Kafka record
HOSTNAME = socket.gethostname()


@dataclass(frozen=True)
class VideoRequest:
    video_id: str
    bucket: str
    key: str
    trace_id: str | None = None
    submitted_at: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


class Frames(TypedDict):
    """A result's `frames` (schemas/result.schema.json): frame counts, the size as displayed, the decoder."""

    decoded: int
    reported: int
    sampled: int
    width: int
    height: int
    decoder: str  # "opencv" or "pyav"


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("worker").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)  # (json.loads is typed Any)
    return document


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema(name))
    return cls(schema(name), format_checker=cls.FORMAT_CHECKER)


def _violation(name: str, document: Any) -> str | None:
    error = jsonschema.exceptions.best_match(_validator(name).iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:300]}"


def _video_id(bucket: str, key: str, video_id_from: str) -> str:
    return key if video_id_from == "key" else f"{bucket}/{key}"


def _s3_event_requests(document: dict[str, Any], video_id_from: str, max_records: int) -> list[VideoRequest]:
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise InputError(ErrorCode.SCHEMA_VIOLATION, "S3 event without Records")
    if len(records) > max_records:
        raise InputError(
            ErrorCode.TOO_MANY_RECORDS, f"S3 event with {len(records)} records, the limit is {max_records}"
        )
    requests = []
    for i, record in enumerate(records):
        try:
            event = str(record.get("eventName", ""))
            bucket = record["s3"]["bucket"]["name"]
            raw_key = record["s3"]["object"]["key"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(ErrorCode.SCHEMA_VIOLATION, f"Records/{i}: not an S3 event record ({exc!r})") from exc
        if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket or not raw_key:
            raise InputError(ErrorCode.SCHEMA_VIOLATION, f"Records/{i}: bucket name and object key must be strings")
        if event and not event.startswith(("ObjectCreated", "s3:ObjectCreated")):
            continue  # deletions, tagging, ...: nothing to tag
        key = urllib.parse.unquote_plus(raw_key)  # S3 and MinIO URL-encode keys in events
        requests.append(VideoRequest(video_id=_video_id(bucket, key, video_id_from), bucket=bucket, key=key))
    return requests


def _eventbridge_requests(document: dict[str, Any], video_id_from: str) -> list[VideoRequest]:
    if document.get("detail-type") != "Object Created":
        return []  # Object Deleted, Object Restore Completed, ...: nothing to tag
    try:
        bucket = document["detail"]["bucket"]["name"]
        key = document["detail"]["object"]["key"]  # not URL-encoded, unlike S3 notifications
    except (KeyError, TypeError) as exc:
        raise InputError(
            ErrorCode.SCHEMA_VIOLATION, f"EventBridge event without detail.bucket.name and detail.object.key ({exc!r})"
        ) from exc
    if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
        raise InputError(ErrorCode.SCHEMA_VIOLATION, "EventBridge event: bucket name and object key must be strings")
    return [VideoRequest(video_id=_video_id(bucket, key, video_id_from), bucket=bucket, key=key)]


def message_shape(document: Any) -> str:
    """Which input a JSON document is: "s3_event" (AWS or MinIO `Records`), "s3_test_event" (sent by AWS when
    notifications are configured), "eventbridge" (an event from aws.s3), "sns" (a notification whose Message
    holds one of these), else "request" (validated against request.schema.json)."""
    if not isinstance(document, dict):
        return "request"
    if "Records" in document:
        return "s3_event"
    if document.get("Event") == "s3:TestEvent":
        return "s3_test_event"
    if document.get("source") == "aws.s3" and "detail-type" in document:
        return "eventbridge"
    if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
        return "sns"
    return "request"


def bucket_allowed(bucket: str, allowed_buckets: frozenset[str] | None) -> bool:
    return allowed_buckets is None or bucket in allowed_buckets


def _nesting(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:  # no recursion: the value may be nested almost as deep as the recursion limit
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _vet(request: VideoRequest) -> None:
    """Refuse what parses but could never be answered, so it is dead-lettered instead of retried forever:
    lone surrogates (JSON "\\ud800" escapes: no S3 key nor UTF-8 answer can hold them) and attributes nested
    so deep that serialising the result would exceed the recursion limit."""
    if _nesting(request.attributes) > MAX_ATTRIBUTES_DEPTH:
        raise InputError(ErrorCode.INVALID_JSON, f"attributes nested deeper than {MAX_ATTRIBUTES_DEPTH} levels")
    try:
        json.dumps(
            [request.video_id, request.bucket, request.key, request.trace_id, request.submitted_at], ensure_ascii=False
        ).encode("utf-8")
        size = len(json.dumps(request.attributes, ensure_ascii=False).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InputError(ErrorCode.SCHEMA_VIOLATION, "a string holds a lone surrogate (not Unicode text)") from exc
    if size > MAX_ATTRIBUTES_BYTES:
        raise InputError(
            ErrorCode.SCHEMA_VIOLATION,
            f"attributes of {size} bytes serialised, the limit is "
            f"{MAX_ATTRIBUTES_BYTES} (they are echoed into the result)",
        )


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's json accepts it; our consumers' parsers would not


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as exc:
        raise InputError(ErrorCode.INVALID_JSON, f"not UTF-8 JSON: {str(exc)[:200]}") from exc


def parse_request(
    value: bytes | None,
    video_id_from: str = "key",
    max_records: int = MAX_EVENT_RECORDS,
    allowed_buckets: frozenset[str] | None = None,
) -> list[VideoRequest]:
    """The videos a message asks for (an event may name several, or none worth tagging).

    Raises InputError (permanent: goes to the DLQ) for anything that is not a valid request, an event with
    more than `max_records` records, or a request for a bucket outside `allowed_buckets` (None: any bucket).
    """
    if value is None:
        raise InputError(ErrorCode.INVALID_JSON, "message has no value (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InputError(
            ErrorCode.MESSAGE_TOO_LARGE, f"message of {len(value)} bytes, the limit is {MAX_MESSAGE_BYTES}"
        )
    try:
        requests = _requests(_loads(value.decode("utf-8")), video_id_from, max_records)
    except UnicodeDecodeError as exc:
        raise InputError(ErrorCode.INVALID_JSON, f"not UTF-8 JSON: {str(exc)[:200]}") from exc
    except RecursionError as exc:  # nesting that json.loads or validation cannot walk
        raise InputError(ErrorCode.INVALID_JSON, "JSON nested too deeply") from exc
    for request in requests:
        _vet(request)
        if not bucket_allowed(request.bucket, allowed_buckets):
            raise InputError(ErrorCode.BUCKET_NOT_ALLOWED, f"bucket {request.bucket!r} is not in allowed_buckets")
    return requests


def _requests(document: Any, video_id_from: str, max_records: int, wrapped: bool = False) -> list[VideoRequest]:
    shape = message_shape(document)
    if shape == "sns" and not wrapped:  # one level: SNS does not wrap its own notifications
        return _requests(_loads(document["Message"]), video_id_from, max_records, wrapped=True)
    if shape == "s3_event":
        return _s3_event_requests(document, video_id_from, max_records)
    if shape == "s3_test_event":
        return []
    if shape == "eventbridge":
        return _eventbridge_requests(document, video_id_from)
    if problem := _violation("request", document):
        raise InputError(ErrorCode.SCHEMA_VIOLATION, problem)
    return [
        VideoRequest(
            video_id=document["video_id"],
            bucket=document["bucket"],
            key=document["key"],
            trace_id=document.get("trace_id"),
            submitted_at=document.get("submitted_at"),
            attributes=document.get("attributes", {}),
        )
    ]


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_message(bucket: str, key: str, video_id: str | None = None, **extra: Any) -> dict[str, Any]:
    message = {"video_id": video_id or key, "bucket": bucket, "key": key, "submitted_at": now_rfc3339(), **extra}
    if problem := _violation("request", message):
        raise ValueError(f"invalid request: {problem}")
    return message


def result_message(
    request: VideoRequest,
    heads: dict[str, list[Any]],
    model: dict[str, Any],
    timings_ms: dict[str, float],
    frames: Frames,
    features_uri: str | None = None,
) -> dict[str, Any]:
    """`heads`: each head's tags, in order; `tags` repeats the first head's (the field consumers always read)."""
    message: dict[str, Any] = {"video_id": request.video_id, "bucket": request.bucket, "key": request.key}
    if request.trace_id:
        message["trace_id"] = request.trace_id
    if request.attributes:
        message["attributes"] = request.attributes
    message |= {
        "tags": next(iter(heads.values())),
        "heads": heads,
        "model": model,
        "timings_ms": {k: round(v, 1) for k, v in timings_ms.items()},
        "frames": frames,
        "worker": HOSTNAME,
        "processed_at": now_rfc3339(),
    }
    if features_uri:
        message["features_uri"] = features_uri
    return message


def dlq_message(
    value: bytes | None,
    error: InputError,
    attempts: int,
    video_id: str | None,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
) -> dict[str, Any]:
    """The original message kept whole (text when it is UTF-8, else base64) so it can be replayed."""
    raw = value or b""
    try:
        original: dict[str, Any] = {"encoding": "text", "value": raw.decode("utf-8")}
    except UnicodeDecodeError:
        original = {"encoding": "base64", "value": base64.b64encode(raw).decode("ascii")}
    original |= {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key is not None else None,
    }
    return {
        "video_id": video_id,
        "original": original,
        "error": error.as_dict(),
        "attempts": attempts,
        "worker": HOSTNAME,
        "failed_at": now_rfc3339(),
    }


def original_value(dlq_record: dict[str, Any]) -> bytes:
    """The request bytes of a DLQ record, for replay."""
    original = dlq_record["original"]
    if original["encoding"] == "base64":
        return base64.b64decode(original["value"])
    return str(original["value"]).encode("utf-8")
