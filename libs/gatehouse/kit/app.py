"""Process entry point shared by the services: ``python -m gatehouse_<service>``.

Reads configuration, sets up logs and telemetry, builds the service's
:class:`~gatehouse.kit.server.ServiceSpec`, and serves until a signal.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from gatehouse.kit.config import ConfigError, Settings
from gatehouse.kit.server import GatehouseServer, ServiceSpec, serve_until_signal

SpecBuilder = Callable[[Settings, "Runtime"], ServiceSpec]

# gRPC's default reconnect back-off grows to 120 s; a peer that was down for a while
# (audit, authz) is then noticed late. Cap it so relays and checks recover within seconds.
PEER_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Runtime:
    """What a service's builder gets besides settings: telemetry and peer channels."""

    def __init__(self, settings: Settings):
        from gatehouse.kit.telemetry import client_interceptors, setup_telemetry

        self.settings = settings
        self.telemetry = setup_telemetry(settings.service, settings.otel_exporter, settings.otel_endpoint)
        self._client_interceptors = client_interceptors(self.telemetry)
        self._tokens = None

    def channel(self, peer: str):
        """A grpc.aio channel to a peer service, with trace propagation."""
        import grpc

        return grpc.aio.insecure_channel(
            self.settings.address_of(peer),
            interceptors=list(self._client_interceptors),
            options=PEER_CHANNEL_OPTIONS,
        )

    def service_tokens(self):
        """This service's bearer-token source for calls to authz and audit (one per process)."""
        if self._tokens is None:
            from gatehouse.kit.service_auth import ServiceTokenSource, identity_token_fetch, load_credentials

            settings = self.settings
            self._tokens = ServiceTokenSource(
                identity_token_fetch(
                    self.channel("identity"), lambda: load_credentials(settings.data_dir, settings.service)
                )
            )
        return self._tokens

    def server_interceptors(self):
        from gatehouse.kit.telemetry import ServerTelemetryInterceptor

        return [ServerTelemetryInterceptor(self.telemetry)]


def build_server(settings: Settings, build: SpecBuilder) -> GatehouseServer:
    """Wire a :class:`GatehouseServer` for ``settings`` (used by ``main`` and by tests)."""
    from gatehouse.kit.peers import identity_token_verifier

    runtime = Runtime(settings)
    spec = build(settings, runtime)
    verifier = spec.verifier or identity_token_verifier(settings, runtime.channel("identity"))
    return GatehouseServer(
        settings,
        spec,
        verifier=verifier,
        extra_interceptors=runtime.server_interceptors(),
        peer_channel=lambda address: runtime.channel(_peer_of(settings, address)),
    )


def _peer_of(settings: Settings, address: str) -> str:
    for name, addr in settings.addresses.items():
        if addr == address:
            return name
    raise KeyError(address)


def run_service(service: str, build: SpecBuilder) -> None:
    """Run one service until SIGTERM/SIGINT; exits 2 on a configuration error."""
    try:
        settings = Settings.from_env(service)
    except ConfigError as exc:
        print(f"gatehouse-{service}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    from gatehouse.kit.logs import setup_logging

    setup_logging(service, settings.log_level, settings.log_format)

    async def _main() -> int:
        try:
            server = build_server(settings, build)
        except ConfigError as exc:
            print(f"gatehouse-{service}: configuration error: {exc}", file=sys.stderr)
            return 2
        return await serve_until_signal(server)

    sys.exit(run_on_loop(_main(), settings.event_loop))


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: str = "uvloop") -> int:
    """Run ``main`` to completion on a new event loop of the kind ``GATEHOUSE_EVENT_LOOP`` names.

    ``uvloop`` (the default) is the same asyncio API on a cheaper loop: every RPC's wake-ups,
    futures and callbacks go through it, and a no-op grpc.aio call costs about 15 % less server CPU
    on it (docs/decisions.md). ``asyncio`` is the standard library's loop.
    """
    factory = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
