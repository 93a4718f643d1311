"""Wiring of the identity service: configuration, database, servicers, kit server.

Every RPC of the contract is served; those not built yet answer UNIMPLEMENTED
(the generated base servicer), never fake data.
"""

from __future__ import annotations

import pathlib

import grpc

from gatehouse.identity.v1 import identity_service_pb2_grpc
from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.config import Settings
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.server import ServiceSpec

SERVICE = "identity"
SERVICE_NAMES = ("gatehouse.identity.v1.IdentityService",)
PUBLIC_METHODS = frozenset(
    {
        "/gatehouse.identity.v1.IdentityService/Login",
        "/gatehouse.identity.v1.IdentityService/RefreshSession",
        "/gatehouse.identity.v1.IdentityService/Logout",
        "/gatehouse.identity.v1.IdentityService/GetJwks",
        "/gatehouse.identity.v1.IdentityService/IssueServiceToken",
        "/gatehouse.identity.v1.IdentityService/ResetPassword",
    }
)
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


def build(settings: Settings, runtime: Runtime) -> ServiceSpec:
    def register(server: grpc.aio.Server) -> None:
        identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
            identity_service_pb2_grpc.IdentityServiceServicer(), server
        )

    return ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[migrate_on_start(MIGRATIONS, settings.database_url)],
        depends_on=(),
    )


def main() -> None:
    run_service(SERVICE, build)
