"""W3C Trace Context (https://www.w3.org/TR/trace-context/) on Kafka records: which trace a request belongs to,
and the `traceparent` header of every record the worker publishes for it.

A request's trace comes from its `traceparent` header, else from its `trace_id` field when that is a valid trace
id, else it starts a new one. Every output (result, dead letter, in either delivery mode) carries a `traceparent`
with the request's trace id and a span id of its own: the worker's span, the requester's as its parent.

Invariants: only valid values are ever written (version 00; 32 lowercase hex, not all zero, for the trace id;
16, not all zero, for a span id); an invalid header or field is ignored, never an error (tracing must not cost a
video); this module is pure apart from the random ids.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HEADER = "traceparent"
SAMPLED = 0x01
_HEX = re.compile(r"[0-9a-f]+")
_TRACE_ID_FIELD = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class TraceContext:
    """The trace a request belongs to. `parent_span_id` is the requester's span, from its header; a request that
    named none (a `trace_id` field, or no trace at all) gets one made up, so that the worker's spans always have
    a parent in the request's trace (an OpenTelemetry span can take its trace id only from a parent)."""

    trace_id: str
    parent_span_id: str
    flags: int = SAMPLED

    def traceparent(self, span_id: str) -> str:
        """The header value for an output of this trace, made in the worker's span `span_id`."""
        return format_traceparent(self.trace_id, span_id, self.flags)


def _valid_id(text: str, length: int) -> bool:
    return len(text) == length and _HEX.fullmatch(text) is not None and text.strip("0") != ""


def parse_traceparent(value: bytes | str | None) -> TraceContext | None:
    """A `traceparent` value → its context, or None when it is not a valid one. Versions after 00 are read as
    the spec asks (their first four fields, the rest ignored); version ff is invalid."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if value is None:
        return None
    value = value.strip()
    parts = value.split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[:4]
    if len(version) != 2 or not _HEX.fullmatch(version) or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    if not (_valid_id(trace_id, 32) and _valid_id(span_id, 16) and len(flags) == 2 and _HEX.fullmatch(flags)):
        return None
    return TraceContext(trace_id, span_id, int(flags, 16))


def format_traceparent(trace_id: str, span_id: str, flags: int = SAMPLED) -> str:
    if not (_valid_id(trace_id, 32) and _valid_id(span_id, 16) and 0 <= flags <= 0xFF):
        raise ValueError(f"not a valid trace context: {trace_id!r} {span_id!r} {flags!r}")
    return f"00-{trace_id}-{span_id}-{flags:02x}"


def new_trace_id() -> str:
    while True:  # all-zero is invalid (one chance in 2**128)
        trace_id = secrets.token_hex(16)
        if trace_id.strip("0"):
            return trace_id


def new_span_id() -> str:
    while True:
        span_id = secrets.token_hex(8)
        if span_id.strip("0"):
            return span_id


def header_value(headers: Iterable[tuple[str, bytes | None]] | None, name: str = HEADER) -> bytes | None:
    """The first header called `name` (case-insensitive, as in HTTP), or None. kafka-python gives (str, bytes)."""
    for key, value in headers or ():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None


def trace_id_from_field(value: str | None) -> str | None:
    """A request's `trace_id` field as a trace id: 32 hex digits (either case), not all zero; else None (the
    field is free text to the contract, echoed in the result whatever it holds)."""
    if value is None or not _TRACE_ID_FIELD.fullmatch(value):
        return None
    return value.lower() if value.strip("0") else None


def incoming(headers: Iterable[tuple[str, bytes | None]] | None = None, trace_id: str | None = None) -> TraceContext:
    """The trace of a request: its `traceparent` header, else its `trace_id` field, else a new trace."""
    return incoming_all(headers, [trace_id])[0]


def incoming_all(
    headers: Iterable[tuple[str, bytes | None]] | None, trace_ids: Sequence[str | None]
) -> list[TraceContext]:
    """The traces of the requests one message holds (an S3 event may hold several; each with its `trace_id`
    field): the message's `traceparent` header for all, else each one's field, else one new trace for them all."""
    parsed = parse_traceparent(header_value(headers))
    if parsed is not None:
        return [parsed] * len(trace_ids)
    shared = TraceContext(new_trace_id(), new_span_id())
    fields = [trace_id_from_field(trace_id) for trace_id in trace_ids]
    return [shared if field is None else TraceContext(field, new_span_id()) for field in fields]


def output_headers(trace: TraceContext, span_id: str) -> list[tuple[str, bytes]]:
    """The headers of a record published for a request of `trace`, made in the worker's span `span_id`."""
    return [(HEADER, trace.traceparent(span_id).encode("ascii"))]
