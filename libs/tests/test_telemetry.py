"""Traces cross services and metrics count RPCs, through real grpc.aio servers."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import grpc
import pytest
from opentelemetry.trace import SpanKind

from gatehouse.kit import errors
from gatehouse.kit.context import Principal, current_principal, current_request_id, request_id_var
from gatehouse.kit.interceptors import KitInterceptor
from gatehouse.kit.logs import setup_logging
from gatehouse.kit.telemetry import (
    ServerTelemetryInterceptor,
    client_interceptors,
    current_trace_id,
    setup_telemetry,
)
from gatehouse.testing.servers import TEST_SERVICE as PROBE
from gatehouse.testing.servers import call, make_server, raw_service

SERVICE = "gatehouse.test.v1.Hop"


async def start(telemetry, methods):
    server = grpc.aio.server(interceptors=[ServerTelemetryInterceptor(telemetry)])
    handlers = {n: grpc.unary_unary_rpc_method_handler(f) for n, f in methods.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def two_servers():
    tel_a = setup_telemetry("a", "memory")
    tel_b = setup_telemetry("b", "memory")

    async def leaf(request, context):
        return (current_trace_id() or "").encode()

    async def missing(request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, "nope")

    server_b, port_b = await start(tel_b, {"Leaf": leaf, "Missing": missing})
    channel_b = grpc.aio.insecure_channel(f"127.0.0.1:{port_b}", interceptors=client_interceptors(tel_a))

    async def front(request, context):
        return await channel_b.unary_unary(f"/{SERVICE}/Leaf")(b"", timeout=5)

    server_a, port_a = await start(tel_a, {"Front": front})
    yield tel_a, tel_b, port_a, port_b
    await channel_b.close()
    await server_a.stop(0)
    await server_b.stop(0)


async def test_one_trace_spans_two_servers(two_servers):
    tel_a, tel_b, port_a, _ = two_servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port_a}") as channel:
        trace_in_b = (await channel.unary_unary(f"/{SERVICE}/Front")(b"", timeout=5)).decode()
    spans_a = tel_a.span_exporter.get_finished_spans()
    spans_b = tel_b.span_exporter.get_finished_spans()
    server_a = next(s for s in spans_a if s.kind == SpanKind.SERVER)
    client_a = next(s for s in spans_a if s.kind == SpanKind.CLIENT)
    server_b = next(s for s in spans_b if s.kind == SpanKind.SERVER)
    assert server_b.context.trace_id == server_a.context.trace_id
    assert f"{server_a.context.trace_id:032x}" == trace_in_b
    assert client_a.parent.span_id == server_a.context.span_id
    assert server_b.parent.span_id == client_a.context.span_id
    assert server_a.name == f"/{SERVICE}/Front"


async def test_incoming_traceparent_is_continued(two_servers):
    _, tel_b, _, port_b = two_servers
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    md = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port_b}") as channel:
        answer = await channel.unary_unary(f"/{SERVICE}/Leaf")(b"", metadata=md, timeout=5)
    assert answer.decode() == trace_id
    span = tel_b.span_exporter.get_finished_spans()[-1]
    assert span.parent.span_id == 0x00F067AA0BA902B7


async def test_metrics_count_by_method_and_code(two_servers):
    _, tel_b, _, port_b = two_servers
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port_b}") as channel:
        await channel.unary_unary(f"/{SERVICE}/Leaf")(b"", timeout=5)
        await channel.unary_unary(f"/{SERVICE}/Leaf")(b"", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SERVICE}/Missing")(b"", timeout=5)
    expected = {(f"/{SERVICE}/Leaf", "OK"): 2, (f"/{SERVICE}/Missing", "NOT_FOUND"): 1}
    # The server records the metric after the status went out, so the client can be a
    # moment ahead of the counter on a loaded machine: read again for up to 2 s.
    for _ in range(40):
        counts = _request_counts(tel_b)
        if all(counts.get(key) == value for key, value in expected.items()):
            break
        await asyncio.sleep(0.05)
    assert {key: counts.get(key) for key in expected} == expected


def _request_counts(telemetry) -> dict:
    counts = {}
    for rm in telemetry.metric_reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "rpc.server.requests":
                    for point in metric.data.data_points:
                        a = point.attributes
                        counts[(a["rpc.method"], a["rpc.grpc.status_code"])] = point.value
    return counts


def test_json_logs_carry_request_id_trace_id_and_exceptions():
    stream = io.StringIO()
    setup_logging("probe", "INFO", "json", stream=stream)
    tel = setup_telemetry("probe", "memory")
    token = request_id_var.set("req-7")
    try:
        with tel.tracer.start_as_current_span("work"):
            logging.getLogger("x").info("hello %s", "world", extra={"user": "u1"})
            try:
                raise ValueError("bad")
            except ValueError:
                logging.getLogger("x").exception("failed")
    finally:
        request_id_var.reset(token)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "hello world" and first["service"] == "probe" and first["user"] == "u1"
    assert first["request_id"] == "req-7" and len(first["trace_id"]) == 32
    assert "ValueError: bad" in second["exc"]
    setup_logging("probe", "INFO", "json", stream=stream)
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "_gatehouse_handler", False)) == 1


def test_otlp_exporter_is_configured_for_traces_and_metrics():
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    tel = setup_telemetry("probe", "otlp", "http://127.0.0.1:4317")
    processors = tel.tracer_provider._active_span_processor._span_processors
    assert any(isinstance(getattr(p, "span_exporter", None), OTLPSpanExporter) for p in processors)
    assert setup_telemetry("probe", "none").tracer_provider._active_span_processor._span_processors == ()
    tel.tracer_provider.shutdown()
    tel.meter_provider.shutdown(timeout_millis=100)


# The kit's one server interceptor (telemetry + request id / errors / access log + authentication)
# through real GatehouseServers: exporter "none" (no SDK span; the trace is still continued and
# propagated) and "memory" (spans and metrics as before).

KIT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{KIT_TRACE_ID}-00f067aa0ba902b7-01"
GOOD = ("authorization", "Bearer good")


async def accept_good(token: str) -> Principal:
    # Trivial verifier: these tests are about the interceptor plumbing, not JWTs.
    if token != "good":
        raise errors.Unauthenticated("invalid or expired access token", reason="TOKEN_INVALID")
    return Principal(kind="user", id="u1")


async def start_kit(tmp_path, telemetry, methods, public=()):
    server = make_server(tmp_path, raw_service(methods), verifier=accept_good, public=public)
    server._extra = [ServerTelemetryInterceptor(telemetry)]
    port = await server.start()
    await server.wait_started()
    return server, port


async def whoami(request: bytes, context) -> bytes:
    principal = current_principal()
    answer = {"trace": current_trace_id(), "request": current_request_id(), "who": principal.subject}
    return json.dumps(answer).encode()


async def missing(request: bytes, context) -> bytes:
    raise errors.NotFound("workspace", "w1")


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    handler = setup_logging("probe", "INFO", "json", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


async def test_server_installs_one_interceptor_with_the_telemetry_folded_in(tmp_path):
    telemetry = setup_telemetry("probe", "none")
    server = make_server(tmp_path, raw_service({"WhoAmI": whoami}), verifier=accept_good)
    server._extra = [ServerTelemetryInterceptor(telemetry)]
    (kit,) = server._interceptors()
    assert isinstance(kit, KitInterceptor) and kit.core and kit.verify is accept_good
    assert kit.telemetry is not None


async def test_method_handler_is_wrapped_once_and_reused():
    kit = KitInterceptor(verify=accept_good)
    handler = grpc.unary_unary_rpc_method_handler(whoami)

    class Details:
        method = f"/{PROBE}/WhoAmI"
        invocation_metadata = ()

    async def continuation(details):
        return handler

    first = await kit.intercept_service(continuation, Details())
    second = await kit.intercept_service(continuation, Details())
    assert first is second and first is not handler


async def test_exporter_none_continues_the_incoming_trace_without_sdk_spans(tmp_path, log_stream):
    telemetry = setup_telemetry("probe", "none")
    server, port = await start_kit(tmp_path, telemetry, {"WhoAmI": whoami})
    try:
        md = [GOOD, ("traceparent", TRACEPARENT), ("x-request-id", "req-42")]
        body, trailing = await call(port, "WhoAmI", metadata=md)
        answer = json.loads(body)
        assert answer == {"trace": KIT_TRACE_ID, "request": "req-42", "who": "user:u1"}
        assert ("x-request-id", "req-42") in tuple(trailing)
        # without a traceparent each call starts its own trace
        first = json.loads((await call(port, "WhoAmI", metadata=[GOOD]))[0])["trace"]
        second = json.loads((await call(port, "WhoAmI", metadata=[GOOD]))[0])["trace"]
        assert len(first) == 32 and int(first, 16) and first != second != KIT_TRACE_ID
        # an invalid traceparent is ignored, as the W3C propagator does
        bad = [GOOD, ("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-01")]
        assert json.loads((await call(port, "WhoAmI", metadata=bad))[0])["trace"] not in (None, "0" * 32)
    finally:
        await server.stop(0)
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    access = next(e for e in lines if e["logger"] == "gatehouse.access" and e.get("request_id") == "req-42")
    assert access["trace_id"] == KIT_TRACE_ID and access["code"] == "OK"
    assert access["principal"] == "user:u1" and access["method"] == f"/{PROBE}/WhoAmI"


async def test_exporter_none_makes_one_trace_id_per_call_whoever_asks_first(tmp_path, log_stream):
    """The lean server span is made on first use; later reads, the call's log lines and tasks the
    call starts all see the same trace id."""
    telemetry = setup_telemetry("probe", "none")

    async def traces(request: bytes, context) -> bytes:
        child = asyncio.ensure_future(asyncio.sleep(0, result=current_trace_id()))  # copies the context
        in_child = await child
        logging.getLogger("probe.handler").warning("inside the call")
        return json.dumps([in_child, current_trace_id()]).encode()

    server, port = await start_kit(tmp_path, telemetry, {"Traces": traces})
    try:
        seen = []
        for _ in range(2):
            body, trailing = await call(port, "Traces", metadata=[GOOD])
            first, again = json.loads(body)
            assert len(first) == 32 and int(first, 16) and first == again
            seen.append((first, dict(trailing)["x-request-id"]))
        assert seen[0][0] != seen[1][0]  # each call without a traceparent starts its own trace
    finally:
        await server.stop(0)
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    for trace_id, request_id in seen:
        line = next(e for e in lines if e["logger"] == "probe.handler" and e.get("request_id") == request_id)
        assert line["trace_id"] == trace_id


async def test_exporter_none_propagates_the_trace_to_outgoing_calls(tmp_path):
    telemetry = setup_telemetry("probe", "none")
    leaf, leaf_port = await start_kit(tmp_path / "leaf", telemetry, {"WhoAmI": whoami})
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{leaf_port}", interceptors=client_interceptors(telemetry))

    async def front(request: bytes, context) -> bytes:
        rpc = channel.unary_unary(f"/{PROBE}/WhoAmI")
        return await rpc(b"", metadata=[GOOD], timeout=5)

    server, port = await start_kit(tmp_path / "front", telemetry, {"Front": front})
    try:
        body, _ = await call(port, "Front", metadata=[GOOD, ("traceparent", TRACEPARENT)])
        assert json.loads(body)["trace"] == KIT_TRACE_ID
        body, _ = await call(port, "Front", metadata=[GOOD])
        assert len(json.loads(body)["trace"]) == 32
    finally:
        await channel.close()
        await server.stop(0)
        await leaf.stop(0)


async def test_exporter_memory_keeps_spans_and_metrics_by_method_and_code(tmp_path):
    telemetry = setup_telemetry("probe", "memory")
    server, port = await start_kit(tmp_path, telemetry, {"WhoAmI": whoami, "Missing": missing})
    try:
        body, _ = await call(port, "WhoAmI", metadata=[GOOD, ("traceparent", TRACEPARENT)])
        assert json.loads(body)["trace"] == KIT_TRACE_ID
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(port, "Missing", metadata=[GOOD])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(port, "WhoAmI")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)
    spans = {
        (s.name.rsplit("/", 1)[1], s.attributes["rpc.grpc.status_code"]): s
        for s in telemetry.span_exporter.get_finished_spans()
    }
    assert set(spans) == {("WhoAmI", "OK"), ("Missing", "NOT_FOUND"), ("WhoAmI", "UNAUTHENTICATED")}
    ok = spans[("WhoAmI", "OK")]
    assert ok.parent.span_id == 0x00F067AA0BA902B7 and f"{ok.context.trace_id:032x}" == KIT_TRACE_ID
    assert not spans[("Missing", "NOT_FOUND")].status.is_ok
    counts = {(m.rsplit("/", 1)[1], code): n for (m, code), n in _request_counts(telemetry).items()}
    assert counts == {("WhoAmI", "OK"): 1, ("Missing", "NOT_FOUND"): 1, ("WhoAmI", "UNAUTHENTICATED"): 1}
