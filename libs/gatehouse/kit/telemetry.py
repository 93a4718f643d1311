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

import contextlib
import time
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
from opentelemetry.trace import SpanKind, Status, StatusCode

from gatehouse.kit.grpc_util import wrap_handler

INSTRUMENTATION = "gatehouse.kit"


@dataclass
class Telemetry:
    """The providers of one service (kept here, not only globally, so tests can have several)."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    span_exporter: InMemorySpanExporter | None = None
    metric_reader: InMemoryMetricReader | None = None

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
    return Telemetry(tracer_provider, meter_provider, span_exporter, metric_reader)


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """SERVER span per RPC (continuing the caller's trace) plus count/latency metrics."""

    def __init__(self, telemetry: Telemetry):
        self._tracer = telemetry.tracer
        meter = telemetry.meter_provider.get_meter(INSTRUMENTATION)
        self._requests = meter.create_counter("rpc.server.requests", unit="1", description="RPCs handled")
        self._duration = meter.create_histogram("rpc.server.duration", unit="ms", description="RPC latency")

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        service, _, name = method.lstrip("/").rpartition("/")
        carrier = {}
        for key, value in handler_call_details.invocation_metadata or ():
            if key in ("traceparent", "tracestate"):
                carrier[key] = value if isinstance(value, str) else value.decode()
        tracer, requests, duration = self._tracer, self._requests, self._duration

        @contextlib.asynccontextmanager
        async def scope(context: grpc.aio.ServicerContext):
            parent = extract(carrier)
            started = time.perf_counter()
            code = "OK"
            with tracer.start_as_current_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            ) as span:
                try:
                    yield
                    code = _code(context.code(), "OK")
                except grpc.aio.AbortError:
                    code = _code(context.code(), "UNKNOWN")
                    raise
                except BaseException:
                    code = _code(context.code(), "UNKNOWN")
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", code)
                    if code != "OK":
                        span.set_status(Status(StatusCode.ERROR, code))
                    attrs = {"rpc.method": method, "rpc.grpc.status_code": code}
                    requests.add(1, attrs)
                    duration.record((time.perf_counter() - started) * 1000, attrs)

        return wrap_handler(handler, scope)


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
        with self._tracer.start_as_current_span(method, kind=SpanKind.CLIENT) as span:
            call = await continuation(self._details(client_call_details, span), request)
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code().name)
                span.set_status(Status(StatusCode.ERROR, exc.code().name))
            return call

    async def intercept_unary_stream(self, continuation, client_call_details, request):
        method = _method_name(client_call_details.method)
        with self._tracer.start_as_current_span(method, kind=SpanKind.CLIENT) as span:
            return await continuation(self._details(client_call_details, span), request)


def _method_name(method) -> str:
    return method.decode() if isinstance(method, bytes) else method


def client_interceptors(telemetry: Telemetry) -> list:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)``."""
    return [_ClientInterceptor(telemetry)]


def current_trace_id() -> str | None:
    """The current trace id (32 hex), or None outside a span."""
    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None
