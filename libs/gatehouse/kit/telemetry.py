"""OpenTelemetry for the services: traces across services and RPC metrics.

- :class:`ServerTelemetryInterceptor` continues the caller's W3C trace context
  (``traceparent``) in a SERVER span named after the method and records
  ``rpc.server.requests`` / ``rpc.server.duration`` by method and status code.
- :func:`client_interceptors` start a CLIENT span per outgoing call and inject
  ``traceparent`` so the callee's span joins the same trace.
- Exporters: ``none`` (default), ``console``, ``otlp`` (needs the optional
  ``opentelemetry-exporter-otlp-proto-grpc`` package) and ``memory`` (tests).
"""

from __future__ import annotations

import random
import time
from contextvars import ContextVar
from dataclasses import dataclass

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gatehouse.kit.interceptors import KitInterceptor

INSTRUMENTATION = "gatehouse.kit"


@dataclass
class Telemetry:
    """The providers of one service (kept here, not only globally, so tests can have several)."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    span_exporter: InMemorySpanExporter | None = None
    metric_reader: InMemoryMetricReader | None = None
    exporter: str | None = None  # as given to setup_telemetry; "none" lets servers skip SDK spans
    metrics_read: bool = True  # False when the meter provider has no reader: measurements go nowhere

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer(INSTRUMENTATION)


def setup_telemetry(service: str, exporter: str = "none", endpoint: str | None = None) -> Telemetry:
    resource = Resource.create({"service.name": f"gatehouse-{service}"})
    tracer_provider = TracerProvider(resource=resource)
    span_exporter = None
    metric_reader = None
    readers = []
    if exporter == "memory":
        span_exporter = InMemorySpanExporter()
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        metric_reader = InMemoryMetricReader()
        readers.append(metric_reader)
    elif exporter == "console":
        tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        insecure = bool(endpoint) and endpoint.startswith("http://")
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure))
        )
        readers.append(
            PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=insecure))
        )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(tracer_provider, meter_provider, span_exporter, metric_reader, exporter, bool(readers))


class ServerTelemetry:
    """The server side of one service's telemetry: per-method recorders, built once per method.

    With exporter ``none`` nothing can see a span, so no SDK span is made: the call's server span
    is a non-recording span continuing the caller's ``traceparent`` (or starting a new trace),
    made the first time something asks for it (:func:`current_span`, used by
    :func:`current_trace_id`, the logs, audit events and outgoing calls), so a call that logs
    nothing and calls nobody pays nothing for it; the trace id is the same whoever asks first. Metrics are recorded whenever the meter provider
    has a reader (``memory``, ``otlp``); without one (``none``, ``console``) the SDK would drop
    every measurement, so none is made.
    """

    def __init__(self, telemetry: Telemetry):
        self.tracer = telemetry.tracer
        self.lean = telemetry.exporter == "none"
        self.metrics = telemetry.metrics_read
        meter = telemetry.meter_provider.get_meter(INSTRUMENTATION)
        self.requests = meter.create_counter("rpc.server.requests", unit="1", description="RPCs handled")
        self.duration = meter.create_histogram("rpc.server.duration", unit="ms", description="RPC latency")

    def for_method(self, method: str) -> MethodTelemetry:
        return MethodTelemetry(self, method)


class MethodTelemetry:
    """Span and metrics of one method: :meth:`begin` when a call starts, :meth:`end` when it ends."""

    __slots__ = (
        "_attributes",
        "_by_code",
        "_duration",
        "_lean",
        "_method",
        "_metrics",
        "_requests",
        "_tracer",
        "needs_code",
    )

    def __init__(self, server: ServerTelemetry, method: str):
        service, _, name = method.lstrip("/").rpartition("/")
        self._tracer, self._lean = server.tracer, server.lean
        self._requests, self._duration, self._metrics = server.requests, server.duration, server.metrics
        self._method = method
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        self._by_code: dict[str, dict] = {}
        # end() reads the status only then; without it (a lean span, no metrics) it records nothing,
        # so a unary call served in a task of its own may skip it (the span's variable then needs
        # no reset)
        self.needs_code = not self._lean or self._metrics

    def begin(self, traceparent: str | None, tracestate: str | None):
        """Start the call's span (current until :meth:`end`); returns the handle for :meth:`end`."""
        started = time.perf_counter() if self._metrics else 0.0
        if self._lean:
            return started, _lean_span.set(_LeanSpan(traceparent, tracestate)), None
        carrier = {}
        if traceparent is not None:
            carrier["traceparent"] = traceparent
        if tracestate is not None:
            carrier["tracestate"] = tracestate
        scope = self._tracer.start_as_current_span(
            self._method, context=extract(carrier), kind=SpanKind.SERVER, attributes=self._attributes
        )
        return started, scope, scope.__enter__()

    def end(self, handle, status, exc_type, exc, tb) -> None:
        """End the call: ``status`` is the context's code (None is fine unless :attr:`needs_code`),
        ``exc_*`` what the call raised, if anything."""
        started, scope, span = handle
        code = _code(status, "OK" if exc_type is None else "UNKNOWN")
        try:
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", code)
                if code != "OK":
                    span.set_status(Status(StatusCode.ERROR, code))
            if self._metrics:
                attrs = self._by_code.get(code)
                if attrs is None:
                    attrs = self._by_code[code] = {"rpc.method": self._method, "rpc.grpc.status_code": code}
                self._requests.add(1, attrs)
                self._duration.record((time.perf_counter() - started) * 1000, attrs)
        finally:
            if span is None:
                _lean_span.reset(scope)
            else:
                scope.__exit__(exc_type, exc, tb)


class _LeanSpan:
    """A call's server span with exporter ``none``: made on first use, then the same for the call
    (context copies share this holder, so tasks the call starts see the same trace)."""

    __slots__ = ("_span", "traceparent", "tracestate")

    def __init__(self, traceparent: str | None, tracestate: str | None):
        self.traceparent, self.tracestate, self._span = traceparent, tracestate, None

    def span(self) -> NonRecordingSpan:
        if self._span is None:
            self._span = NonRecordingSpan(_server_span_context(self.traceparent, self.tracestate))
        return self._span


_lean_span: ContextVar[_LeanSpan | None] = ContextVar("gatehouse_lean_server_span", default=None)


def current_span() -> trace.Span:
    """The current span: OpenTelemetry's current one, else the lean server span of the call
    being served (exporter ``none``), else the invalid span."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        lean = _lean_span.get()
        if lean is not None:
            return lean.span()
    return span


def current_context() -> otel_context.Context:
    """OpenTelemetry's current context, with the call's lean server span in it when that is the
    current span (the parent of a CLIENT span started inside a served call)."""
    ctx = otel_context.get_current()
    span = current_span()
    return ctx if span is trace.get_current_span(ctx) else trace.set_span_in_context(span, ctx)


_W3C = TraceContextTextMapPropagator()
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def _server_span_context(traceparent: str | None, tracestate: str | None) -> SpanContext:
    """A new span's context continuing ``traceparent`` (parsed by the W3C propagator, as in the SDK
    path), or starting a new sampled trace, as the SDK's default sampler does for a root span."""
    if traceparent is not None:
        carrier = {"traceparent": traceparent}
        if tracestate is not None:
            carrier["tracestate"] = tracestate
        parent = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
        if parent.is_valid:
            return SpanContext(
                parent.trace_id,
                _new_span_id(),
                is_remote=False,
                trace_flags=_SAMPLED if parent.trace_flags.sampled else _NOT_SAMPLED,
                trace_state=parent.trace_state,
            )
    trace_id = 0
    while not trace_id:
        trace_id = random.getrandbits(128)
    return SpanContext(trace_id, _new_span_id(), is_remote=False, trace_flags=_SAMPLED)


def _new_span_id() -> int:
    span_id = 0
    while not span_id:
        span_id = random.getrandbits(64)
    return span_id


class ServerTelemetryInterceptor(KitInterceptor):
    """SERVER span per RPC (continuing the caller's trace) plus count/latency metrics.

    :class:`~gatehouse.kit.server.GatehouseServer` folds it into its one kit interceptor."""

    def __init__(self, telemetry: Telemetry):
        super().__init__(core=False, telemetry=ServerTelemetry(telemetry))


def _code(code, default: str) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    return default


class _ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, telemetry: Telemetry):
        self._tracer = telemetry.tracer

    def _details(self, details, span):
        metadata = list(details.metadata or ())
        carrier: dict[str, str] = {}
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            inject(carrier)
        finally:
            otel_context.detach(token)
        metadata.extend(carrier.items())
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = _method_name(client_call_details.method)
        with self._tracer.start_as_current_span(
            method, context=current_context(), kind=SpanKind.CLIENT
        ) as span:
            call = await continuation(self._details(client_call_details, span), request)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code().name)
                span.set_status(Status(StatusCode.ERROR, exc.code().name))
            return call

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        method = _method_name(client_call_details.method)
        with self._tracer.start_as_current_span(
            method, context=current_context(), kind=SpanKind.CLIENT
        ) as span:
            return await continuation(self._details(client_call_details, span), request)


def _method_name(method) -> str:
    return method.decode() if isinstance(method, bytes) else method


def client_interceptors(telemetry: Telemetry) -> list:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``."""
    return [_ClientInterceptor(telemetry)]


def current_trace_id() -> str | None:
    """The current trace id (32 hex), or None outside a span."""
    ctx = current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
