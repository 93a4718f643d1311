"""Wiring of the tenancy service: configuration, database, servicers, kit server.

Every RPC of the contract is served; those not built yet answer UNIMPLEMENTED
(the generated base servicer), never fake data.
"""

from __future__ import annotations

import pathlib

import grpc

from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.config import Settings
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.server import ServiceSpec
from gatehouse.tenancy.v1 import (
    group_service_pb2_grpc,
    organization_service_pb2_grpc,
    setup_service_pb2_grpc,
    workspace_service_pb2_grpc,
)

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


def build(settings: Settings, runtime: Runtime) -> ServiceSpec:
    def register(server: grpc.aio.Server) -> None:
        setup_service_pb2_grpc.add_SetupServiceServicer_to_server(
            setup_service_pb2_grpc.SetupServiceServicer(), server
        )
        organization_service_pb2_grpc.add_OrganizationServiceServicer_to_server(
            organization_service_pb2_grpc.OrganizationServiceServicer(), server
        )
        workspace_service_pb2_grpc.add_WorkspaceServiceServicer_to_server(
            workspace_service_pb2_grpc.WorkspaceServiceServicer(), server
        )
        group_service_pb2_grpc.add_GroupServiceServicer_to_server(
            group_service_pb2_grpc.GroupServiceServicer(), server
        )

    return ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[migrate_on_start(MIGRATIONS, settings.database_url)],
        depends_on=("identity", "authz"),
    )


def main() -> None:
    run_service(SERVICE, build)
