"""No half states: tenancy is SIGKILLed between its commit and the authz delivery, then restarted.

Tenancy runs as a real subprocess (``python -m gatehouse_tenancy``) against a
real identity and authz; ``GATEHOUSE_TENANCY_CRASH_AFTER_COMMIT`` makes it kill
itself with SIGKILL right after the named use case committed and before it
delivered the relationships to authz. After a restart the outbox relay must
finish the job: the creator owns the workspace, the removed member is gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.kit.db import Database
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import organization_service_pb2_grpc, workspace_service_pb2_grpc
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse.testing.identity import DEFAULT_PASSWORD, running_identity
from gatehouse.testing.stack import free_port
from gatehouse.type.v1 import refs_pb2

from .conftest import Env, User

pytestmark = pytest.mark.timeout(120)


class TenancyProcess:
    def __init__(self, identity, data_dir, database_url):
        self.identity = identity
        self.data_dir = data_dir
        self.database_url = database_url
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    async def start(self, crash_after: str = "") -> None:
        await self.identity.write_credentials(self.data_dir, "tenancy")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
        env.update(
            GATEHOUSE_DATA_DIR=str(self.data_dir),
            GATEHOUSE_TENANCY_ADDRESS=self.address,
            GATEHOUSE_IDENTITY_ADDRESS=self.identity.address,
            GATEHOUSE_AUTHZ_ADDRESS=self.identity.authz_address,
            GATEHOUSE_AUDIT_ADDRESS=self.identity.audit_address,
            GATEHOUSE_DATABASE_URL=self.database_url,
            GATEHOUSE_LOG_FORMAT="text",
        )
        if crash_after:
            env["GATEHOUSE_TENANCY_CRASH_AFTER_COMMIT"] = crash_after
        self.proc = _spawn(env, self.data_dir / "tenancy.out")
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, (self.data_dir / "tenancy.out").read_text()
                try:
                    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError((self.data_dir / "tenancy.out").read_text())

    async def wait_dead(self, timeout: float = 10) -> int:
        for _ in range(int(timeout / 0.05)):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(env: dict, log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "gatehouse_tenancy"], env=env, stdout=log, stderr=log)


async def eventually(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_killed_between_commit_and_authz_delivery_converges_after_restart(tmp_path, database_url):
    async with running_identity(tmp_path, with_authz=True) as identity:
        data_dir = tmp_path / "tenancy"
        data_dir.mkdir()
        tenancy = TenancyProcess(identity, data_dir, database_url)
        env = Env.__new__(Env)  # only its authz helpers are used here
        Env.__init__(env, identity, None, 0)
        try:
            await tenancy.start(crash_after="workspace.create")
            channel = grpc.aio.insecure_channel(tenancy.address)
            orgs = organization_service_pb2_grpc.OrganizationServiceStub(channel)
            admin = await env.admin()
            owner = await env.user()
            org = (
                await orgs.CreateOrganization(
                    opb.CreateOrganizationRequest(name="Crash Co", slug="crash-co", owner_user_id=owner.id),
                    metadata=admin.md,
                )
            ).organization
            leaver_email = "leaver@example.com"
            leaver_id = (
                await orgs.CreateOrganizationMember(
                    opb.CreateOrganizationMemberRequest(
                        organization_id=org.id,
                        email=leaver_email,
                        initial_password=DEFAULT_PASSWORD,
                        role=r.ORG_ROLE_ADMIN,
                    ),
                    metadata=owner.md,
                )
            ).member.user_id
            leaver = User(leaver_id, leaver_email, await identity.login(leaver_email))
            assert await env.can(leaver, f"organization:{org.id}", "org:invite")

            # 1. CreateWorkspace: committed in tenancy, killed before authz heard of it
            workspaces = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)
            request = wpb.CreateWorkspaceRequest(
                organization_id=org.id, name="Survivor", request_id="crash-1"
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await workspaces.CreateWorkspace(request, metadata=owner.md, timeout=10)
            assert await tenancy.wait_dead() == -signal.SIGKILL
            await channel.close()
            db = Database(database_url)
            try:
                async with db.unit_of_work() as uow:
                    ws_id = (await uow.session.execute(sa.text("SELECT id FROM workspaces"))).scalar_one()
                    pending = (
                        await uow.session.execute(
                            sa.text(
                                "SELECT count(*) FROM outbox WHERE topic = 'authz' AND delivered_at IS NULL"
                            )
                        )
                    ).scalar_one()
            finally:
                await db.dispose()
            assert pending >= 1
            # the half state exists right now: tenancy has the workspace, authz does not know its owner
            assert not await env.can(owner, f"workspace:{ws_id}", "chat")

            # 2. restart (now crashing after a member removal): the relay completes the workspace
            await tenancy.start(crash_after="organization.remove_member")
            assert await eventually(lambda: env.can(owner, f"workspace:{ws_id}", "delete:workspace"))
            channel = grpc.aio.insecure_channel(tenancy.address)
            workspaces = workspace_service_pb2_grpc.WorkspaceServiceStub(channel)
            orgs = organization_service_pb2_grpc.OrganizationServiceStub(channel)
            # the client's retry with the same request_id answers the same workspace
            again = await workspaces.CreateWorkspace(request, metadata=owner.md, timeout=10)
            assert again.workspace.id == ws_id
            await workspaces.AddWorkspaceMember(
                wpb.AddWorkspaceMemberRequest(
                    workspace_id=ws_id,
                    principal=refs_pb2.SubjectRef(type="user", id=leaver.id),
                    role=r.WORKSPACE_ROLE_ADMIN,
                ),
                metadata=owner.md,
            )
            assert await env.can(leaver, f"workspace:{ws_id}", "manage:members")

            # 3. RemoveOrganizationMember: killed after commit, before authz delivery
            with pytest.raises(grpc.aio.AioRpcError):
                await orgs.RemoveOrganizationMember(
                    opb.RemoveOrganizationMemberRequest(organization_id=org.id, user_id=leaver.id),
                    metadata=owner.md,
                    timeout=10,
                )
            assert await tenancy.wait_dead() == -signal.SIGKILL
            await channel.close()
            await tenancy.start()
            assert await eventually(
                lambda: _none(
                    env.can(leaver, f"workspace:{ws_id}", "chat"),
                    env.can(leaver, f"organization:{org.id}", "org:view"),
                )
            )
            # The membership state and the removal of the bindings are separate outbox entries,
            # delivered in order: the denials above can hold before the second one is delivered.
            assert await eventually(lambda: _no_relationships(env, subject_type="user", subject_id=leaver.id))
            assert await env.relationships(subject_type="user", subject_id=leaver.id) == []
            # the workspace still has exactly its owner
            assert await env.relationships(
                resource_type="workspace", resource_id=ws_id, relation="owner"
            ) == [f"workspace:{ws_id}#owner@user:{owner.id}"]
        finally:
            tenancy.stop()
            await env.close()


async def _none(*checks) -> bool:
    return not any([await c for c in checks])


async def _no_relationships(env, **filter_fields) -> bool:
    return await env.relationships(**filter_fields) == []
