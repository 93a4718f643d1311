"""The grpc.aio server factory shared by all four services.

A service describes itself with a :class:`ServiceSpec` (its servicers, public
methods, start-up hooks such as migrations, background tasks such as outbox
relays, and the peers it depends on) and calls :func:`run`. The kit then:

- listens on ``GATEHOUSE_LISTEN_ADDRESS`` with the interceptor chain
  (telemetry → request id / errors / access log → authentication);
- serves ``grpc.health.v1`` (overall status ``""`` and one per service name):
  ``NOT_SERVING`` until the start-up hooks ran and every peer in
  ``depends_on`` reports ``SERVING``; then ``SERVING``. Until then every other call
  is answered ``UNAVAILABLE`` (reason ``SERVICE_STARTING``), so nothing is served
  from a half-migrated database or a half-loaded index;
- serves server reflection (``grpc.reflection.v1`` and ``v1alpha``) so grpcurl
  and ``buf curl`` work without proto files;
- on SIGTERM/SIGINT reports ``NOT_SERVING``, stops accepting calls, lets
  in-flight RPCs finish within ``GATEHOUSE_SHUTDOWN_GRACE`` and runs the stop hooks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from gatehouse.kit.config import Settings
from gatehouse.kit.interceptors import KitInterceptor, Verifier

log = logging.getLogger("gatehouse.server")

Hook = Callable[[], Awaitable[None]]
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


@dataclass
class ServiceSpec:
    """What a service hands to the kit."""

    name: str
    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    public_methods: Iterable[str] = ()
    on_start: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    background: list[Hook] = field(default_factory=list)
    depends_on: Sequence[str] = ()
    verifier: Verifier | None = None


class GatehouseServer:
    """One running service: server, health, reflection and life cycle."""

    def __init__(
        self,
        settings: Settings,
        spec: ServiceSpec,
        *,
        verifier: Verifier,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        peer_channel: Callable[[str], grpc.aio.Channel] | None = None,
        dependency_poll: float = 0.25,
    ):
        self.settings = settings
        self.spec = spec
        self.health = health.aio.HealthServicer()
        self._verifier = verifier
        self._extra = list(extra_interceptors)
        self._peer_channel = peer_channel or (lambda addr: grpc.aio.insecure_channel(addr))
        self._poll = dependency_poll
        self._server: grpc.aio.Server | None = None
        self._startup: asyncio.Task | None = None
        self._background: list[asyncio.Task] = []
        self.port: int | None = None
        self.ready = asyncio.Event()

    async def start(self) -> int:
        """Bind and start serving (health says NOT_SERVING until start-up completes)."""
        server = grpc.aio.server(interceptors=self._interceptors(), options=[("grpc.so_reuseport", 0)])
        registrar = GenericOnly(server)
        self.spec.register(registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        names = [*self.spec.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        _enable_reflection(names, registrar)
        for name in ("", *self.spec.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = server.add_insecure_port(self.settings.listen_address)
        if not self.port:
            raise OSError(f"cannot listen on {self.settings.listen_address}")
        await server.start()
        self._server = server
        log.info(
            "%s listening on %s", self.spec.name, self.settings.listen_address, extra={"port": self.port}
        )
        self._startup = asyncio.create_task(self._complete_startup(), name=f"{self.spec.name}-startup")
        return self.port

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The extra interceptors, then ONE kit interceptor doing telemetry (when the innermost extra
        is the kit's telemetry interceptor, it is folded in), request id / errors / access log and
        authentication: one handler wrapping per method instead of three nested ones per call."""
        extra = list(self._extra)
        telemetry = None
        last = extra[-1] if extra else None
        if isinstance(last, KitInterceptor) and not last.core and last.verify is None:
            telemetry = extra.pop().telemetry
        kit = KitInterceptor(
            verify=self._verifier,
            public_methods=self.spec.public_methods,
            telemetry=telemetry,
            ready=self.ready,  # calls other than health and reflection wait for start-up
        )
        return [*extra, kit]

    async def _complete_startup(self) -> None:
        for hook in self.spec.on_start:
            await hook()
        for peer in self.spec.depends_on:
            await self._wait_for_peer(peer)
        for hook in self.spec.background:
            self._background.append(asyncio.create_task(_supervised(hook), name=f"{self.spec.name}-bg"))
        for name in ("", *self.spec.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.ready.set()
        log.info("%s is SERVING", self.spec.name)

    async def _wait_for_peer(self, peer: str) -> None:
        address = self.settings.address_of(peer)
        channel = self._peer_channel(address)
        stub = health_pb2_grpc.HealthStub(channel)
        waited = 0.0
        try:
            while True:
                try:
                    answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if waited and waited % 5 < self._poll:
                    log.info("%s waiting for %s at %s", self.spec.name, peer, address)
                await asyncio.sleep(self._poll)
                waited += self._poll
        finally:
            await channel.close()

    async def wait_started(self) -> None:
        """Wait until start-up completed (raises what a start-up hook raised)."""
        assert self._startup is not None
        await self._startup

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight RPCs, then run the stop hooks."""
        grace = self.settings.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._startup and not self._startup.done():
            self._startup.cancel()
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for hook in reversed(self.spec.on_stop):
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        log.info("%s stopped", self.spec.name)


class GenericOnly:
    """A grpc.aio server as the generated ``add_*Servicer_to_server`` functions see it: their
    handlers are added as generic handlers only, never as "registered methods".

    Generated code adds every service both ways. grpc.aio's serving loop keeps one pending
    request per registered method (plus one for all generic ones) and waits on all of them with
    ``asyncio.wait`` for every call it accepts: Python work per call that grows with the number of
    methods (authz's 13, health's 2 and reflection's 1 made it 2 waits over ~10 futures per
    call, about a third of a check's Python time in a profile). Served through the generic
    handler instead, a call costs one dictionary lookup per service before its own.
    """

    def __init__(self, server: grpc.aio.Server):
        self._server = server
        self._generic: list = []

    def add_generic_rpc_handlers(self, generic_rpc_handlers) -> None:
        self._generic.extend(generic_rpc_handlers)
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        """Added as a generic handler, unless the generic handlers added so far already serve
        every one of these methods (generated code adds each service both ways): a copy would be
        one more lookup per call for every service added after it."""
        methods = [f"/{service_name}/{name}" for name in method_handlers]
        if not all(self._serves(method) for method in methods):
            self.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service_name, method_handlers),)
            )

    def _serves(self, method: str) -> bool:
        details = _HandlerLookup(method, ())
        return any(handler.service(details) is not None for handler in self._generic)

    def __getattr__(self, name: str):
        return getattr(self._server, name)


class _HandlerLookup(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata: tuple):
        self.method, self.invocation_metadata = method, invocation_metadata


async def _supervised(hook: Hook) -> None:
    """Run a background task; a crash is logged and the task restarted after a pause."""
    while True:
        try:
            await hook()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task crashed; restarting in 1 s")
            await asyncio.sleep(1.0)


def _enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1alpha, and v1 too: the two protocols are wire-identical."""
    servicer = reflection.aio.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),)
    )


async def serve_until_signal(server: GatehouseServer) -> int:
    """Start ``server`` and serve until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    startup = asyncio.ensure_future(server.wait_started())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({startup, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if startup in done and startup.exception() is not None:
        log.error("start-up failed: %s", startup.exception(), exc_info=startup.exception())
        stopper.cancel()
        await server.stop(0)
        return 1
    await stopper
    log.info("signal received, draining")
    await server.stop()
    return 0
