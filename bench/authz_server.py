"""Server processes for bench_authz.py (not a benchmark itself).

``python bench/authz_server.py noop``  — a bare grpc.aio unary server whose one method returns
an empty message: the baseline cost of a Python unary RPC (standard asyncio loop).
``noop-uvloop`` is the same server on uvloop, the loop the services run on by default, and
``noop-service`` the same again in a process set up as the services' are (uvloop and
``gatehouse.kit.grpc_settings``): the baseline with everything but the kit and the check.

``python bench/authz_server.py authz`` — the real authz server (``gatehouse_authz.server.build``,
the kit's interceptors, token verification, health, follower) on ``GATEHOUSE_DATABASE_URL``,
with the services' grpc settings, trusting the public key in ``$BENCH_JWK`` (so the benchmark can mint real tokens without
identity running).

Each prints one JSON line on stdout once it serves: ``{"port": …, "load_seconds": …}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

if __name__ == "__main__" and sys.argv[1:2] in (["authz"], ["noop-service"]):
    # as `python -m gatehouse_<service>` does: grpc core reads these when grpc is imported
    from gatehouse.kit.grpc_settings import apply_grpc_defaults

    apply_grpc_defaults()

import grpc

NOOP_METHOD = "/bench.v1.Noop/Call"


def add_noop(server: grpc.aio.Server) -> None:
    async def call(_request: bytes, _context) -> bytes:
        return b""

    handler = grpc.unary_unary_rpc_method_handler(call)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.v1.Noop", {"Call": handler}),)
    )


async def serve_noop() -> None:
    server = grpc.aio.server()
    add_noop(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port, "load_seconds": 0.0}), flush=True)
    await server.wait_for_termination()


def scoped(inner, verify, header_of):
    """The per-call work of the kit's Core + Auth interceptors on the success path, as one coroutine:
    request id, bearer token → principal, domain errors → status. ``header_of(context)`` gives the
    authorization header."""
    from gatehouse.kit import errors
    from gatehouse.kit.context import principal_var, request_id_var
    from gatehouse.kit.ids import new_id
    from gatehouse.kit.interceptors import parse_bearer
    from gatehouse.kit.status import to_grpc_status, to_rpc_status

    async def call(request, context):
        request_id = new_id()
        context.set_trailing_metadata((("x-request-id", request_id),))
        rid = request_id_var.set(request_id)
        try:
            who = principal_var.set(await verify(parse_bearer(header_of(context))))
            try:
                return await inner(request, context)
            finally:
                principal_var.reset(who)
        except errors.GatehouseError as exc:
            await context.abort_with_status(to_grpc_status(to_rpc_status(exc)))
        finally:
            request_id_var.reset(rid)

    return call


def _authorization(metadata) -> str | None:
    return next((v for k, v in metadata or () if k == "authorization"), None)


class LeanInterceptor(grpc.aio.ServerInterceptor):
    """Variant ``lean``: one interceptor doing what CoreInterceptor + AuthInterceptor do."""

    def __init__(self, verify):
        self.verify = verify

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        header = _authorization(details.invocation_metadata)
        return grpc.unary_unary_rpc_method_handler(
            scoped(handler.unary_unary, self.verify, lambda _context: header),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class WrappingRegistrar:
    """Variant ``registered``: no interceptor at all; each unary handler is wrapped ONCE when the
    servicer is registered, so grpc.aio keeps its fast path (no per-call handler lookup in Python)."""

    def __init__(self, server: grpc.aio.Server, verify):
        self.server, self.verify = server, verify

    def _wrap(self, handlers: dict) -> dict:
        def header_of(context):
            return _authorization(context.invocation_metadata())

        return {
            name: grpc.unary_unary_rpc_method_handler(
                scoped(h.unary_unary, self.verify, header_of),
                request_deserializer=h.request_deserializer,
                response_serializer=h.response_serializer,
            )
            if h.unary_unary is not None
            else h
            for name, h in handlers.items()
        }

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        wrapped = self._wrap(handlers)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        self.server.add_registered_method_handlers(service, wrapped)


async def _serve_variant(server, spec, settings, found) -> None:
    port = server.add_insecure_port(settings.listen_address)
    await server.start()
    for hook in spec.on_start:
        await hook()
    background = [asyncio.create_task(hook()) for hook in spec.background]
    print(json.dumps({"port": port, "load_seconds": found["follower"].load_seconds}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for task in background:
            task.cancel()


async def serve_authz() -> None:
    from gatehouse.kit.app import build_server
    from gatehouse.kit.auth import JwksCache, TokenVerifier
    from gatehouse.kit.config import Settings
    from gatehouse.kit.logs import setup_logging
    from gatehouse_authz.server import CachedVerifier, build

    jwk = json.loads(os.environ["BENCH_JWK"])
    if os.environ.get("BENCH_REUSEPORT") == "1":
        # Measurement variant (bench/bench_authz.py --variants): several processes on one port.
        # grpc takes the first value of a repeated option, so this one wins over the kit's 0.
        plain = grpc.aio.server

        def server_sharing_the_port(*args, options=(), **kwargs):
            return plain(*args, options=[("grpc.so_reuseport", 1), *options], **kwargs)

        grpc.aio.server = server_sharing_the_port

    async def fetch() -> list[dict]:
        return [jwk]

    verifier = TokenVerifier(JwksCache(fetch), issuer="gatehouse", audience="gatehouse").verify
    settings = Settings.from_env("authz")
    setup_logging("authz", "WARNING", "text")
    found = {}

    def bench_build(settings, runtime):
        spec = build(settings, runtime)
        spec.verifier = CachedVerifier(verifier)  # as in production, over the benchmark's key
        spec.depends_on = ()  # identity is not running in the benchmark
        register = spec.register

        def register_with_noop(server):
            register(server)
            add_noop(server)  # the no-op method behind the same kit interceptors (cost breakdown)

        spec.register = register_with_noop
        found["follower"] = next(h.__self__ for h in spec.on_start if getattr(h, "__name__", "") == "load")
        return spec

    if os.environ.get("BENCH_CHAIN") == "lean":
        # Measurement variant (a proposal for the kit, not what runs in production): request id,
        # token check, principal and error mapping in ONE interceptor without telemetry, to show
        # what the per-call chain costs compared with the kit's three nested interceptors.
        from gatehouse.kit.app import Runtime

        spec = bench_build(settings, Runtime(settings))
        server = grpc.aio.server(interceptors=[LeanInterceptor(spec.verifier)])
        spec.register(server)
        await _serve_variant(server, spec, settings, found)
    if os.environ.get("BENCH_CHAIN") == "registered":
        from gatehouse.kit.app import Runtime

        spec = bench_build(settings, Runtime(settings))
        server = grpc.aio.server()
        spec.register(WrappingRegistrar(server, spec.verifier))
        await _serve_variant(server, spec, settings, found)
    if os.environ.get("BENCH_SAMPLER") == "off":
        # Measurement variant: the kit's interceptors as they are, but spans not recorded (sampler
        # ALWAYS_OFF: trace ids still made and propagated, nothing kept) — what exporter "none" could do.
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

        from gatehouse.kit.app import Runtime
        from gatehouse.kit.server import GatehouseServer

        runtime = Runtime(settings)
        runtime.telemetry.tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
        spec = bench_build(settings, runtime)
        server = GatehouseServer(
            settings, spec, verifier=spec.verifier, extra_interceptors=runtime.server_interceptors()
        )
        port = await server.start()
        await server.wait_started()
        print(json.dumps({"port": port, "load_seconds": found["follower"].load_seconds}), flush=True)
        await asyncio.Event().wait()
    if os.environ.get("BENCH_TELEMETRY", "1") == "0":
        # Measurement variant: the same server without the kit's telemetry interceptor.
        from gatehouse.kit.app import Runtime
        from gatehouse.kit.server import GatehouseServer

        spec = bench_build(settings, Runtime(settings))
        server = GatehouseServer(settings, spec, verifier=spec.verifier)
    else:
        server = build_server(settings, bench_build)
    port = await server.start()
    await server.wait_started()
    print(json.dumps({"port": port, "load_seconds": found["follower"].load_seconds}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    kind = sys.argv[1]
    from gatehouse.kit.app import run_on_loop
    from gatehouse.kit.config import Settings

    try:
        if kind == "noop":  # the baseline: grpc.aio on the standard asyncio loop
            asyncio.run(serve_noop())
        elif kind in ("noop-uvloop", "noop-service"):  # on the services' loop (and grpc settings)
            run_on_loop(serve_noop(), "uvloop")
        else:  # the loop GATEHOUSE_EVENT_LOOP selects, as in production (uvloop by default)
            run_on_loop(serve_authz(), Settings.from_env("authz").event_loop)
    except KeyboardInterrupt:
        pass
