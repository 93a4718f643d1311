"""Wiring of the tenancy service: configuration, database, clients of identity and authz, servicers.

Background tasks: the audit relay, the authz relay (delivers the ``authz``
outbox in order, retrying what immediate delivery could not do) and the purge
job (removes soft-deleted organizations and workspaces after their retention).
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal

import grpc

from gatehouse.kit.aio import periodic
from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.audit_log import audit_relay
from gatehouse.kit.config import Settings, positive_number
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.server import ServiceSpec
from gatehouse.tenancy.v1 import (
    group_service_pb2_grpc,
    organization_service_pb2_grpc,
    setup_service_pb2_grpc,
    workspace_service_pb2_grpc,
)
from gatehouse_tenancy.adapters.authz import AuthzClient, AuthzDelivery
from gatehouse_tenancy.adapters.identity import IdentityClient
from gatehouse_tenancy.adapters.unit import Transactions
from gatehouse_tenancy.api.servicers import (
    GroupServicer,
    OrganizationServicer,
    SetupServicer,
    WorkspaceServicer,
)
from gatehouse_tenancy.domain.tenancy import Tenancy

log = logging.getLogger("gatehouse.tenancy")

SERVICE = "tenancy"
SERVICE_NAMES = (
    "gatehouse.tenancy.v1.SetupService",
    "gatehouse.tenancy.v1.OrganizationService",
    "gatehouse.tenancy.v1.WorkspaceService",
    "gatehouse.tenancy.v1.GroupService",
)
PUBLIC_METHODS = frozenset(
    {
        "/gatehouse.tenancy.v1.SetupService/GetSetupState",
        "/gatehouse.tenancy.v1.SetupService/Bootstrap",
        "/gatehouse.tenancy.v1.OrganizationService/GetOrganizationBySlug",
        "/gatehouse.tenancy.v1.OrganizationService/AcceptInvitation",
    }
)
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"
PURGE_INTERVAL_VARIABLE = "GATEHOUSE_TENANCY_PURGE_INTERVAL"  # seconds between purge runs (default 3600)
# Fault injection for the crash tests only: the process SIGKILLs itself right after
# committing the named use case (e.g. "workspace.create"), before authz delivery.
CRASH_AFTER_COMMIT = "GATEHOUSE_TENANCY_CRASH_AFTER_COMMIT"


def assemble(settings: Settings, runtime: Runtime) -> tuple[Tenancy, AuthzDelivery, Database]:
    db = Database(settings.database_url)
    tokens = runtime.service_tokens()
    authz = AuthzClient(runtime.channel("authz"), timeout=settings.authz_timeout, token_source=tokens)
    delivery = AuthzDelivery(db, authz)
    identity = IdentityClient(runtime.channel("identity"), token_source=tokens)
    crash_at = os.environ.get(CRASH_AFTER_COMMIT, "")

    async def after_commit(action: str) -> None:
        if crash_at and action == crash_at:
            log.warning("fault injection: SIGKILL after committing %s", action)
            os.kill(os.getpid(), signal.SIGKILL)

    tenancy = Tenancy(
        transactions=Transactions(db),
        authz=authz,
        delivery=delivery,
        identity=identity,
        after_commit=after_commit,
    )
    return tenancy, delivery, db


def build(settings: Settings, runtime: Runtime) -> ServiceSpec:
    tenancy, delivery, db = assemble(settings, runtime)
    audit = audit_relay(db, runtime.channel("audit"), runtime.service_tokens())

    def register(server: grpc.aio.Server) -> None:
        setup_service_pb2_grpc.add_SetupServiceServicer_to_server(SetupServicer(tenancy), server)
        organization_service_pb2_grpc.add_OrganizationServiceServicer_to_server(
            OrganizationServicer(tenancy), server
        )
        workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(WorkspaceServicer(tenancy), server)
        group_service_pb2_grpc.add_GroupServiceServicer_to_server(GroupServicer(tenancy), server)

    interval = positive_number(PURGE_INTERVAL_VARIABLE, os.environ.get(PURGE_INTERVAL_VARIABLE) or "3600")

    async def purge() -> None:
        purged = await tenancy.invitations.purge_expired()
        if purged:
            log.info("purged %s deleted organizations/workspaces", purged)
        # delivered outbox entries (authz and audit) are kept a week for inspection
        await delivery.relay.purge_delivered()

    return ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[migrate_on_start(MIGRATIONS, settings.database_url)],
        background=[
            audit.run,
            delivery.run,
            periodic(purge, interval, what="tenancy purge", logger=log, immediately=True),
        ],
        on_stop=[db.dispose],
        depends_on=("identity", "authz"),
    )


def main() -> None:
    run_service(SERVICE, build)
