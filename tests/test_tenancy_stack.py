"""Tenancy in the running stack (processes, as `make run` starts them): first-time setup and a first flow."""

from __future__ import annotations

import grpc
import pytest

from gatehouse.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from gatehouse.tenancy.v1 import (
    organization_service_pb2,
    organization_service_pb2_grpc,
    setup_service_pb2,
    setup_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from gatehouse.testing.stack import start_stack

pytestmark = pytest.mark.stack

PASSWORD = "Stack-Admin-Password-2026"
BOOTSTRAP = {
    "GATEHOUSE_BOOTSTRAP_ADMIN_EMAIL": "ops@example.com",
    "GATEHOUSE_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
    "GATEHOUSE_BOOTSTRAP_ORG_NAME": "Stack Inc",
    "GATEHOUSE_BOOTSTRAP_ORG_SLUG": "stack-inc",
}


def test_first_start_bootstraps_once_and_the_admin_can_work(tmp_path):
    data = tmp_path / "data"
    stack = start_stack(data, extra_env=BOOTSTRAP)
    try:
        assert "bootstrapped: platform admin ops@example.com" in stack.log()
        assert PASSWORD not in stack.log()  # a given password is never printed
        with (
            grpc.insecure_channel(stack.addresses["identity"]) as ich,
            grpc.insecure_channel(stack.addresses["tenancy"]) as tch,
        ):
            setup = setup_service_pb2_grpc.SetupServiceStub(tch)
            assert setup.GetSetupState(setup_service_pb2.GetSetupStateRequest(), timeout=5).bootstrapped
            login = identity_service_pb2_grpc.IdentityServiceStub(ich).Login(
                identity_service_pb2.LoginRequest(email="ops@example.com", password=PASSWORD), timeout=10
            )
            md = [("authorization", f"Bearer {login.access_token}")]
            orgs = organization_service_pb2_grpc.OrganizationServiceStub(tch)
            org = orgs.GetOrganizationBySlug(
                organization_service_pb2.GetOrganizationBySlugRequest(slug="stack-inc"), timeout=5
            ).organization
            assert org.name == "Stack Inc"
            mine = orgs.ListOrganizations(
                organization_service_pb2.ListOrganizationsRequest(), metadata=md, timeout=5
            )
            assert [o.id for o in mine.organizations] == [org.id]
            ws_stub = workspace_service_pb2_grpc.WorkspaceServiceStub(tch)
            ws = ws_stub.CreateWorkspace(
                workspace_service_pb2.CreateWorkspaceRequest(organization_id=org.id, name="First"),
                metadata=md,
                timeout=10,
            ).workspace
            access = ws_stub.GetWorkspaceAccess(
                workspace_service_pb2.GetWorkspaceAccessRequest(workspace_id=ws.id), metadata=md, timeout=5
            )
            assert access.member_role == "owner" and access.is_platform_admin
            with pytest.raises(grpc.RpcError) as again:
                setup.Bootstrap(
                    setup_service_pb2.BootstrapRequest(
                        admin_email="second@example.com",
                        admin_password=PASSWORD,
                        organization_name="Second",
                        organization_slug="second",
                    ),
                    timeout=10,
                )
            assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        assert stack.stop() == 0, stack.log()
    # a second start of the same deployment does not bootstrap again
    stack = start_stack(data, extra_env=BOOTSTRAP)
    try:
        assert "deployment already bootstrapped" in stack.log()
    finally:
        assert stack.stop() == 0, stack.log()


def test_generated_admin_password_is_printed_once_and_works(tmp_path):
    stack = start_stack(tmp_path / "data")
    try:
        line = next(x for x in stack.log().splitlines() if "generated admin password" in x)
        password = line.rsplit(" ", 1)[1]
        with grpc.insecure_channel(stack.addresses["identity"]) as ich:
            login = identity_service_pb2_grpc.IdentityServiceStub(ich).Login(
                identity_service_pb2.LoginRequest(email="admin@gatehouse.localhost", password=password),
                timeout=10,
            )
        assert login.access_token
    finally:
        assert stack.stop() == 0, stack.log()
