"""Groups, the three-group company, cross-organization isolation, member removal, invitations, purge."""

from __future__ import annotations

import time

import grpc
import sqlalchemy as sa

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import relationship_pb2
from gatehouse.kit.db import Database
from gatehouse.tenancy.v1 import group_service_pb2 as gpb
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse.testing.identity import DEFAULT_PASSWORD
from gatehouse.type.v1 import refs_pb2

from .conftest import User, fails

Code = grpc.StatusCode
Op = relationship_pb2.RelationshipUpdate.Operation


def group_ref(group_id):
    return refs_pb2.SubjectRef(type="group", id=group_id)


async def make_group(env, admin, org_id, name):
    return (
        await env.groups.CreateGroup(
            gpb.CreateGroupRequest(organization_id=org_id, name=name), metadata=admin.md
        )
    ).group


async def add_to_group(env, admin, group_id, user):
    await env.groups.AddGroupMember(
        gpb.AddGroupMemberRequest(group_id=group_id, user_id=user.id), metadata=admin.md
    )


async def test_company_with_three_groups_union_of_roles(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    ws = await env.workspace(owner, org.id)
    wref = f"workspace:{ws.id}"
    readers = await make_group(env, owner, org.id, "Readers")
    writers = await make_group(env, owner, org.id, "Writers")
    admins = await make_group(env, owner, org.id, "Admins")
    for g, role in (
        (readers, r.WORKSPACE_ROLE_VIEWER),
        (writers, r.WORKSPACE_ROLE_MEMBER),
        (admins, r.WORKSPACE_ROLE_ADMIN),
    ):
        await env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(workspace_id=ws.id, principal=group_ref(g.id), role=role),
            metadata=owner.md,
        )
    # grants to a group too: writers also get manage:skills through a direct grant on the workspace
    two_groups = await env.member(owner, org.id)
    one_group = await env.member(owner, org.id)
    none = await env.member(owner, org.id)
    await add_to_group(env, owner, readers.id, two_groups)
    await add_to_group(env, owner, admins.id, two_groups)
    await add_to_group(env, owner, writers.id, one_group)
    assert await env.can(two_groups, wref, "manage:members")  # from Admins
    assert await env.can(two_groups, wref, "chat")  # from Readers (and Admins)
    assert await env.can(one_group, wref, "manage:wiki") and await env.can(one_group, wref, "chat")
    assert not await env.can(one_group, wref, "manage:members")
    assert not await env.can(none, wref, "chat")
    access = await env.ws.GetWorkspaceAccess(
        wpb.GetWorkspaceAccessRequest(workspace_id=ws.id), metadata=two_groups.md
    )
    assert access.effective_role == "admin" and access.member_role == ""
    # group listing, members and updates
    listed = await env.groups.ListGroups(
        gpb.ListGroupsRequest(organization_id=org.id, page_size=2), metadata=none.md
    )
    assert len(listed.groups) == 2 and listed.next_page_token
    assert [g.member_count for g in listed.groups] == [1, 1]
    members = await env.groups.ListGroupMembers(
        gpb.ListGroupMembersRequest(group_id=admins.id), metadata=none.md
    )
    assert [m.user_id for m in members.members] == [two_groups.id] and members.members[
        0
    ].email == two_groups.email
    await fails(make_group(env, owner, org.id, "readers"), Code.ALREADY_EXISTS)
    renamed = await env.groups.UpdateGroup(
        gpb.UpdateGroupRequest(
            group=r.Group(id=readers.id, name="Viewers", etag=readers.etag), update_mask={"paths": ["name"]}
        ),
        metadata=owner.md,
    )
    assert renamed.group.name == "Viewers" and renamed.group.member_count == 1
    await fails(
        env.groups.UpdateGroup(
            gpb.UpdateGroupRequest(
                group=r.Group(id=readers.id, name="writers"), update_mask={"paths": ["name"]}
            ),
            metadata=owner.md,
        ),
        Code.ALREADY_EXISTS,
    )
    await fails(
        env.groups.UpdateGroup(
            gpb.UpdateGroupRequest(
                group=r.Group(id=readers.id, name="X", etag=readers.etag), update_mask={"paths": ["name"]}
            ),
            metadata=owner.md,
        ),
        Code.ABORTED,
    )
    await fails(make_group(env, none, org.id, "Mine"), Code.PERMISSION_DENIED)
    # members must belong to the organization
    outsider = await env.user()
    await fails(
        add_to_group(env, owner, readers.id, outsider), Code.FAILED_PRECONDITION, "MEMBERSHIP_NOT_ACTIVE"
    )
    # removing from a group and deleting a group remove what they gave
    await env.groups.RemoveGroupMember(
        gpb.RemoveGroupMemberRequest(group_id=admins.id, user_id=two_groups.id), metadata=owner.md
    )
    assert not await env.can(two_groups, wref, "manage:members") and await env.can(two_groups, wref, "chat")
    await env.groups.DeleteGroup(gpb.DeleteGroupRequest(group_id=writers.id), metadata=owner.md)
    assert not await env.can(one_group, wref, "chat")
    assert await env.relationships(subject_type="group", subject_id=writers.id) == []
    assert await env.relationships(resource_type="group", resource_id=writers.id) == []
    await fails(
        env.groups.GetGroup(gpb.GetGroupRequest(group_id=writers.id), metadata=owner.md), Code.NOT_FOUND
    )


async def test_one_organization_cannot_see_anything_of_another(env):
    admin = await env.admin()
    owner_a, owner_b = await env.user(), await env.user()
    org_a, org_b = await env.org(admin, owner_a), await env.org(admin, owner_b)
    ws_b = await env.workspace(owner_b, org_b.id)
    group_b = await make_group(env, owner_b, org_b.id, "B team")
    member_b = await env.member(owner_b, org_b.id)
    inv_b = await env.orgs.CreateInvitation(
        opb.CreateInvitationRequest(
            organization_id=org_b.id, email="someone@example.com", role=r.ORG_ROLE_MEMBER
        ),
        metadata=owner_b.md,
    )
    a = owner_a  # the owner (and so admin) of organization A
    calls = [
        env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=ws_b.id), metadata=a.md),
        env.ws.GetWorkspaceAccess(wpb.GetWorkspaceAccessRequest(workspace_id=ws_b.id), metadata=a.md),
        env.ws.ListWorkspaces(wpb.ListWorkspacesRequest(organization_id=org_b.id), metadata=a.md),
        env.ws.ListWorkspaceMembers(wpb.ListWorkspaceMembersRequest(workspace_id=ws_b.id), metadata=a.md),
        env.ws.UpdateWorkspace(
            wpb.UpdateWorkspaceRequest(
                workspace=r.Workspace(id=ws_b.id, name="x"), update_mask={"paths": ["name"]}
            ),
            metadata=a.md,
        ),
        env.ws.DeleteWorkspace(wpb.DeleteWorkspaceRequest(workspace_id=ws_b.id), metadata=a.md),
        env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(
                workspace_id=ws_b.id, principal=refs_pb2.SubjectRef(type="user", id=a.id)
            ),
            metadata=a.md,
        ),
        env.orgs.ListOrganizationMembers(
            opb.ListOrganizationMembersRequest(organization_id=org_b.id), metadata=a.md
        ),
        env.orgs.UpdateOrganizationMember(
            opb.UpdateOrganizationMemberRequest(
                organization_id=org_b.id, user_id=member_b.id, role=r.ORG_ROLE_ADMIN
            ),
            metadata=a.md,
        ),
        env.orgs.RemoveOrganizationMember(
            opb.RemoveOrganizationMemberRequest(organization_id=org_b.id, user_id=member_b.id), metadata=a.md
        ),
        env.groups.GetGroup(gpb.GetGroupRequest(group_id=group_b.id), metadata=a.md),
        env.groups.ListGroups(gpb.ListGroupsRequest(organization_id=org_b.id), metadata=a.md),
        env.groups.AddGroupMember(
            gpb.AddGroupMemberRequest(group_id=group_b.id, user_id=a.id), metadata=a.md
        ),
        env.groups.DeleteGroup(gpb.DeleteGroupRequest(group_id=group_b.id), metadata=a.md),
        env.orgs.ListInvitations(opb.ListInvitationsRequest(organization_id=org_b.id), metadata=a.md),
        env.orgs.RevokeInvitation(
            opb.RevokeInvitationRequest(organization_id=org_b.id, invitation_id=inv_b.invitation.id),
            metadata=a.md,
        ),
        # B's invitation addressed through A's own organization
        env.orgs.RevokeInvitation(
            opb.RevokeInvitationRequest(organization_id=org_a.id, invitation_id=inv_b.invitation.id),
            metadata=a.md,
        ),
        # B's workspace in an invitation of A
        env.orgs.CreateInvitation(
            opb.CreateInvitationRequest(
                organization_id=org_b.id, email="x@example.com", role=r.ORG_ROLE_MEMBER
            ),
            metadata=a.md,
        ),
    ]
    for call in calls:
        await fails(call, Code.NOT_FOUND)
    # the answer does not even differ from the one for an id that never existed
    unknown_id = "0190aaaa-0000-7000-8000-000000000000"
    for get, real in (
        (lambda i: env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=i), metadata=a.md), ws_b.id),
        (lambda i: env.groups.GetGroup(gpb.GetGroupRequest(group_id=i), metadata=a.md), group_b.id),
    ):
        seen = await fails(get(real), Code.NOT_FOUND)
        unknown = await fails(get(unknown_id), Code.NOT_FOUND)
        assert seen.details().replace(real, "X") == unknown.details().replace(unknown_id, "X")
    # and the group of B cannot be added to A's workspace
    ws_a = await env.workspace(owner_a, org_a.id)
    await fails(
        env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(workspace_id=ws_a.id, principal=group_ref(group_b.id)),
            metadata=a.md,
        ),
        Code.NOT_FOUND,
    )
    # nothing in B changed
    assert await env.can(member_b, f"organization:{org_b.id}", "org:view")
    assert (await env.groups.GetGroup(gpb.GetGroupRequest(group_id=group_b.id), metadata=owner_b.md)).group.id


async def test_removing_a_member_strips_every_role_membership_and_grant(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    other_org = await env.org(admin, owner)
    ws1, ws2 = await env.workspace(owner, org.id), await env.workspace(owner, org.id)
    ws_other = await env.workspace(owner, other_org.id)
    leaver = await env.member(owner, org.id, r.ORG_ROLE_ADMIN)
    # also a member of the other organization: that must stay
    await env.orgs.CreateInvitation(
        opb.CreateInvitationRequest(organization_id=other_org.id, email="unused@example.com"),
        metadata=owner.md,
    )
    group = await make_group(env, owner, org.id, "G")
    await add_to_group(env, owner, group.id, leaver)
    for ws in (ws1, ws2):
        await env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(
                workspace_id=ws.id,
                principal=refs_pb2.SubjectRef(type="user", id=leaver.id),
                role=r.WORKSPACE_ROLE_ADMIN,
            ),
            metadata=owner.md,
        )
    # the leaver creates (and so owns) a workspace; a direct grant on an object in the organization
    own_ws = await env.workspace(leaver, org.id)
    svc = await env.identity.service_metadata("tenancy")

    def rel(res, relation, sub, cap=""):
        rt, ri = res.split(":")
        st, si = sub.split(":")
        return relationship_pb2.RelationshipUpdate(
            operation=Op.OPERATION_TOUCH,
            relationship=relationship_pb2.Relationship(
                resource=refs_pb2.ResourceRef(type=rt, id=ri),
                relation=relation,
                subject=refs_pb2.SubjectRef(type=st, id=si),
                capability=cap,
            ),
        )

    await env.authz.WriteRelationships(
        apb.WriteRelationshipsRequest(
            updates=[
                rel("dataset:d1", "parent", f"workspace:{ws1.id}"),
                rel("dataset:d1", "grant", f"user:{leaver.id}", "read"),
                rel("dataset:d9", "parent", f"workspace:{ws_other.id}"),
                rel("dataset:d9", "grant", f"user:{leaver.id}", "read"),
            ]
        ),
        metadata=svc,
    )
    assert (
        len(await env.relationships(subject_type="user", subject_id=leaver.id, within_organization_id=org.id))
        >= 6
    )
    await env.orgs.RemoveOrganizationMember(
        opb.RemoveOrganizationMemberRequest(organization_id=org.id, user_id=leaver.id), metadata=owner.md
    )
    assert (
        await env.relationships(subject_type="user", subject_id=leaver.id, within_organization_id=org.id)
        == []
    )
    for res, cap in (
        (f"workspace:{ws1.id}", "chat"),
        (f"workspace:{ws2.id}", "chat"),
        ("dataset:d1", "read"),
        (f"organization:{org.id}", "org:view"),
        (f"workspace:{own_ws.id}", "chat"),
    ):
        assert not await env.can(leaver, res, cap), res
    # the other organization's grant is untouched
    assert await env.relationships(subject_type="user", subject_id=leaver.id) == [
        f"dataset:d9#grant@user:{leaver.id}"
    ]
    # their workspace did not lose its owner: the organization's owner took it
    owners = await env.relationships(resource_type="workspace", resource_id=own_ws.id, relation="owner")
    assert owners == [f"workspace:{own_ws.id}#owner@user:{owner.id}"]
    members = await env.groups.ListGroupMembers(
        gpb.ListGroupMembersRequest(group_id=group.id), metadata=owner.md
    )
    assert members.members == []


async def test_invitation_life_cycle(env, database_url):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    ws = await env.workspace(owner, org.id)
    viewer = await env.member(owner, org.id, r.ORG_ROLE_VIEWER)
    await fails(
        env.orgs.CreateInvitation(
            opb.CreateInvitationRequest(organization_id=org.id, email="n@example.com"), metadata=viewer.md
        ),
        Code.PERMISSION_DENIED,
    )
    # never owner
    await fails(
        env.orgs.CreateInvitation(
            opb.CreateInvitationRequest(organization_id=org.id, email="n@example.com", role=r.ORG_ROLE_OWNER),
            metadata=owner.md,
        ),
        Code.INVALID_ARGUMENT,
    )
    created = await env.orgs.CreateInvitation(
        opb.CreateInvitationRequest(
            organization_id=org.id,
            email="new.person@example.com",
            role=r.ORG_ROLE_MEMBER,
            workspace_roles=[r.WorkspaceRoleAssignment(workspace_id=ws.id, role=r.WORKSPACE_ROLE_VIEWER)],
        ),
        metadata=owner.md,
    )
    inv, token = created.invitation, created.token
    assert inv.state == r.INVITATION_STATE_PENDING and token
    lifetime = inv.expire_time.ToSeconds() - inv.create_time.ToSeconds()
    assert abs(lifetime - 7 * 86400) < 5
    # resend: a new token, the old one stops working
    resent = await env.orgs.ResendInvitation(
        opb.ResendInvitationRequest(organization_id=org.id, invitation_id=inv.id), metadata=owner.md
    )
    assert resent.token != token
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=token, password=DEFAULT_PASSWORD)),
        Code.NOT_FOUND,
    )
    accepted = await env.orgs.AcceptInvitation(
        opb.AcceptInvitationRequest(token=resent.token, display_name="New Person", password=DEFAULT_PASSWORD)
    )
    new_user = User(
        accepted.user_id, "new.person@example.com", await env.identity.login("new.person@example.com")
    )
    assert accepted.organization.id == org.id
    assert await env.can(new_user, f"organization:{org.id}", "org:view")
    assert await env.can(new_user, f"workspace:{ws.id}", "chat")
    assert not await env.can(new_user, f"workspace:{ws.id}", "manage:wiki")
    # single use
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=resent.token, password=DEFAULT_PASSWORD)),
        Code.FAILED_PRECONDITION,
        "INVITATION_USED",
    )
    # revoked
    rev = await env.orgs.CreateInvitation(
        opb.CreateInvitationRequest(organization_id=org.id, email="revoked.guest@example.com"),
        metadata=owner.md,
    )
    await env.orgs.RevokeInvitation(
        opb.RevokeInvitationRequest(organization_id=org.id, invitation_id=rev.invitation.id),
        metadata=owner.md,
    )
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=rev.token, password=DEFAULT_PASSWORD)),
        Code.FAILED_PRECONDITION,
        "INVITATION_REVOKED",
    )
    # expired (time passes: the stored expiry is moved into the past)
    exp = await env.orgs.CreateInvitation(
        opb.CreateInvitationRequest(organization_id=org.id, email="expired.guest@example.com"),
        metadata=owner.md,
    )
    db = Database(database_url)
    try:
        async with db.unit_of_work() as uow:
            await uow.session.execute(
                sa.text("UPDATE invitations SET expire_time = :t WHERE id = :i"),
                {"t": time.time() - 1, "i": exp.invitation.id},
            )
            await uow.commit()
    finally:
        await db.dispose()
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=exp.token, password=DEFAULT_PASSWORD)),
        Code.FAILED_PRECONDITION,
        "INVITATION_EXPIRED",
    )
    states = await env.orgs.ListInvitations(
        opb.ListInvitationsRequest(organization_id=org.id), metadata=owner.md
    )
    by_id = {i.id: i.state for i in states.invitations}
    assert by_id == {
        inv.id: r.INVITATION_STATE_ACCEPTED,
        rev.invitation.id: r.INVITATION_STATE_REVOKED,
        exp.invitation.id: r.INVITATION_STATE_EXPIRED,
    }
    pages, token = [], ""
    for _ in range(5):
        page = await env.orgs.ListInvitations(
            opb.ListInvitationsRequest(organization_id=org.id, page_size=2, page_token=token),
            metadata=owner.md,
        )
        pages.append([i.id for i in page.invitations])
        token = page.next_page_token
        if not token:
            break
    assert [len(x) for x in pages] == [2, 1]
    assert [i for p in pages for i in p] == sorted(by_id, reverse=True)  # newest first
    only = await env.orgs.ListInvitations(
        opb.ListInvitationsRequest(organization_id=org.id, state=r.INVITATION_STATE_EXPIRED),
        metadata=owner.md,
    )
    assert [i.id for i in only.invitations] == [exp.invitation.id]
    # an expired invitation can be resent and then works
    again = await env.orgs.ResendInvitation(
        opb.ResendInvitationRequest(organization_id=org.id, invitation_id=exp.invitation.id),
        metadata=owner.md,
    )
    await env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=again.token, password=DEFAULT_PASSWORD))


async def test_existing_user_must_be_signed_in_with_the_invited_email(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    existing, someone_else = await env.user(), await env.user()
    inv = await env.orgs.CreateInvitation(
        opb.CreateInvitationRequest(organization_id=org.id, email=existing.email, role=r.ORG_ROLE_ADMIN),
        metadata=owner.md,
    )
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=inv.token, password="Whatever-Long-99")),
        Code.FAILED_PRECONDITION,
        "INVITATION_EMAIL_MISMATCH",
    )
    await fails(
        env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=inv.token), metadata=someone_else.md),
        Code.FAILED_PRECONDITION,
        "INVITATION_EMAIL_MISMATCH",
    )
    # the existing account's password is never touched: it still logs in with its own
    done = await env.orgs.AcceptInvitation(opb.AcceptInvitationRequest(token=inv.token), metadata=existing.md)
    assert done.user_id == existing.id
    assert await env.can(existing, f"organization:{org.id}", "org:invite")
    # inviting a member again: ALREADY_EXISTS
    await fails(
        env.orgs.CreateInvitation(
            opb.CreateInvitationRequest(organization_id=org.id, email=existing.email), metadata=owner.md
        ),
        Code.ALREADY_EXISTS,
    )
