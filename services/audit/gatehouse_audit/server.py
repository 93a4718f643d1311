"""Wiring of the audit service: configuration, database, servicers, kit server.

Every RPC of the contract is served; those not built yet answer UNIMPLEMENTED
(the generated base servicer), never fake data.
"""

from __future__ import annotations

import pathlib

import grpc

from gatehouse.audit.v1 import audit_service_pb2_grpc
from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.config import Settings
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.server import ServiceSpec

SERVICE = "audit"
SERVICE_NAMES = ("gatehouse.audit.v1.AuditService",)
PUBLIC_METHODS = frozenset()
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


def build(settings: Settings, runtime: Runtime) -> ServiceSpec:
    def register(server: grpc.aio.Server) -> None:
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
            audit_service_pb2_grpc.AuditServiceServicer(), server
        )

    return ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[migrate_on_start(MIGRATIONS, settings.database_url)],
        depends_on=("identity",),
    )


def main() -> None:
    run_service(SERVICE, build)
