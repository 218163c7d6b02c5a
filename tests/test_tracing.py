"""W3C traceparent parsing and formatting, and which trace a request belongs to (worker/tracing.py)."""

from __future__ import annotations

import pytest

from worker import tracing
from worker.tracing import TraceContext

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_parses_the_spec_example() -> None:
    assert tracing.parse_traceparent(VALID) == TraceContext(TRACE, SPAN, 1)
    assert tracing.parse_traceparent(VALID.encode()) == TraceContext(TRACE, SPAN, 1)
    assert tracing.parse_traceparent(f"00-{TRACE}-{SPAN}-00") == TraceContext(TRACE, SPAN, 0)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        "",
        "garbage",
        f"00-{TRACE}-{SPAN}",
        f"00-{TRACE}-{SPAN}-01-extra",  # 00 has exactly four fields
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"0-{TRACE}-{SPAN}-01",
        f"00-{'0' * 32}-{SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero ids
        f"00-{TRACE.upper()}-{SPAN}-01",  # the spec's ids are lowercase
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}0-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00-{TRACE}-{SPAN}-zz",
        f"00-{TRACE[:-1]}g-{SPAN}-01",
        b"\xff\xfe",
        "00-" + "é" * 32 + f"-{SPAN}-01",
    ],
)
def test_rejects_what_is_not_a_traceparent(value: str | bytes | None) -> None:
    assert tracing.parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    assert tracing.parse_traceparent(f"01-{TRACE}-{SPAN}-01-whatever") == TraceContext(TRACE, SPAN, 1)


def test_format_round_trips_and_refuses_invalid_ids() -> None:
    assert tracing.format_traceparent(TRACE, SPAN, 1) == VALID
    assert tracing.parse_traceparent(tracing.format_traceparent(TRACE, SPAN, 0)) == TraceContext(TRACE, SPAN, 0)
    for trace_id, span_id in [("0" * 32, SPAN), (TRACE, "0" * 16), (TRACE[:-1], SPAN), (TRACE, SPAN.upper())]:
        with pytest.raises(ValueError):
            tracing.format_traceparent(trace_id, span_id)


def test_new_ids_are_valid_and_differ() -> None:
    traces = {tracing.new_trace_id() for _ in range(100)}
    spans = {tracing.new_span_id() for _ in range(100)}
    assert len(traces) == 100 and len(spans) == 100
    assert all(tracing.parse_traceparent(tracing.format_traceparent(t, s)) for t, s in zip(traces, spans, strict=True))


def test_the_header_comes_first() -> None:
    trace = tracing.incoming([("other", b"x"), ("traceparent", VALID.encode())], "1" * 32)
    assert trace == TraceContext(TRACE, SPAN, 1)


def test_header_names_are_case_insensitive_and_the_first_counts() -> None:
    second = f"00-{'2' * 32}-{SPAN}-01".encode()
    assert tracing.incoming([("TraceParent", VALID.encode()), ("traceparent", second)]).trace_id == TRACE


def test_then_the_trace_id_field_when_it_is_a_trace_id() -> None:
    for headers in (None, [], [("traceparent", b"not valid")], [("traceparent", None)]):
        trace = tracing.incoming(headers, TRACE.upper())
        assert trace.trace_id == TRACE  # lowercased
        assert trace.parent_span_id != SPAN and tracing.parse_traceparent(trace.traceparent(tracing.new_span_id()))


@pytest.mark.parametrize("field", [None, "abc", "0" * 32, TRACE + "0", "request-42", f"{TRACE[:8]}-{TRACE[8:]}"])
def test_else_a_new_trace(field: str | None) -> None:
    first, second = tracing.incoming(None, field), tracing.incoming(None, field)
    assert first.trace_id != second.trace_id
    assert field is None or first.trace_id != field.lower()
    assert tracing.parse_traceparent(first.traceparent(tracing.new_span_id())) is not None


def test_the_videos_of_one_message_share_its_trace() -> None:
    header = [("traceparent", VALID.encode())]
    assert tracing.incoming_all(header, [None, "1" * 32]) == [TraceContext(TRACE, SPAN, 1)] * 2
    first, second, own = tracing.incoming_all(None, [None, None, "1" * 32])  # an S3 event's records: no fields
    assert first == second and own.trace_id == "1" * 32 and own.parent_span_id != first.parent_span_id
    assert tracing.incoming_all(None, []) == []


def test_output_headers_keep_the_trace_with_the_workers_span() -> None:
    trace = TraceContext(TRACE, SPAN, 0)
    [(name, value)] = tracing.output_headers(trace, "1" * 16)
    assert name == "traceparent" and isinstance(value, bytes)
    assert tracing.parse_traceparent(value) == TraceContext(TRACE, "1" * 16, 0)  # the flags are kept too
