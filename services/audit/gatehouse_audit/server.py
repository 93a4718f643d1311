"""Wiring of the audit service: configuration, keys, database, servicer, purge job, kit server."""

from __future__ import annotations

import logging
import pathlib

import grpc

from gatehouse.audit.v1 import audit_service_pb2_grpc
from gatehouse.client.authz import AuthzClient
from gatehouse.kit.aio import periodic
from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.config import Settings
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.server import ServiceSpec
from gatehouse_audit.adapters.config import AuditConfig
from gatehouse_audit.adapters.store import AuditStore
from gatehouse_audit.api.access import Access, CoherentChecks
from gatehouse_audit.api.servicer import AuditServicer
from gatehouse_audit.domain.usecases import Audit

SERVICE = "audit"
SERVICE_NAMES = ("gatehouse.audit.v1.AuditService",)
PUBLIC_METHODS = frozenset()
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"
AUTHZ_CACHE_TTL = 10.0  # seconds; the cache is used only while authz's Watch stream is live

log = logging.getLogger("gatehouse.audit")


def purge_job(audit: Audit, interval: float):
    """The background task: purge every chain past its retention, at start and every ``interval`` s."""

    async def purge() -> None:
        removed = await audit.purge_expired()
        if removed:
            log.info("retention purge removed %s events", sum(removed.values()), extra={"removed": removed})

    return periodic(purge, interval, what="audit retention purge", logger=log, immediately=True)


def build(settings: Settings, runtime: Runtime, *, environ=None, token_source=None) -> ServiceSpec:
    """The audit service; ``environ`` (keys, retention) and ``token_source`` (authz calls) default to
    the process environment and the service's own credentials."""
    config = AuditConfig.load(
        settings.data_dir, environ, require_keys=settings.database_url.startswith("postgresql")
    )
    # No pre-ping: it costs a round trip per transaction (a third of a ListEvents page); a connection
    # broken by a database restart fails one call with UNAVAILABLE and the pool is invalidated.
    db = Database(settings.database_url, pool_pre_ping=False)
    audit = Audit(
        AuditStore(db, config.chain_key), config.chain_key, config.signer, config.default_retention_days
    )
    # Access decisions come from authz through the library's AuthzClient, failing closed (authz
    # down → UNAVAILABLE). Decisions are cached per authz revision and used only while its Watch
    # stream is live: any change anywhere bypasses the cache at once; stream down → ask authz.
    authz = AuthzClient(
        runtime.channel("authz"),
        token_source=token_source or runtime.service_tokens(),
        timeout=settings.authz_timeout,
        cache_ttl=AUTHZ_CACHE_TTL,
    )
    servicer = AuditServicer(audit, Access(CoherentChecks(authz)))

    def register(server: grpc.aio.Server) -> None:
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)

    return ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[migrate_on_start(MIGRATIONS, settings.database_url)],
        background=[purge_job(audit, config.purge_interval), authz.follow_changes],
        on_stop=[db.dispose],
        depends_on=("identity",),
    )


def main() -> None:
    run_service(SERVICE, build)
