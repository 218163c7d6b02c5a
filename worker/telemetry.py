"""OpenTelemetry spans per stage of a video (fetch, decode, extract, predict, store_features, publish), exported over
OTLP/HTTP when `otel_exporter_otlp_endpoint` is set. The optional extra `videotag[otel]` brings the SDK.

Invariants:
- Without the setting nothing of OpenTelemetry is imported and a video costs one random span id (`NoTelemetry`).
- Every span is a child of the request's trace context (worker/tracing.py): same trace id, the requester's span as
  parent; a record published for the request carries the publish span's id in its `traceparent` header.
- The stages before publishing are recorded after the fact, from the timings the worker measures anyway (the
  same figures as `videotag_stage_seconds`), laid end to end from the start of the fetch: the tagging chain needs
  no tracing of its own. The publish span is live: its id goes into the record's header.
- Exporting never blocks or fails a video: spans are batched and sent by the SDK's own thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from worker.settings import SettingsError
from worker.tracing import TraceContext, new_span_id

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)
SERVICE_NAME = "videotag-worker"
TRACES_PATH = "/v1/traces"
STAGES = ("fetch", "decode", "extract", "predict", "store_features")  # in the order they run; publish comes last


class NoTelemetry:
    """No collector configured: records carry a fresh span id, nothing is recorded."""

    @contextlib.contextmanager
    def publish(self, trace: TraceContext, attributes: Mapping[str, Any]) -> Iterator[str]:
        yield new_span_id()

    def stages(
        self, trace: TraceContext, started_ns: int, timings_ms: Mapping[str, float], attributes: Mapping[str, Any]
    ) -> None:
        return None

    def shutdown(self) -> None:
        return None


class Telemetry(NoTelemetry):
    """Spans through an OpenTelemetry SDK tracer provider (tests pass one with an in-memory exporter)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace as otel_trace

        self._otel = otel_trace
        self.provider = provider
        self._tracer = provider.get_tracer("videotag.worker")

    def _parent(self, trace: TraceContext) -> Any:
        otel = self._otel
        parent = otel.SpanContext(
            trace_id=int(trace.trace_id, 16),
            span_id=int(trace.parent_span_id, 16),
            is_remote=True,
            trace_flags=otel.TraceFlags(trace.flags),
        )
        return otel.set_span_in_context(otel.NonRecordingSpan(parent))

    def stages(
        self, trace: TraceContext, started_ns: int, timings_ms: Mapping[str, float], attributes: Mapping[str, Any]
    ) -> None:
        """A span per stage in `timings_ms` (those of STAGES, in their order), end to end from `started_ns`."""
        context = self._parent(trace)
        at = started_ns
        for stage in STAGES:
            if stage not in timings_ms:
                continue
            end = at + int(timings_ms[stage] * 1e6)
            span = self._tracer.start_span(stage, context=context, attributes=dict(attributes), start_time=at)
            span.end(end_time=end)
            at = end

    @contextlib.contextmanager
    def publish(self, trace: TraceContext, attributes: Mapping[str, Any]) -> Iterator[str]:
        """The span of publishing one record (from the first try to the broker's acknowledgement; exactly-once:
        until it is held for its transaction); yields its span id, for the record's header."""
        span = self._tracer.start_span(
            "publish", context=self._parent(trace), kind=self._otel.SpanKind.PRODUCER, attributes=dict(attributes)
        )
        try:
            yield format(span.get_span_context().span_id, "016x")
        except BaseException as exc:
            span.set_status(self._otel.Status(self._otel.StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        """Export what is still batched (the SDK waits up to its export timeout)."""
        self.provider.shutdown()


def traces_url(endpoint: str) -> str:
    """The setting is a base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the traces path is appended unless given."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(TRACES_PATH) else endpoint + TRACES_PATH


def make_telemetry(endpoint: str | None, resource: Mapping[str, str] | None = None) -> NoTelemetry:
    """Telemetry exporting to `endpoint` over OTLP/HTTP (protobuf), or NoTelemetry when it is None."""
    if not endpoint:
        return NoTelemetry()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise SettingsError(
            f"setting 'otel_exporter_otlp_endpoint' needs OpenTelemetry: pip install 'videotag[otel]' ({exc})"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME, **(resource or {})}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
    log.info("exporting spans to %s", traces_url(endpoint))
    return Telemetry(provider)
