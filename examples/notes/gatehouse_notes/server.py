"""Wiring of the notes service: settings, database, Gatehouse clients, guard, gRPC server.

Environment (same conventions as Gatehouse's own services):

| variable | default | meaning |
|---|---|---|
| `GATEHOUSE_NOTES_LISTEN_ADDRESS` | `127.0.0.1:50060` | where the notes service listens |
| `GATEHOUSE_NOTES_DATABASE_URL` | `sqlite+aiosqlite:///$DATA_DIR/notes.db` | its own database (or `postgresql://…`) |
| `GATEHOUSE_AUTHZ_ADDRESS`, `GATEHOUSE_IDENTITY_ADDRESS`, `GATEHOUSE_AUDIT_ADDRESS` | Gatehouse defaults | where Gatehouse runs |
| `GATEHOUSE_SERVICE_CLIENT_ID`, `GATEHOUSE_SERVICE_CLIENT_SECRET` | — | the notes service's account (else `$DATA_DIR/credentials/notes.json`) |
| `GATEHOUSE_AUTHZ_TIMEOUT` | `0.5` | seconds to wait for authz before refusing with UNAVAILABLE |
| `GATEHOUSE_NOTES_CACHE_TTL` | `1.0` | seconds a decision may be reused (only while authz's Watch stream is live) |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gatehouse.client import AuthzClient, Guard, ServiceAccountCredentials, identity_verifier
from gatehouse.client.channels import open_channel
from gatehouse.kit import audit_log
from gatehouse.kit.config import DEFAULT_ADDRESSES, _database_url
from gatehouse.kit.db import Database
from gatehouse.kit.interceptors import CoreInterceptor
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse.kit.server import _enable_reflection
from gatehouse.kit.telemetry import ServerTelemetryInterceptor, setup_telemetry
from gatehouse_notes.api import NotesServicer
from gatehouse_notes.contracts import pb, pb_grpc
from gatehouse_notes.service import Notes

log = logging.getLogger("gatehouse_notes")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NotesService"].full_name
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True)
class NotesSettings:
    listen_address: str
    database_url: str
    authz_address: str
    identity_address: str
    audit_address: str
    data_dir: pathlib.Path
    authz_timeout: float = 0.5
    cache_ttl: float = 1.0
    token_issuer: str = "gatehouse"
    token_audience: str = "gatehouse"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotesSettings:
        env = os.environ if environ is None else environ
        data_dir = pathlib.Path(env.get("GATEHOUSE_DATA_DIR") or ".gatehouse").resolve()

        def address(service: str) -> str:
            return env.get(f"GATEHOUSE_{service.upper()}_ADDRESS") or DEFAULT_ADDRESSES[service]

        return cls(
            listen_address=env.get("GATEHOUSE_NOTES_LISTEN_ADDRESS") or "127.0.0.1:50060",
            database_url=_database_url(
                "GATEHOUSE_NOTES_DATABASE_URL",
                env.get("GATEHOUSE_NOTES_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir / 'notes.db'}",
            ),
            authz_address=address("authz"),
            identity_address=address("identity"),
            audit_address=address("audit"),
            data_dir=data_dir,
            authz_timeout=float(env.get("GATEHOUSE_AUTHZ_TIMEOUT") or 0.5),
            cache_ttl=float(env.get("GATEHOUSE_NOTES_CACHE_TTL") or 1.0),
            token_issuer=env.get("GATEHOUSE_TOKEN_ISSUER") or "gatehouse",
            token_audience=env.get("GATEHOUSE_TOKEN_AUDIENCE") or "gatehouse",
        )


class NotesServer:
    """The running notes service. ``verifier``/``service_token`` default to identity's JWKS and the
    service account; tests inject TokenMint's."""

    def __init__(
        self, settings: NotesSettings, *, verifier=None, service_token=None, deliver_audit: bool = True
    ):
        self.settings = settings
        self._verifier = verifier
        self._service_token = service_token
        self._deliver_audit = deliver_audit
        self._tasks: list[asyncio.Task] = []
        self._channels: list[grpc.aio.Channel] = []
        self.port: int | None = None

    def _channel(self, address: str, token_source=None) -> grpc.aio.Channel:
        channel, _ = open_channel(
            address, token_source=lambda: token_source, timeout=None, telemetry=self.telemetry
        )
        self._channels.append(channel)
        return channel

    async def start(self) -> int:
        s = self.settings
        await asyncio.to_thread(upgrade_to_head, MIGRATIONS, s.database_url)
        self.telemetry = setup_telemetry("notes", os.environ.get("GATEHOUSE_OTEL_EXPORTER", "none"))
        self.db = Database(s.database_url)
        identity = self._channel(s.identity_address)
        token = self._service_token or ServiceAccountCredentials.from_environment(
            identity, s.data_dir, "notes"
        )
        # The guard's authz client authenticates as the notes service (service accounts may check anyone).
        self.authz = AuthzClient(
            self._channel(s.authz_address), token_source=token, timeout=s.authz_timeout, cache_ttl=s.cache_ttl
        )
        self.verifier = self._verifier or identity_verifier(
            identity, issuer=s.token_issuer, audience=s.token_audience, token_source=token
        )
        self.guard = Guard(self.authz, self.verifier)
        self.health = health.aio.HealthServicer()
        server = grpc.aio.server(
            interceptors=[
                ServerTelemetryInterceptor(self.telemetry),
                CoreInterceptor(),
                self.guard.interceptor(),
            ]
        )
        pb_grpc.add_NotesServiceServicer_to_server(NotesServicer(Notes(self.db, self.authz)), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        # reflection v1alpha and v1 (buf curl asks for v1 first), as the kit's own servers do
        _enable_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        self.port = server.add_insecure_port(s.listen_address)
        if not self.port:
            raise OSError(f"cannot listen on {s.listen_address}")
        await server.start()
        self._server = server
        self._tasks.append(asyncio.create_task(self.authz.follow_changes(), name="notes-authz-watch"))
        if self._deliver_audit:
            relay = audit_log.audit_relay(self.db, self._channel(s.audit_address), token)
            self._tasks.append(asyncio.create_task(relay.run(), name="notes-audit-relay"))
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("notes listening on %s", s.listen_address)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self.verifier, "close"):
            await self.verifier.close()
        for channel in self._channels:
            await channel.close()
        await self.db.dispose()


async def serve(settings: NotesSettings) -> None:
    server = NotesServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    logging.basicConfig(level=os.environ.get("GATEHOUSE_LOG_LEVEL", "INFO"))
    asyncio.run(serve(NotesSettings.from_env()))
