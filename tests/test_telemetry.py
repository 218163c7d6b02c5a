"""OpenTelemetry spans per stage (worker/telemetry.py) with the SDK's in-memory exporter, a real OTLP/HTTP export,
and the worker's published records carrying the publish span in their traceparent header."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from models.errors import ErrorCode, InputError
from tests.otlp_collector import Collector
from worker import telemetry, tracing
from worker.settings import Settings
from worker.telemetry import NoTelemetry, Telemetry
from worker.tracing import TraceContext

ROOT = Path(__file__).resolve().parents[1]
TRACE = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
ATTRIBUTES = {"videotag.video_id": "v1", "videotag.topic": "in", "videotag.partition": 2, "videotag.offset": 17}


@pytest.fixture
def exported() -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Telemetry(provider), exporter
    provider.shutdown()


def _ids(span: ReadableSpan) -> tuple[str, str, str]:
    """(trace id, span id, parent span id) as hex."""
    assert span.parent is not None
    return (
        format(span.context.trace_id, "032x"),
        format(span.context.span_id, "016x"),
        format(span.parent.span_id, "016x"),
    )


def test_a_span_per_stage_end_to_end_as_children_of_the_request(exported) -> None:
    tel, exporter = exported
    timings = {"fetch": 20.0, "decode": 900.0, "extract": 4000.0, "predict": 80.0, "total": 5000.0}
    tel.stages(TRACE, 1_000_000_000, timings, ATTRIBUTES)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["fetch", "decode", "extract", "predict"]  # "total" is no stage
    for span in spans:
        trace_id, span_id, parent = _ids(span)
        assert trace_id == TRACE.trace_id and parent == TRACE.parent_span_id and span_id != parent
        assert span.parent.is_remote and dict(span.attributes) == ATTRIBUTES
    assert len({s.context.span_id for s in spans}) == 4
    assert [(s.start_time, s.end_time) for s in spans] == [
        (1_000_000_000, 1_020_000_000),
        (1_020_000_000, 1_920_000_000),
        (1_920_000_000, 5_920_000_000),
        (5_920_000_000, 6_000_000_000),
    ]


def test_store_features_is_a_stage_when_it_ran(exported) -> None:
    tel, exporter = exported
    tel.stages(TRACE, 0, {"store_features": 5.0, "fetch": 1.0}, ATTRIBUTES)  # laid out in the order they run
    assert [(s.name, s.start_time) for s in exporter.get_finished_spans()] == [
        ("fetch", 0),
        ("store_features", 1_000_000),
    ]


def test_the_publish_span_is_the_one_the_header_names(exported) -> None:
    tel, exporter = exported
    with tel.publish(TRACE, {"messaging.destination.name": "out"}) as span_id:
        assert not exporter.get_finished_spans()  # live until the record is acknowledged
    [span] = exporter.get_finished_spans()
    assert span.name == "publish" and span.kind is SpanKind.PRODUCER
    assert _ids(span) == (TRACE.trace_id, span_id, TRACE.parent_span_id)
    assert span.attributes["messaging.destination.name"] == "out" and span.status.is_ok


def test_a_failed_publish_is_an_error_span(exported) -> None:
    tel, exporter = exported
    with pytest.raises(TimeoutError), tel.publish(TRACE, {}):
        raise TimeoutError
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "TimeoutError"


def test_an_unsampled_trace_records_nothing_but_still_gets_a_span_id(exported) -> None:
    tel, exporter = exported
    with tel.publish(TraceContext(TRACE.trace_id, TRACE.parent_span_id, 0), {}) as span_id:
        pass
    assert not exporter.get_finished_spans()
    assert tracing.parse_traceparent(tracing.format_traceparent(TRACE.trace_id, span_id, 0)) is not None


def test_without_the_setting_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys; from worker.worker import Worker; from worker.settings import Settings; "
        "w = Worker(Settings()); "
        "assert type(w.telemetry).__name__ == 'NoTelemetry', w.telemetry; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    with NoTelemetry().publish(TRACE, {}) as span_id:
        assert tracing.parse_traceparent(TRACE.traceparent(span_id)) is not None


def test_traces_url_appends_the_signal_path_like_the_sdks_environment_variable() -> None:
    assert telemetry.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert telemetry.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert telemetry.traces_url("https://c.example/v1/traces") == "https://c.example/v1/traces"


def test_spans_reach_an_otlp_http_collector() -> None:
    """The real exporter, batched, to a local HTTP server that decodes what it is sent."""
    with Collector() as collector:
        tel = telemetry.make_telemetry(collector.endpoint)
        assert isinstance(tel, Telemetry)
        tel.stages(TRACE, 0, {"fetch": 1.0, "decode": 2.0}, ATTRIBUTES)
        with tel.publish(TRACE, {}):
            pass
        tel.shutdown()  # flushes the batch
        spans = collector.spans()
    assert sorted(span.name for span in spans) == ["decode", "fetch", "publish"]
    for span in spans:
        assert (span.trace_id, span.parent_span_id) == (TRACE.trace_id, TRACE.parent_span_id)
        assert span.path == "/v1/traces" and span.service == "videotag-worker"
    assert next(s for s in spans if s.name == "fetch").attributes == ATTRIBUTES


class _Future:
    def get(self, timeout: float) -> None:
        return None


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> _Future:
        self.sent.append((topic, value, headers))
        return _Future()


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_results_and_dead_letters_carry_the_publish_span(exported, delivery: str) -> None:
    from worker.worker import Job, Worker

    tel, exporter = exported
    worker = Worker(Settings(delivery=delivery))
    worker.telemetry = tel
    worker.producer = _Producer()  # type: ignore[assignment]
    job = Job("in", 2, 17, 0, None, b"{}", None, trace=TRACE)  # type: ignore[arg-type]
    worker._publish("out", "v1", {"video_id": "v1"}, job)
    worker._dead_letter(job, InputError(ErrorCode.CORRUPT_VIDEO, "damaged"), attempts=1)
    if delivery == "exactly_once":
        published = [(out.topic, out.headers) for out in job.outputs]
    else:
        published = [(topic, headers) for topic, _, headers in worker.producer.sent]  # type: ignore[attr-defined]
    spans = exporter.get_finished_spans()
    assert [topic for topic, _ in published] == ["out", worker.settings.dlq_topic]
    for (_topic, headers), span in zip(published, spans, strict=True):
        [(name, value)] = headers
        parsed = tracing.parse_traceparent(value)
        assert name == "traceparent" and parsed is not None
        assert _ids(span) == (TRACE.trace_id, parsed.parent_span_id, TRACE.parent_span_id)
        assert span.attributes["videotag.offset"] == 17 and span.attributes["videotag.topic"] == "in"
    assert spans[0].attributes["videotag.outcome"] == "result"
    assert spans[1].attributes["videotag.outcome"] == "dead_letter"
    assert spans[1].attributes["videotag.error_code"] == "corrupt_video"
