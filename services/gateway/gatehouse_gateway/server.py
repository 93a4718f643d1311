"""The gateway process: an aiohttp server in front of the gRPC services.

One handler serves every route of the :class:`~gatehouse_gateway.transcoder.RouteTable`
(no handler per RPC), plus ``/healthz``, ``/readyz`` and ``/openapi.json``. Each call
goes to the service owning the RPC's proto package over a shared ``grpc.aio``
channel with a generic unary call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate, trace

from gatehouse.kit.config import PREFIX, SERVICES, ConfigError, Settings, positive_number
from gatehouse.kit.context import CLIENT_ADDRESS_KEY, CLIENT_USER_AGENT_KEY
from gatehouse.kit.ids import new_id
from gatehouse_gateway.descriptors import DEFAULT_DESCRIPTOR_SET, Schema, load_descriptor_set
from gatehouse_gateway.errors import HttpError, http_status_of, retry_after_seconds, status_json, status_of
from gatehouse_gateway.openapi import build_openapi
from gatehouse_gateway.transcoder import Resolver, RouteTable

log = logging.getLogger("gatehouse.gateway")
access = logging.getLogger("gatehouse.access")

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID = 128
JSON = "application/json"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id, Traceparent, Tracestate"
CORS_EXPOSE_HEADERS = "X-Request-Id, Retry-After"
TRACE_HEADERS = ("traceparent", "tracestate")
READY_TIMEOUT = 1.0


@dataclass(frozen=True)
class GatewayConfig:
    """Gateway-only settings (``GATEHOUSE_GATEWAY_*``); addresses come from :class:`Settings`."""

    max_body_bytes: int = 1024 * 1024
    cors_origins: frozenset[str] = frozenset()
    timeout: float = 30.0
    trust_forwarded: bool = False
    descriptors: str = str(DEFAULT_DESCRIPTOR_SET)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"{PREFIX}GATEWAY_{name}")
            return value if value else None

        max_body_bytes = _positive("MAX_BODY_BYTES", get("MAX_BODY_BYTES"), "bytes", int, cls.max_body_bytes)
        seconds = _positive("TIMEOUT", get("TIMEOUT"), "seconds", float, cls.timeout)
        trust = get("TRUST_FORWARDED")
        origins = get("CORS_ORIGINS")
        if trust and trust.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"{PREFIX}GATEWAY_TRUST_FORWARDED: {trust!r} is not true or false")
        allowed = frozenset(o.strip().rstrip("/") for o in (origins or "").split(",") if o.strip())
        for origin in allowed:
            if origin != "*" and "://" not in origin:
                raise ConfigError(
                    f"{PREFIX}GATEWAY_CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com or *"
                )
        return cls(
            max_body_bytes=max_body_bytes,
            cors_origins=allowed,
            timeout=seconds,
            trust_forwarded=bool(trust) and trust.lower() in ("true", "1"),
            descriptors=get("DESCRIPTORS") or cls.descriptors,
        )


def _positive(name: str, text: str | None, unit: str, kind: type, default):
    return default if text is None else positive_number(f"{PREFIX}GATEWAY_{name}", text, unit, kind)


def package_resolver(settings: Settings) -> Resolver:
    """``gatehouse.<service>.v1.X`` is served by ``<service>`` at ``settings.address_of(<service>)``."""

    def resolve(service) -> str | None:
        parts = service.file.package.split(".")
        if len(parts) >= 2 and parts[0] == "gatehouse" and parts[1] in SERVICES:
            return settings.address_of(parts[1])
        return None

    return resolve


def _valid_request_id(value: str | None) -> bool:
    return bool(value) and len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable()


def _metadata_text(value: str, limit: int) -> str:
    return "".join(ch for ch in value[:limit] if 32 <= ord(ch) < 127)


class Gateway:
    """The HTTP server: one generic handler over the route table."""

    def __init__(
        self,
        routes: RouteTable,
        config: GatewayConfig,
        openapi: dict | None = None,
        tracer: trace.Tracer | None = None,
    ):
        self.routes = routes
        self.config = config
        self._tracer = tracer
        self.openapi_body = json.dumps(openapi if openapi is not None else build_openapi(routes)).encode()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, object] = {}
        self._runner: web.ServerRunner | None = None
        self.port: int | None = None
        self._fixed = {"/healthz": self._healthz, "/readyz": self._readyz, "/openapi.json": self._openapi}

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        for route in self.routes.routes:
            channel = self._channels.get(route.address)
            if channel is None:
                channel = self._channels[route.address] = grpc.aio.insecure_channel(route.address)
            if route.grpc_path not in self._calls:
                self._calls[route.grpc_path] = channel.unary_unary(
                    route.grpc_path,
                    request_serializer=route.request_class.SerializeToString,
                    response_deserializer=route.response_class.FromString,
                )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        self.port = sock.getsockname()[1]
        self._runner = web.ServerRunner(
            web.Server(self.handle, access_log=None), handle_signals=False, shutdown_timeout=5.0
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._calls.clear()

    # ------------------------------------------------------------------ requests

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request; with a tracer, inside a SERVER span continuing the caller's trace."""
        if self._tracer is None:
            return await self._handle(request)
        with self._tracer.start_as_current_span(
            f"HTTP {request.method}", context=propagate.extract(request.headers), kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.path", request.rel_url.raw_path)
            response = await self._handle(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER)
        request_id = incoming if _valid_request_id(incoming) else new_id()
        origin = request.headers.get("Origin")
        path = request.rel_url.raw_path
        headers = {REQUEST_ID_HEADER: request_id}
        try:
            fixed = self._fixed.get(path)
            if fixed is not None and request.method in ("GET", "HEAD"):
                status, body = await fixed()
            elif request.method == "OPTIONS":
                return self._preflight(request, path, origin, request_id)
            else:
                status, body = await self._transcode(request, path, request_id, headers)
        except HttpError as exc:
            status, body = exc.http_status, exc.body()
            headers.update(exc.headers)
        except Exception:
            log.exception("gateway error on %s %s", request.method, path, extra={"request_id": request_id})
            status, body = 500, status_json(_internal())
        if origin:
            headers.update(self._cors(origin))
        if access.isEnabledFor(logging.INFO):
            access.info(
                "%s %s %s",
                request.method,
                path,
                status,
                extra={
                    "http_method": request.method,
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "request_id": request_id,
                },
            )
        return web.Response(status=status, body=body, headers=headers, content_type=JSON)

    async def _transcode(self, request, path, request_id, headers) -> tuple[int, bytes]:
        route, path_vars = self.routes.match(request.method, path)
        raw = await self._read_body(request) if route.body else b""
        query = {}
        for key, value in request.rel_url.query.items():
            query.setdefault(key, []).append(value)
        message = route.build_request(path_vars, query, raw)
        call = self._calls[route.grpc_path](
            message, metadata=self._metadata(request, request_id), timeout=self.config.timeout
        )
        try:
            response = await call
        except grpc.aio.AioRpcError as err:
            _echo_request_id(err.trailing_metadata(), headers)
            status = status_of(err)
            http_status = http_status_of(err.code())
            if http_status == 429:
                retry = retry_after_seconds(status)
                if retry is not None:
                    headers["Retry-After"] = str(retry)
            return http_status, status_json(status)
        _echo_request_id(await call.trailing_metadata(), headers)
        return 200, route.render(response)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.config.max_body_bytes
        too_large = HttpError(413, f"the request body is larger than {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _metadata(self, request: web.BaseRequest, request_id: str) -> tuple:
        md = [(REQUEST_ID_KEY, request_id)]
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            if not authorization.isascii() or not authorization.isprintable():
                raise HttpError(401, "the Authorization header is not valid", code=16)
            md.append(("authorization", authorization))
        client = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        if self.config.trust_forwarded and forwarded:
            client = f"{forwarded}, {client}" if client else forwarded
        if client:
            md.append((CLIENT_ADDRESS_KEY, _metadata_text(client, 500)))
        agent = request.headers.get("User-Agent")
        if agent:
            md.append((CLIENT_USER_AGENT_KEY, _metadata_text(agent, 500)))
        if self._tracer is not None:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # the gateway's span becomes the services' parent
            md.extend(carrier.items())
        else:
            for name in TRACE_HEADERS:
                value = request.headers.get(name)
                if value and value.isascii() and value.isprintable():
                    md.append((name, value))
        return tuple(md)

    # ------------------------------------------------------------------ CORS

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.config.cors_origins
        return "*" in allowed or origin.rstrip("/") in allowed

    def _cors(self, origin: str) -> dict[str, str]:
        if not self._origin_allowed(origin):
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": "*" if "*" in self.config.cors_origins else origin,
            "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
            "Vary": "Origin",
        }

    def _preflight(self, request, path: str, origin: str | None, request_id: str) -> web.Response:
        methods = self.routes.methods_for(path) or (["GET"] if path in self._fixed else [])
        headers = {REQUEST_ID_HEADER: request_id}
        if not methods:
            err = HttpError(404, f"no route for {path}", code=5)
            return web.Response(status=404, body=err.body(), headers=headers, content_type=JSON)
        if origin is None:
            headers["Allow"] = ", ".join([*methods, "OPTIONS"])
            return web.Response(status=204, headers=headers)
        if not self._origin_allowed(origin):
            err = HttpError(403, f"origin {origin} is not allowed", code=7)
            headers["Vary"] = "Origin"
            return web.Response(status=403, body=err.body(), headers=headers, content_type=JSON)
        headers.update(self._cors(origin))
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(methods),
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
        return web.Response(status=204, headers=headers)

    # ------------------------------------------------------------------ fixed endpoints

    async def _healthz(self) -> tuple[int, bytes]:
        return 200, b'{"status":"SERVING"}'

    async def _readyz(self) -> tuple[int, bytes]:
        """SERVING when every backend answers ``grpc.health.v1`` SERVING for the overall service."""
        addresses = sorted(self._channels)
        answers = await asyncio.gather(*(self._backend_health(a) for a in addresses))
        backends = dict(zip(addresses, answers, strict=True))
        ready = all(a == "SERVING" for a in answers)
        body = {"status": "SERVING" if ready else "NOT_SERVING", "backends": backends}
        return (200 if ready else 503), json.dumps(body).encode()

    async def _backend_health(self, address: str) -> str:
        stub = health_pb2_grpc.HealthStub(self._channels[address])
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=READY_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            return err.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    async def _openapi(self) -> tuple[int, bytes]:
        return 200, self.openapi_body


def _echo_request_id(trailing, headers: dict[str, str]) -> None:
    for key, value in trailing or ():
        if key == REQUEST_ID_KEY:
            headers[REQUEST_ID_HEADER] = value if isinstance(value, str) else value.decode()
            return


def _internal():
    from google.rpc import code_pb2, status_pb2

    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def build_gateway(settings: Settings, config: GatewayConfig, resolve: Resolver | None = None) -> Gateway:
    """The gateway for ``settings``: routes from the descriptor set, traces when an exporter is set."""
    schema = Schema.from_descriptor_set(load_descriptor_set(config.descriptors))
    routes = RouteTable(schema, resolve or package_resolver(settings))
    for note in routes.skipped:
        log.debug("not served: %s", note)
    tracer = None
    if settings.otel_exporter != "none":
        from gatehouse.kit.telemetry import setup_telemetry

        tracer = setup_telemetry("gateway", settings.otel_exporter, settings.otel_endpoint).tracer
    return Gateway(routes, config, tracer=tracer)


async def serve(settings: Settings, config: GatewayConfig) -> int:
    gateway = build_gateway(settings, config)
    host, _, port = settings.listen_address.rpartition(":")
    await gateway.start(host, int(port))
    log.info("gateway listening on %s:%s with %d routes", host, gateway.port, len(gateway.routes.routes))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway stopping")
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(gateway.stop(), timeout=settings.shutdown_grace)
    return 0


def run() -> int:
    try:
        settings = Settings.from_env("gateway")
        config = GatewayConfig.from_env()
    except ConfigError as exc:
        print(f"gatehouse-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    from gatehouse.kit.app import run_on_loop
    from gatehouse.kit.logs import setup_logging

    setup_logging("gateway", settings.log_level, settings.log_format)
    try:
        return run_on_loop(serve(settings, config), settings.event_loop)
    except FileNotFoundError as exc:
        print(f"gatehouse-gateway: {exc}", file=sys.stderr)
        return 2
