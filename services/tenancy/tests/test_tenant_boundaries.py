"""Tenant boundaries a security review found open, through real identity, authz and tenancy
servers (SQLite and PostgreSQL). Each test fails on the code before its fix:

- a reused ``request_id`` replayed an answer about whatever the new request named, without an
  access check (another tenant's user's email, another tenant's workspace members);
- leaving an organization one is not in told that the organization exists;
- a deactivated member who owns a deleted workspace could see and undelete it;
- a removed member could come back with an older invitation, and an invitation reactivated a
  deactivated member.
"""

from __future__ import annotations

import time

import grpc

from gatehouse.kit.db import Database
from gatehouse.kit.ids import new_id
from gatehouse.tenancy.v1 import group_service_pb2 as gpb
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse.testing.identity import DEFAULT_PASSWORD
from gatehouse.type.v1 import refs_pb2
from gatehouse_tenancy.adapters.repository import Repository
from gatehouse_tenancy.domain import model as m

from .conftest import User, fails

Code = grpc.StatusCode


def user(user_id: str) -> refs_pb2.SubjectRef:
    return refs_pb2.SubjectRef(type="user", id=user_id)


async def test_a_reused_request_id_answers_only_its_own_request(env):
    admin = await env.admin()
    alice, bob = await env.user(), await env.user()
    org_a, org_b = await env.org(admin, alice), await env.org(admin, bob)
    carol = await env.member(bob, org_b.id)
    wb = await env.workspace(bob, org_b.id)
    await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(
            workspace_id=wb.id, principal=user(carol.id), role=r.WORKSPACE_ROLE_ADMIN
        ),
        metadata=bob.md,
    )
    # Alice uses two request ids once, legitimately, in her own organization.
    dave = await env.member(alice, org_a.id)
    ga = (
        await env.groups.CreateGroup(
            gpb.CreateGroupRequest(organization_id=org_a.id, name="g"), metadata=alice.md
        )
    ).group
    first = await env.groups.AddGroupMember(
        gpb.AddGroupMemberRequest(group_id=ga.id, user_id=dave.id, request_id="r1"), metadata=alice.md
    )
    wa = await env.workspace(alice, org_a.id)
    await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(workspace_id=wa.id, principal=user(dave.id), request_id="w1"),
        metadata=alice.md,
    )
    # The same ids on other targets: answered as new requests, with their access checks, never
    # with another tenant's user or members.
    for group_id, user_id in (("nonexistent", bob.id), ("nonexistent", carol.id)):
        await fails(
            env.groups.AddGroupMember(
                gpb.AddGroupMemberRequest(group_id=group_id, user_id=user_id, request_id="r1"),
                metadata=alice.md,
            ),
            Code.NOT_FOUND,
        )
    for principal in (carol.id, bob.id):
        await fails(
            env.ws.AddWorkspaceMember(
                wpb.AddWorkspaceMemberRequest(workspace_id=wb.id, principal=user(principal), request_id="w1"),
                metadata=alice.md,
            ),
            Code.NOT_FOUND,
        )
    # ... and a true retry still gets its first answer
    again = await env.groups.AddGroupMember(
        gpb.AddGroupMemberRequest(group_id=ga.id, user_id=dave.id, request_id="r1"), metadata=alice.md
    )
    assert again.member == first.member
    retried = await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(workspace_id=wa.id, principal=user(dave.id), request_id="w1"),
        metadata=alice.md,
    )
    assert retried.member.principal.id == dave.id
    # a request id reused for another removal in one's own organization removes that member too
    # (before, the second call was taken for a retry of the first and removed nobody)
    erin = await env.member(alice, org_a.id)
    for member in (dave, erin):
        await env.orgs.RemoveOrganizationMember(
            opb.RemoveOrganizationMemberRequest(organization_id=org_a.id, user_id=member.id, request_id="rm"),
            metadata=alice.md,
        )
        assert not await env.can(member.id, f"organization:{org_a.id}", "org:view")


async def test_leaving_another_tenants_organization_looks_like_an_unknown_one(env):
    admin = await env.admin()
    alice, bob = await env.user(), await env.user()
    await env.org(admin, alice)
    org_b = await env.org(admin, bob)
    answers = []
    for org_id in (org_b.id, "0192f0c0-0000-7000-8000-000000000000"):
        err = await fails(
            env.orgs.RemoveOrganizationMember(
                opb.RemoveOrganizationMemberRequest(organization_id=org_id, user_id=alice.id),
                metadata=alice.md,
            ),
            Code.NOT_FOUND,
        )
        answers.append(err.details().replace(org_id, "<id>"))
    assert answers[0] == answers[1] == "organization '<id>' not found"


async def test_a_deactivated_member_cannot_see_or_undelete_the_workspace_they_own(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    x = await env.member(owner, org.id, role=r.ORG_ROLE_ADMIN)
    ws = await env.workspace(x, org.id)  # x owns it
    await env.orgs.UpdateOrganizationMember(
        opb.UpdateOrganizationMemberRequest(
            organization_id=org.id, user_id=x.id, status=r.MEMBER_STATUS_INACTIVE
        ),
        metadata=owner.md,
    )
    await env.ws.DeleteWorkspace(wpb.DeleteWorkspaceRequest(workspace_id=ws.id), metadata=owner.md)
    await fails(
        env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=ws.id, show_deleted=True), metadata=x.md),
        Code.NOT_FOUND,
    )
    await fails(
        env.ws.UndeleteWorkspace(wpb.UndeleteWorkspaceRequest(workspace_id=ws.id), metadata=x.md),
        Code.NOT_FOUND,
    )
    await fails(
        env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=ws.id), metadata=owner.md), Code.NOT_FOUND
    )
    # active again, the owner of the workspace may bring it back
    await env.orgs.UpdateOrganizationMember(
        opb.UpdateOrganizationMemberRequest(
            organization_id=org.id, user_id=x.id, status=r.MEMBER_STATUS_ACTIVE
        ),
        metadata=owner.md,
    )
    await env.ws.UndeleteWorkspace(wpb.UndeleteWorkspaceRequest(workspace_id=ws.id), metadata=x.md)


async def test_a_removed_member_cannot_come_back_with_an_older_invitation(env):
    # Two invitations to one email; the person accepts one and is removed: the other, still
    # pending, let them back in.
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    email = "twice-invited@example.com"
    invite = opb.CreateInvitationRequest(organization_id=org.id, email=email, role=r.ORG_ROLE_MEMBER)
    first = await env.orgs.CreateInvitation(invite, metadata=owner.md)
    second = await env.orgs.CreateInvitation(invite, metadata=owner.md)
    joined = await env.orgs.AcceptInvitation(
        opb.AcceptInvitationRequest(token=first.token, password=DEFAULT_PASSWORD)
    )
    member = User(joined.user_id, email, await env.identity.login(email))
    await env.orgs.RemoveOrganizationMember(
        opb.RemoveOrganizationMemberRequest(organization_id=org.id, user_id=member.id), metadata=owner.md
    )
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=second.token), metadata=member.md),
        Code.FAILED_PRECONDITION,
        "INVITATION_REVOKED",
    )
    assert not await env.can(member.id, f"organization:{org.id}", "org:view")


async def test_an_invitation_does_not_reactivate_a_deactivated_member(env, database_url):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    x = await env.member(owner, org.id)
    await env.orgs.UpdateOrganizationMember(
        opb.UpdateOrganizationMemberRequest(
            organization_id=org.id, user_id=x.id, status=r.MEMBER_STATUS_INACTIVE
        ),
        metadata=owner.md,
    )
    # an invitation that was pending from before (CreateInvitation refuses members), written as such
    token, token_hash = m.new_invitation_token()
    now = time.time()
    inv = m.Invitation(
        new_id(), org.id, x.email, "member", [], m.PENDING, token_hash, now + 3600, now, owner.id
    )
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            await Repository(session).insert_invitation(inv)
            await session.commit()
    finally:
        await database.dispose()
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=token), metadata=x.md),
        Code.FAILED_PRECONDITION,
        "MEMBERSHIP_INACTIVE",
    )
    assert not await env.can(x.id, f"organization:{org.id}", "org:view")
