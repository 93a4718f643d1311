"""Tenancy storage on SQLite and PostgreSQL: migrations, repositories, the ordered authz outbox, audit, purge."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from gatehouse.audit.v1 import audit_event_pb2
from gatehouse.kit import errors, outbox
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse_tenancy.adapters import authz as az
from gatehouse_tenancy.adapters.unit import Transactions
from gatehouse_tenancy.domain import model as m
from gatehouse_tenancy.server import MIGRATIONS

from .conftest import fails, start_tenancy


@pytest.fixture
async def db(database_url):
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, database_url)
    database = Database(database_url)
    yield database
    await database.dispose()


def org(i: int, **kw) -> m.Organization:
    now = time.time()
    return m.Organization(
        f"o{i:03d}", f"Org {i}", f"org-{i:03d}", m.ACTIVE, "u1", m.OrgSettings(), now, now, **kw
    )


async def test_organizations_unique_name_and_slug_and_keyset_pages(db):
    tx = Transactions(db)
    async with tx() as t:
        for i in range(5):
            await t.repo.insert_organization(org(i))
        await t.commit()
    for dup in (
        m.Organization("x", "ORG 1", "fresh", m.ACTIVE, "u", m.OrgSettings(), 0, 0),
        m.Organization("y", "Fresh", "org-001", m.ACTIVE, "u", m.OrgSettings(), 0, 0),
    ):
        async with tx() as t:
            with pytest.raises(errors.AlreadyExists):
                await t.repo.insert_organization(dup)
    async with tx() as t:
        assert await t.repo.organization_name_taken("  org   2 ")
        first = await t.repo.list_organizations(ids=None, after="", limit=2, show_deleted=False, prefix=None)
        rest = await t.repo.list_organizations(
            ids=None, after=first[-1].id, limit=10, show_deleted=False, prefix=None
        )
        assert [o.id for o in first + rest] == [f"o{i:03d}" for i in range(5)]
        only = await t.repo.list_organizations(
            ids=["o003", "o004"], after="", limit=10, show_deleted=False, prefix=("slug", "org-00")
        )
        assert [o.id for o in only] == ["o003", "o004"]
        # LIKE wildcards in a prefix are literal
        assert (
            await t.repo.list_organizations(
                ids=None, after="", limit=10, show_deleted=False, prefix=("name", "%")
            )
            == []
        )


async def test_setup_row_allows_one_bootstrap(db):
    tx = Transactions(db)
    async with tx() as t:
        await t.repo.mark_bootstrapped("u1", "o1")
        await t.commit()
    async with tx() as t:
        with pytest.raises(errors.FailedPrecondition):
            await t.repo.mark_bootstrapped("u2", "o2")


async def test_members_workspaces_groups_invitations_round_trip(db):
    tx = Transactions(db)
    now = time.time()
    async with tx() as t:
        await t.repo.insert_organization(org(1))
        await t.repo.put_org_member(m.OrgMember("o001", "u1", "owner", m.MEMBER_ACTIVE, now))
        await t.repo.put_org_member(m.OrgMember("o001", "u2", "member", m.MEMBER_ACTIVE, now))
        await t.repo.put_org_member(m.OrgMember("o001", "u2", "admin", m.INACTIVE, now))
        ws = m.Workspace("w1", "o001", "Lab", "", m.ACTIVE, "u1", now, now)
        await t.repo.insert_workspace(ws)
        await t.repo.put_workspace_member(m.WorkspaceMember("w1", "user", "u2", "member"))
        await t.repo.put_workspace_member(m.WorkspaceMember("w1", "user", "u2", "admin"))
        await t.repo.save_group(m.Group("g1", "o001", "Team", "", now, now), insert=True)
        await t.repo.add_group_member("g1", "u2")
        await t.repo.add_group_member("g1", "u2")
        await t.repo.put_workspace_member(m.WorkspaceMember("w1", "group", "g1", "viewer"))
        inv = m.Invitation(
            "i1", "o001", "a@b.co", "member", [("w1", "viewer")], m.PENDING, "h1", now - 1, now, "u1"
        )
        await t.repo.insert_invitation(inv)
        await t.commit()
    async with tx() as t:
        u2 = await t.repo.get_org_member("o001", "u2")
        assert (u2.role, u2.status) == ("admin", m.INACTIVE)
        assert await t.repo.live_workspace_name_taken(
            "o001", "LAB"
        ) and not await t.repo.live_workspace_name_taken("o2", "lab")
        members = await t.repo.list_workspace_members("w1", ("", ""), 10)
        assert [(x.member_id, x.role) for x in members] == [("group:g1", "viewer"), ("user:u2", "admin")]
        page = await t.repo.list_workspace_members("w1", ("group", "g1"), 10)
        assert [x.member_id for x in page] == ["user:u2"]
        assert (await t.repo.get_group("g1")).member_count == 1
        got = await t.repo.invitation_by_token_hash("h1")
        assert got.workspace_roles == [("w1", "viewer")] and got.state_at(time.time()) == m.EXPIRED
        assert [i.id for i in await t.repo.list_invitations("o001", "", 10, m.EXPIRED, time.time())] == ["i1"]
        assert await t.repo.list_invitations("o001", "", 10, m.PENDING, time.time()) == []
        # removing a user inside an organization takes their workspace roles and group memberships
        await t.repo.delete_principal_in_org("o001", "user", "u2")
        assert [x.member_id for x in await t.repo.list_workspace_members("w1", ("", ""), 10)] == ["group:g1"]
        assert not await t.repo.is_group_member("g1", "u2")
        # deleting a group removes its workspace roles
        await t.repo.delete_group("g1")
        assert await t.repo.list_workspace_members("w1", ("", ""), 10) == []
        await t.commit()


async def test_organization_lock_serializes_concurrent_changes(db):
    """Two transactions that both read-then-write the owner never both succeed in making a second owner."""
    tx = Transactions(db)
    async with tx() as t:
        await t.repo.insert_organization(org(1))
        await t.repo.put_org_member(m.OrgMember("o001", "u1", "owner", m.MEMBER_ACTIVE, 0))
        await t.commit()

    async def promote(user: str) -> None:
        async with tx() as t:
            await t.repo.lock_organization("o001")
            if await t.repo.count_owners("o001") == 0:
                await t.repo.put_org_member(m.OrgMember("o001", user, "owner", m.MEMBER_ACTIVE, 0))
            await asyncio.sleep(0.05)
            await t.commit()

    async with tx() as t:
        await t.repo.delete_org_member("o001", "u1")
        await t.commit()
    await asyncio.gather(promote("a"), promote("b"), promote("c"))
    async with tx() as t:
        assert await t.repo.count_owners("o001") == 1


async def test_ordered_relay_never_lets_a_later_entry_overtake(db):
    delivered: list[str] = []
    fail = {"on": True}

    async def deliver(entries):
        if fail["on"]:
            raise RuntimeError("authz down")
        delivered.extend(e.id for e in entries)

    relay = outbox.OutboxRelay(db, az.TOPIC, deliver, base_backoff=0.05, max_backoff=0.1, ordered=True)
    tx = Transactions(db)
    async with tx() as t:
        await t.authz(("touch", "workspace:w", "owner", "user:u"))
        await t.commit()
    assert await relay.drain_once() == 0  # fails: the first entry now waits for its retry
    async with tx() as t:
        await t.authz(("delete", "workspace:w", "owner", "user:u"))
        await t.commit()
    assert await relay.drain_once() == 0 and delivered == []  # the second must not go first
    fail["on"] = False
    await asyncio.sleep(0.15)
    assert await relay.drain() == 2
    assert delivered == sorted(delivered) and len(delivered) == 2
    keys = [outbox.ordered_key() for _ in range(1000)]
    assert keys == sorted(keys) and len(set(keys)) == 1000 and all(len(k) == 36 for k in keys)


async def test_outbox_entry_and_change_share_one_transaction(db):
    tx = Transactions(db)
    async with tx() as t:
        await t.repo.insert_organization(org(7))
        await t.authz(("touch", "organization:o007", "owner", "user:u"))
        await t.audit("tenancy.organization.create", organization_id="o007")
        # no commit: everything is rolled back
    async with tx() as t:
        assert await t.repo.get_organization("o007") is None
        count = (await t.uow.session.execute(sa.text("SELECT count(*) FROM outbox"))).scalar_one()
        assert count == 0


async def audit_events(database_url) -> list:
    database = Database(database_url)
    try:
        async with database.unit_of_work() as uow:
            rows = (
                await uow.session.execute(
                    sa.text("SELECT payload FROM outbox WHERE topic = 'audit' ORDER BY id")
                )
            ).all()
    finally:
        await database.dispose()
    return [audit_event_pb2.AuditEvent.FromString(bytes(r.payload)) for r in rows]


async def test_every_change_and_denial_is_audited_with_old_and_new(env, database_url):
    admin, owner = await env.admin(), await env.user()
    org_pb = await env.org(admin, owner)
    ws = await env.workspace(owner, org_pb.id, "Before")
    from google.protobuf import field_mask_pb2

    from gatehouse.tenancy.v1 import resources_pb2 as r

    await env.ws.UpdateWorkspace(
        wpb.UpdateWorkspaceRequest(
            workspace=r.Workspace(id=ws.id, name="After"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        metadata=owner.md,
    )
    stranger = await env.user()
    import grpc

    await fails(
        env.orgs.CreateOrganization(
            opb.CreateOrganizationRequest(name="No", slug="no-org", owner_user_id=stranger.id),
            metadata=stranger.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    events = await audit_events(database_url)
    by_action = {}
    for e in events:
        by_action.setdefault(e.action, []).append(e)
    assert {"tenancy.organization.create", "tenancy.workspace.create", "tenancy.workspace.update"} <= set(
        by_action
    )
    update = by_action["tenancy.workspace.update"][0]
    assert update.details["name"]["old"] == "Before" and update.details["name"]["new"] == "After"
    assert (
        update.actor.id == owner.id and update.workspace_id == ws.id and update.organization_id == org_pb.id
    )
    denied = [
        e for e in by_action["tenancy.organization.create"] if e.outcome == audit_event_pb2.OUTCOME_DENIED
    ]
    assert len(denied) == 1 and denied[0].actor.id == stranger.id


async def test_purge_removes_expired_deleted_objects_and_their_relationships(
    tmp_path, env, database_url, monkeypatch
):
    admin, owner = await env.admin(), await env.user()
    org_pb = await env.org(admin, owner)
    live_org = await env.org(admin, owner)
    ws = await env.workspace(owner, live_org.id)
    await env.workspace(owner, org_pb.id)
    await env.ws.DeleteWorkspace(wpb.DeleteWorkspaceRequest(workspace_id=ws.id), metadata=owner.md)
    await env.orgs.DeleteOrganization(
        opb.DeleteOrganizationRequest(organization_id=org_pb.id), metadata=owner.md
    )
    # the retention period passes
    database = Database(database_url)
    try:
        async with database.unit_of_work() as uow:
            for table in ("workspaces", "organizations"):
                await uow.session.execute(
                    sa.text(f"UPDATE {table} SET purge_time = :t"), {"t": time.time() - 1}
                )
            await uow.commit()
    finally:
        await database.dispose()
    await fails(
        env.orgs.UndeleteOrganization(
            opb.UndeleteOrganizationRequest(organization_id=org_pb.id), metadata=owner.md
        ),
        __import__("grpc").StatusCode.FAILED_PRECONDITION,
        "RETENTION_EXPIRED",
    )
    # a tenancy with a short purge interval purges at start
    await env.server.stop(0)
    monkeypatch.setenv("GATEHOUSE_TENANCY_PURGE_INTERVAL", "0.2")
    server, _ = await start_tenancy(env.identity, tmp_path / "tenancy", database_url)
    try:
        # Wait for both purges to reach authz: the audit event is committed with the purge, the
        # removal of the relationships is delivered to authz after it (an outbox entry), so the
        # event alone does not mean authz has applied it (a fresh-clone run failed on that race).
        for _ in range(150):  # bounded: 30 s at most on a loaded machine
            if (
                not await env.relationships(within_organization_id=org_pb.id)
                and not await env.relationships(resource_type="workspace", resource_id=ws.id)
                and "tenancy.workspace.purge" in [e.action for e in await audit_events(database_url)]
            ):
                break
            await asyncio.sleep(0.2)
        assert await env.relationships(within_organization_id=org_pb.id) == []
        assert await env.relationships(resource_type="workspace", resource_id=ws.id) == []
        actions = [e.action for e in await audit_events(database_url)]
        assert "tenancy.organization.purge" in actions and "tenancy.workspace.purge" in actions
        database = Database(database_url)
        try:
            async with database.unit_of_work() as uow:
                left = (await uow.session.execute(sa.text("SELECT count(*) FROM organizations"))).scalar_one()
        finally:
            await database.dispose()
        assert left == 1  # the live organization stays
        assert await env.can(owner, f"organization:{live_org.id}", "org:delete")
    finally:
        await server.stop(0)


async def test_request_ids_are_remembered_once(db):
    tx = Transactions(db)
    async with tx() as t:
        await t.repo.remember_request("CreateGroup|user:u|r1", "g1")
        await t.commit()
    async with tx() as t:
        assert await t.repo.request_result("CreateGroup|user:u|r1") == "g1"
        assert await t.repo.request_result("CreateGroup|user:v|r1") is None
        with pytest.raises(errors.Aborted):
            await t.repo.remember_request("CreateGroup|user:u|r1", "g2")
