"""identity + authz + audit + tenancy together in-process, each with its own database.

Usage (pytest-asyncio)::

    from gatehouse.testing.cluster import running_cluster

    async def test_something(tmp_path):
        async with running_cluster(tmp_path) as cluster:
            await cluster.setup.Bootstrap(...)            # tenancy's stubs: setup, orgs, workspaces
            await cluster.identity.login("ann@example.com")  # the identity harness
            await cluster.audit.stop()                     # audit down: producers keep working
            await cluster.audit.start()                    # same database, keys and port
            await cluster.wait_delivered()                 # every producer's audit outbox drained

Built on :func:`gatehouse.testing.identity.running_identity` (identity and authz,
SQLite files in ``tmp_path/identity``). Audit listens on the address identity
and authz were already given (``identity.audit_address``), so it can be stopped
and started again on the same port; its chain and checkpoint keys are generated
once per cluster and kept across restarts. Tenancy runs through
``gatehouse.kit.app.build_server`` like in production. Every token is real
(identity's), every relay is the producer's own ``audit_relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import sqlalchemy as sa

from gatehouse.kit.app import build_server
from gatehouse.kit.db import Database
from gatehouse.testing.identity import IdentityHarness, running_identity

__all__ = ["AuditServer", "Cluster", "list_events", "pending_audit", "query", "running_cluster", "wait_for"]


async def wait_for(predicate: Callable[[], Awaitable[object]], timeout: float = 20.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        await asyncio.sleep(interval)


async def query(database_url: str, sql: str, **params) -> list:
    """Rows of one SQL statement against a service's database (read-only inspection in tests)."""
    db = Database(database_url)
    try:
        async with db.unit_of_work() as uow:
            return list((await uow.session.execute(sa.text(sql), params)).all())
    finally:
        await db.dispose()


async def pending_audit(database_url: str) -> int:
    """Audit events still waiting in a producer's outbox (topic ``audit``, not delivered)."""
    rows = await query(
        database_url, "SELECT count(*) FROM outbox WHERE topic = 'audit' AND delivered_at IS NULL"
    )
    return rows[0][0]


async def list_events(stub, metadata, page_size: int = 100, max_pages: int = 100, **filter_fields) -> list:
    """Every event ``ListEvents`` answers for the filter, all pages (newest first)."""
    from gatehouse.audit.v1 import audit_service_pb2 as pb

    events, token = [], ""
    for _ in range(max_pages):
        answer = await stub.ListEvents(
            pb.ListEventsRequest(
                filter=pb.EventFilter(**filter_fields), page_size=page_size, page_token=token
            ),
            metadata=metadata,
            timeout=10,
        )
        events += list(answer.events)
        token = answer.next_page_token
        if not token:
            return events
    raise AssertionError(f"ListEvents did not end within {max_pages} pages")


class AuditServer:
    """A real audit server on a fixed address, restartable on the same database and keys."""

    def __init__(self, identity: IdentityHarness, data_dir: pathlib.Path, database_url: str):
        from gatehouse.audit.v1 import audit_service_pb2_grpc
        from gatehouse_audit.adapters.config import generate_keys_env

        self.identity = identity
        self.data_dir = pathlib.Path(data_dir)
        self.database_url = database_url
        self.address = identity.audit_address
        self.keys = generate_keys_env()
        self.server = None
        self._stub_class = audit_service_pb2_grpc.AuditServiceStub
        self.channel = None
        self.stub = None

    @property
    def running(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        from gatehouse_audit.server import build

        settings = await self.identity.peer_settings(
            self.data_dir, "audit", listen_address=self.address, database_url=self.database_url
        )
        server = build_server(settings, lambda s, r: build(s, r, environ=self.keys))
        await server.start()
        self.server = server
        await server.wait_started()
        # A fresh client channel with subchannels of its own: gRPC shares subchannels per process, and
        # the one to this address may still be in the reconnect back-off the producers' relays caused.
        if self.channel is not None:
            await self.channel.close()
        self.channel = grpc.aio.insecure_channel(
            self.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.stub = self._stub_class(self.channel)

    async def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop(0)

    async def close(self) -> None:
        await self.stop()
        if self.channel is not None:
            await self.channel.close()


class Cluster:
    """Handles on the four running services."""

    def __init__(self, identity: IdentityHarness, audit: AuditServer, tenancy_url: str):
        from gatehouse.tenancy.v1 import (
            organization_service_pb2_grpc,
            setup_service_pb2_grpc,
            workspace_service_pb2_grpc,
        )

        self.identity = identity
        self.audit = audit
        self.tenancy_url = tenancy_url
        self.tenancy = None
        self.channel = None
        self._stubs = (setup_service_pb2_grpc, organization_service_pb2_grpc, workspace_service_pb2_grpc)

    async def start_tenancy(self, data_dir: pathlib.Path) -> None:
        from gatehouse_tenancy.server import build

        settings = await self.identity.peer_settings(data_dir, "tenancy", database_url=self.tenancy_url)
        self.tenancy = build_server(settings, build)
        port = await self.tenancy.start()
        await self.tenancy.wait_started()
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        setup, orgs, workspaces = self._stubs
        self.setup = setup.SetupServiceStub(self.channel)
        self.orgs = orgs.OrganizationServiceStub(self.channel)
        self.workspaces = workspaces.WorkspaceServiceStub(self.channel)

    @property
    def producer_databases(self) -> dict[str, str]:
        """The database of every audit producer (its outbox lives there)."""
        return {
            "identity": self.identity.identity.database.url,
            "authz": f"sqlite+aiosqlite:///{self.identity.data_dir / 'authz.db'}",
            "tenancy": self.tenancy_url,
        }

    async def pending(self) -> dict[str, int]:
        """Undelivered audit events per producer."""
        return {name: await pending_audit(url) for name, url in self.producer_databases.items()}

    async def wait_delivered(self, timeout: float = 20.0) -> dict[str, int]:
        """Wait (bounded) until every producer's audit outbox is drained; returns what is still pending."""

        async def drained():
            left = await self.pending()
            return left if not any(left.values()) else None

        return await wait_for(drained, timeout) or await self.pending()

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.tenancy is not None:
            await self.tenancy.stop(0)
        await self.audit.close()


@contextlib.asynccontextmanager
async def running_cluster(
    tmp_path: pathlib.Path,
    *,
    tenancy_database_url: str | None = None,
    audit_database_url: str | None = None,
    start_audit: bool = True,
    start_tenancy: bool = True,
) -> AsyncIterator[Cluster]:
    """Start identity, authz, audit (unless ``start_audit=False``) and tenancy; stop them on exit.

    Databases default to SQLite files under ``tmp_path``.
    """
    tmp_path = pathlib.Path(tmp_path)
    tenancy_url = tenancy_database_url or f"sqlite+aiosqlite:///{tmp_path / 'tenancy.db'}"
    audit_url = audit_database_url or f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    async with running_identity(tmp_path, with_authz=True) as identity:
        cluster = Cluster(identity, AuditServer(identity, tmp_path / "audit", audit_url), tenancy_url)
        try:
            if start_audit:
                await cluster.audit.start()
            if start_tenancy:
                await cluster.start_tenancy(tmp_path / "tenancy")
            yield cluster
        finally:
            await cluster.close()
