"""Fixtures of tenancy's tests: REAL identity, authz and tenancy servers per test (tenancy on SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
import pytest

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc, relationship_pb2
from gatehouse.kit.app import build_server
from gatehouse.kit.status import error_info
from gatehouse.tenancy.v1 import (
    group_service_pb2_grpc,
    organization_service_pb2,
    organization_service_pb2_grpc,
    resources_pb2,
    setup_service_pb2_grpc,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from gatehouse.testing.identity import running_identity
from gatehouse.type.v1 import refs_pb2
from gatehouse_tenancy.server import build

opb, wpb, r = organization_service_pb2, workspace_service_pb2, resources_pb2


@dataclass
class User:
    id: str
    email: str
    token: str

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]


class Env:
    """Handles on the three running services and helpers to drive them as real callers."""

    def __init__(self, identity, server, port: int):
        self.identity = identity
        self.server = server
        self.port = port
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.setup = setup_service_pb2_grpc.SetupServiceStub(self.channel)
        self.orgs = organization_service_pb2_grpc.OrganizationServiceStub(self.channel)
        self.ws = workspace_service_pb2_grpc.WorkspaceServiceStub(self.channel)
        self.groups = group_service_pb2_grpc.GroupServiceStub(self.channel)
        self.authz_channel = grpc.aio.insecure_channel(identity.authz_address)
        self.authz = authz_service_pb2_grpc.AuthzServiceStub(self.authz_channel)

    async def close(self) -> None:
        await self.channel.close()
        await self.authz_channel.close()

    async def user(self, email: str | None = None) -> User:
        email = email or f"u-{uuid.uuid4().hex[:10]}@example.com"
        user_id, token = await self.identity.user_token(email)
        return User(user_id, email, token)

    async def admin(self) -> User:
        u = await self.user()
        await self.identity.make_platform_admin(u.id)
        return u

    async def org(self, admin: User, owner: User, name: str | None = None) -> resources_pb2.Organization:
        suffix = uuid.uuid4().hex[:8]
        answer = await self.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(
                name=name or f"Org {suffix}", slug=f"org-{suffix}", owner_user_id=owner.id
            ),
            metadata=admin.md,
        )
        return answer.organization

    async def member(self, admin: User, org_id: str, role=r.ORG_ROLE_MEMBER) -> User:
        """A new account made a member of the organization (CreateOrganizationMember), logged in."""
        email = f"m-{uuid.uuid4().hex[:10]}@example.com"
        from gatehouse.testing.identity import DEFAULT_PASSWORD

        answer = await self.orgs.CreateOrganizationMember(
            opb.CreateOrganizationMemberRequest(
                organization_id=org_id,
                email=email,
                display_name="Member",
                initial_password=DEFAULT_PASSWORD,
                role=role,
            ),
            metadata=admin.md,
        )
        return User(answer.member.user_id, email, await self.identity.login(email))

    async def workspace(self, owner: User, org_id: str, name: str | None = None) -> resources_pb2.Workspace:
        answer = await self.ws.CreateWorkspace(
            wpb.CreateWorkspaceRequest(organization_id=org_id, name=name or f"ws {uuid.uuid4().hex[:6]}"),
            metadata=owner.md,
        )
        return answer.workspace

    async def can(self, user: User | str, resource: str, capability: str) -> bool:
        """Ask authz directly (as the tenancy service account)."""
        user_id = user if isinstance(user, str) else user.id
        rtype, rid = resource.split(":")
        answer = await self.authz.CheckCapability(
            apb.CheckCapabilityRequest(
                subject=refs_pb2.SubjectRef(type="user", id=user_id),
                resource=refs_pb2.ResourceRef(type=rtype, id=rid),
                capability=capability,
            ),
            metadata=await self.identity.service_metadata("tenancy"),
        )
        return answer.allowed

    async def relationships(self, **flt) -> list[str]:
        answer = await self.authz.ReadRelationships(
            apb.ReadRelationshipsRequest(filter=relationship_pb2.RelationshipFilter(**flt), page_size=1000),
            metadata=await self.identity.service_metadata("tenancy"),
        )
        return sorted(
            f"{x.resource.type}:{x.resource.id}#{x.relation}@{x.subject.type}:{x.subject.id}"
            for x in answer.relationships
        )


async def fails(coro, code: grpc.StatusCode, reason: str | None = None):
    """Await ``coro`` expecting an RPC error with ``code`` (and ErrorInfo ``reason``)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, (info.value.code(), info.value.details())
    if reason is not None:
        detail = error_info(info.value)
        assert detail is not None and detail.reason == reason, (detail, info.value.details())
    return info.value


async def start_tenancy(identity, data_dir, database_url):
    settings = await identity.peer_settings(data_dir, "tenancy", database_url=database_url)
    server = build_server(settings, build)
    port = await server.start()
    await server.wait_started()
    return server, port


@pytest.fixture
async def env(tmp_path, database_url):
    async with running_identity(tmp_path, with_authz=True) as identity:
        server, port = await start_tenancy(identity, tmp_path / "tenancy", database_url)
        e = Env(identity, server, port)
        try:
            yield e
        finally:
            await e.close()
            await server.stop(0)
