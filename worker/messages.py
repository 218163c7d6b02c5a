"""The message contract (docs/messages.md, worker/schemas/): parsing requests, building results and DLQ records.

Requests are validated against the same JSON Schema files that document them. S3 event notifications (AWS,
MinIO) are accepted too, so that the object store itself can enqueue uploads.
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
from typing import Any

import jsonschema

from models.errors import InputError

INVALID_JSON = "invalid_json"
SCHEMA_VIOLATION = "schema_violation"
MESSAGE_TOO_LARGE = "message_too_large"
MAX_ATTRIBUTES_DEPTH = 64  # far below the interpreter's recursion limit, which json.dumps of the result hits
MAX_MESSAGE_BYTES = 1 << 20  # requests are a few hundred bytes; S3 events batch at most a few records
HOSTNAME = socket.gethostname()


@dataclass(frozen=True)
class VideoRequest:
    video_id: str
    bucket: str
    key: str
    trace_id: str | None = None
    submitted_at: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@cache
def schema(name: str) -> dict[str, Any]:
    text = resources.files("worker").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


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


def _s3_event_requests(document: dict[str, Any], video_id_from: str) -> list[VideoRequest]:
    records = document.get("Records")
    if not isinstance(records, list) or not records:
        raise InputError(SCHEMA_VIOLATION, "S3 event without Records")
    requests = []
    for i, record in enumerate(records):
        try:
            event = str(record.get("eventName", ""))
            bucket = record["s3"]["bucket"]["name"]
            raw_key = record["s3"]["object"]["key"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(SCHEMA_VIOLATION, f"Records/{i}: not an S3 event record ({exc!r})") from exc
        if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket or not raw_key:
            raise InputError(SCHEMA_VIOLATION, f"Records/{i}: bucket name and object key must be strings")
        if event and not event.startswith(("ObjectCreated", "s3:ObjectCreated")):
            continue  # deletions, tagging, ...: nothing to tag
        key = urllib.parse.unquote_plus(raw_key)  # S3 and MinIO URL-encode keys in events
        video_id = key if video_id_from == "key" else f"{bucket}/{key}"
        requests.append(VideoRequest(video_id=video_id, bucket=bucket, key=key))
    return requests


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
        raise InputError(INVALID_JSON, f"attributes nested deeper than {MAX_ATTRIBUTES_DEPTH} levels")
    try:
        json.dumps([request.video_id, request.bucket, request.key, request.trace_id, request.submitted_at,
                    request.attributes],
                   ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(SCHEMA_VIOLATION, "a string holds a lone surrogate (not Unicode text)") from exc


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # Python's json accepts it; our consumers' parsers would not


def parse_request(value: bytes | None, video_id_from: str = "key") -> list[VideoRequest]:
    """The videos a message asks for (an S3 event may name several, or none worth tagging).

    Raises InputError (permanent: goes to the DLQ) for anything that is not a valid request.
    """
    if value is None:
        raise InputError(INVALID_JSON, "message has no value (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InputError(MESSAGE_TOO_LARGE, f"message of {len(value)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    try:
        document = json.loads(value.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(INVALID_JSON, f"not UTF-8 JSON: {str(exc)[:200]}") from exc
    try:
        requests = _requests(document, video_id_from)
    except RecursionError as exc:  # nesting that json.loads accepts but validation cannot walk
        raise InputError(INVALID_JSON, "JSON nested too deeply") from exc
    for request in requests:
        _vet(request)
    return requests


def _requests(document: Any, video_id_from: str) -> list[VideoRequest]:
    if isinstance(document, dict) and "Records" in document:
        return _s3_event_requests(document, video_id_from)
    if problem := _violation("request", document):
        raise InputError(SCHEMA_VIOLATION, problem)
    return [VideoRequest(
        video_id=document["video_id"],
        bucket=document["bucket"],
        key=document["key"],
        trace_id=document.get("trace_id"),
        submitted_at=document.get("submitted_at"),
        attributes=document.get("attributes", {}),
    )]


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_message(bucket: str, key: str, video_id: str | None = None, **extra: Any) -> dict[str, Any]:
    message = {"video_id": video_id or key, "bucket": bucket, "key": key,
               "submitted_at": now_rfc3339(), **extra}
    if problem := _violation("request", message):
        raise ValueError(f"invalid request: {problem}")
    return message


def result_message(request: VideoRequest, heads: dict[str, list[Any]], model: dict[str, Any],
                   timings_ms: dict[str, float], frames: dict[str, int], features_uri: str | None = None
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


def dlq_message(value: bytes | None, error: InputError, attempts: int, video_id: str | None,
                topic: str, partition: int, offset: int, key: bytes | None) -> dict[str, Any]:
    """The original message kept whole (text when it is UTF-8, else base64) so it can be replayed."""
    raw = value or b""
    try:
        original: dict[str, Any] = {"encoding": "text", "value": raw.decode("utf-8")}
    except UnicodeDecodeError:
        original = {"encoding": "base64", "value": base64.b64encode(raw).decode("ascii")}
    original |= {"topic": topic, "partition": partition, "offset": offset,
                 "key": key.decode("utf-8", "replace") if key is not None else None}
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
