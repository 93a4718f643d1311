"""No half state: a DisableUser whose authz message was not delivered before identity died is
delivered by the next identity process (the outbox entry committed with the state change)."""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from gatehouse.authz.v1 import authz_service_pb2, decision_pb2
from gatehouse.identity.v1 import identity_service_pb2 as pb
from gatehouse.testing.identity import running_identity
from gatehouse.type.v1 import refs_pb2
from gatehouse_identity.adapters.tables import outbox
from services.identity.tests.helpers import admin_token, authz_stub, eventually, md


async def pending_authz_messages(identity) -> int:
    async with identity.identity.store.transaction() as tx:
        return (
            await tx.session.execute(
                sa.select(sa.func.count()).where(outbox.c.topic == "authz", outbox.c.delivered_at.is_(None))
            )
        ).scalar_one()


async def test_disable_user_reaches_authz_after_identity_dies_before_delivery(tmp_path, database_url):
    async with running_identity(tmp_path, database_url, with_authz=True) as identity:
        victim = await identity.create_user("victim@example.com")
        _, admin = await admin_token(identity)
        # "crash" right after the commit: the relays stop before they deliver anything
        for task in identity.server._background:
            task.cancel()
        await asyncio.gather(*identity.server._background, return_exceptions=True)
        await identity.stub.DisableUser(pb.DisableUserRequest(user_id=victim), metadata=md(admin))
        assert await pending_authz_messages(identity) == 1
    # a new identity process on the same database (authz keeps its own database in the data dir)
    async with running_identity(tmp_path, database_url, with_authz=True) as identity:
        svc = await identity.service_metadata("tenancy")
        check = authz_service_pb2.CheckCapabilityRequest(
            subject=refs_pb2.SubjectRef(type="user", id=victim),
            resource=refs_pb2.ResourceRef(type="platform", id="platform"),
            capability="platform:manage_users",
        )

        async def disabled_in_authz():
            answer = await authz_stub(identity).CheckCapability(check, metadata=svc)
            return answer.reason == decision_pb2.DECISION_REASON_SUBJECT_DISABLED

        await eventually(disabled_in_authz, timeout=10.0)

        async def delivered() -> bool:  # marked once authz's answer is back, a moment after it applied
            return await pending_authz_messages(identity) == 0

        await eventually(delivered, timeout=10.0)
