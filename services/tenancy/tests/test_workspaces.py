"""Workspaces, their members, soft delete and the current workspace, through real servers."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import field_mask_pb2

from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse.type.v1 import refs_pb2

from .conftest import fails

Code = grpc.StatusCode
VIEWER_CAPS = {"chat", "view:wiki", "read:model", "read:files"}


def user_ref(u):
    return refs_pb2.SubjectRef(type="user", id=u.id)


async def test_creator_is_owner_at_once_and_names_are_unique(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    member = await env.member(owner, org.id, r.ORG_ROLE_MEMBER)
    # a plain member lacks org:create_workspace: PERMISSION_DENIED (they can see the organization)
    await fails(
        env.ws.CreateWorkspace(
            wpb.CreateWorkspaceRequest(organization_id=org.id, name="x"), metadata=member.md
        ),
        Code.PERMISSION_DENIED,
        "CAPABILITY_DENIED",
    )
    ws = await env.workspace(owner, org.id, "Research")
    # the caller sees the result immediately
    access = await env.ws.GetWorkspaceAccess(
        wpb.GetWorkspaceAccessRequest(workspace_id=ws.id), metadata=owner.md
    )
    assert access.member_role == "owner" and "delete:workspace" in access.capabilities
    await fails(
        env.ws.CreateWorkspace(
            wpb.CreateWorkspaceRequest(organization_id=org.id, name="research"), metadata=owner.md
        ),
        Code.ALREADY_EXISTS,
    )
    # request_id: a retry returns the same workspace
    req = wpb.CreateWorkspaceRequest(organization_id=org.id, name="Ops", request_id="req-7")
    a = await env.ws.CreateWorkspace(req, metadata=owner.md)
    b = await env.ws.CreateWorkspace(req, metadata=owner.md)
    assert a.workspace.id == b.workspace.id
    # update (manage:settings) with a mask and etag
    up = await env.ws.UpdateWorkspace(
        wpb.UpdateWorkspaceRequest(
            workspace=r.Workspace(id=ws.id, description="papers", etag=ws.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=owner.md,
    )
    assert up.workspace.description == "papers" and up.workspace.name == "Research"
    await fails(
        env.ws.UpdateWorkspace(
            wpb.UpdateWorkspaceRequest(
                workspace=r.Workspace(id=ws.id, name="Z", etag=ws.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=owner.md,
        ),
        Code.ABORTED,
    )


async def test_member_rules_and_owner_only_by_transfer(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    ws = await env.workspace(owner, org.id)
    wref = f"workspace:{ws.id}"
    alice = await env.member(owner, org.id)
    bob = await env.member(owner, org.id)
    outsider = await env.user()
    # only active org members
    await fails(
        env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(workspace_id=ws.id, principal=user_ref(outsider)), metadata=owner.md
        ),
        Code.FAILED_PRECONDITION,
        "MEMBERSHIP_NOT_ACTIVE",
    )
    # never owner through Add
    await fails(
        env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(
                workspace_id=ws.id, principal=user_ref(alice), role=r.WORKSPACE_ROLE_OWNER
            ),
            metadata=owner.md,
        ),
        Code.INVALID_ARGUMENT,
    )
    added = await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(workspace_id=ws.id, principal=user_ref(alice)), metadata=owner.md
    )
    assert added.member.role == r.WORKSPACE_ROLE_MEMBER  # the default
    assert await env.can(alice, wref, "manage:wiki") and not await env.can(alice, wref, "manage:members")
    # a member cannot manage members: PERMISSION_DENIED
    await fails(
        env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(workspace_id=ws.id, principal=user_ref(bob)), metadata=alice.md
        ),
        Code.PERMISSION_DENIED,
    )
    await env.ws.UpdateWorkspaceMember(
        wpb.UpdateWorkspaceMemberRequest(
            workspace_id=ws.id, member_id=f"user:{alice.id}", role=r.WORKSPACE_ROLE_ADMIN
        ),
        metadata=owner.md,
    )
    assert await env.can(alice, wref, "manage:members")
    # the owner cannot be changed or removed, even by an admin
    await fails(
        env.ws.UpdateWorkspaceMember(
            wpb.UpdateWorkspaceMemberRequest(
                workspace_id=ws.id, member_id=f"user:{owner.id}", role=r.WORKSPACE_ROLE_VIEWER
            ),
            metadata=alice.md,
        ),
        Code.FAILED_PRECONDITION,
        "OWNER_CANNOT_BE_REMOVED",
    )
    await fails(
        env.ws.RemoveWorkspaceMember(
            wpb.RemoveWorkspaceMemberRequest(workspace_id=ws.id, member_id=f"user:{owner.id}"),
            metadata=alice.md,
        ),
        Code.FAILED_PRECONDITION,
        "OWNER_CANNOT_BE_REMOVED",
    )
    # transfer needs transfer:ownership (owner), and the old owner becomes admin
    await fails(
        env.ws.TransferWorkspaceOwnership(
            wpb.TransferWorkspaceOwnershipRequest(workspace_id=ws.id, new_owner_user_id=alice.id),
            metadata=alice.md,
        ),
        Code.PERMISSION_DENIED,
    )
    await env.ws.TransferWorkspaceOwnership(
        wpb.TransferWorkspaceOwnershipRequest(workspace_id=ws.id, new_owner_user_id=alice.id),
        metadata=owner.md,
    )
    access = await env.ws.GetWorkspaceAccess(
        wpb.GetWorkspaceAccessRequest(workspace_id=ws.id), metadata=alice.md
    )
    assert access.member_role == "owner"
    members = await env.ws.ListWorkspaceMembers(
        wpb.ListWorkspaceMembersRequest(workspace_id=ws.id), metadata=alice.md
    )
    roles = {m.member_id: m.role for m in members.members}
    assert roles == {f"user:{alice.id}": r.WORKSPACE_ROLE_OWNER, f"user:{owner.id}": r.WORKSPACE_ROLE_ADMIN}
    # remove a member: their capabilities go at once
    await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(
            workspace_id=ws.id, principal=user_ref(bob), role=r.WORKSPACE_ROLE_VIEWER
        ),
        metadata=alice.md,
    )
    assert await env.can(bob, wref, "chat")
    await env.ws.RemoveWorkspaceMember(
        wpb.RemoveWorkspaceMemberRequest(workspace_id=ws.id, member_id=f"user:{bob.id}"), metadata=alice.md
    )
    assert not await env.can(bob, wref, "chat")


async def test_concurrent_workspace_transfers_leave_exactly_one_owner(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    ws = await env.workspace(owner, org.id)
    people = [await env.member(owner, org.id) for _ in range(3)]
    results = await asyncio.gather(
        *[
            env.ws.TransferWorkspaceOwnership(
                wpb.TransferWorkspaceOwnershipRequest(workspace_id=ws.id, new_owner_user_id=p.id),
                metadata=owner.md,
            )
            for p in people
        ],
        return_exceptions=True,
    )
    assert sum(not isinstance(x, Exception) for x in results) == 1
    assert {x.code() for x in results if isinstance(x, Exception)} <= {Code.ABORTED, Code.PERMISSION_DENIED}
    rels = await env.relationships(resource_type="workspace", resource_id=ws.id, relation="owner")
    assert len(rels) == 1
    members = await env.ws.ListWorkspaceMembers(
        wpb.ListWorkspaceMembersRequest(workspace_id=ws.id), metadata=admin.md
    )
    owners = [m.member_id for m in members.members if m.role == r.WORKSPACE_ROLE_OWNER]
    assert owners == [rels[0].split("@")[1]]


async def test_list_only_reachable_workspaces_paginated(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    wss = [await env.workspace(owner, org.id) for _ in range(3)]
    viewer = await env.member(owner, org.id, r.ORG_ROLE_VIEWER)
    await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(
            workspace_id=wss[1].id, principal=user_ref(viewer), role=r.WORKSPACE_ROLE_VIEWER
        ),
        metadata=owner.md,
    )
    seen = await env.ws.ListWorkspaces(wpb.ListWorkspacesRequest(organization_id=org.id), metadata=viewer.md)
    assert [w.id for w in seen.workspaces] == [wss[1].id]
    # another workspace of the same organization: PERMISSION_DENIED (they can see the organization)
    await fails(
        env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=wss[0].id), metadata=viewer.md),
        Code.PERMISSION_DENIED,
    )
    ids, token = [], ""
    for _ in range(5):
        page = await env.ws.ListWorkspaces(
            wpb.ListWorkspacesRequest(organization_id=org.id, page_size=2, page_token=token),
            metadata=owner.md,
        )
        ids += [w.id for w in page.workspaces]
        token = page.next_page_token
        if not token:
            break
    assert ids == sorted(w.id for w in wss)


async def test_delete_and_undelete_flip_every_capability(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    ws = await env.workspace(owner, org.id)
    wref = f"workspace:{ws.id}"
    member = await env.member(owner, org.id)
    await env.ws.AddWorkspaceMember(
        wpb.AddWorkspaceMemberRequest(
            workspace_id=ws.id, principal=user_ref(member), role=r.WORKSPACE_ROLE_ADMIN
        ),
        metadata=owner.md,
    )
    await fails(
        env.ws.DeleteWorkspace(wpb.DeleteWorkspaceRequest(workspace_id=ws.id), metadata=member.md),
        Code.PERMISSION_DENIED,
    )
    before = await env.ws.GetWorkspaceAccess(
        wpb.GetWorkspaceAccessRequest(workspace_id=ws.id), metadata=owner.md
    )
    every = list(before.capabilities)
    assert len(every) >= 17 and "transfer:ownership" in every
    deleted = await env.ws.DeleteWorkspace(wpb.DeleteWorkspaceRequest(workspace_id=ws.id), metadata=owner.md)
    assert deleted.workspace.state == r.STATE_DELETED and deleted.workspace.HasField("purge_time")
    for who in (owner, member, admin):
        for cap in every:
            assert not await env.can(who, wref, cap), (who.id, cap)
    # hidden: NOT_FOUND, and not listed; show_deleted only for who may undelete
    await fails(
        env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=ws.id), metadata=owner.md), Code.NOT_FOUND
    )
    await fails(
        env.ws.GetWorkspace(
            wpb.GetWorkspaceRequest(workspace_id=ws.id, show_deleted=True), metadata=member.md
        ),
        Code.NOT_FOUND,
    )
    shown = await env.ws.GetWorkspace(
        wpb.GetWorkspaceRequest(workspace_id=ws.id, show_deleted=True), metadata=owner.md
    )
    assert shown.workspace.state == r.STATE_DELETED
    listed = await env.ws.ListWorkspaces(wpb.ListWorkspacesRequest(organization_id=org.id), metadata=owner.md)
    assert ws.id not in [w.id for w in listed.workspaces]
    listed = await env.ws.ListWorkspaces(
        wpb.ListWorkspacesRequest(organization_id=org.id, show_deleted=True), metadata=owner.md
    )
    assert ws.id in [w.id for w in listed.workspaces]
    await fails(
        env.ws.UndeleteWorkspace(wpb.UndeleteWorkspaceRequest(workspace_id=ws.id), metadata=member.md),
        Code.NOT_FOUND,
    )
    back = await env.ws.UndeleteWorkspace(wpb.UndeleteWorkspaceRequest(workspace_id=ws.id), metadata=owner.md)
    assert back.workspace.state == r.STATE_ACTIVE
    for cap in every:
        assert await env.can(owner, wref, cap), cap
        assert await env.can(admin, wref, cap), cap
    assert await env.can(member, wref, "manage:members") and not await env.can(
        member, wref, "delete:workspace"
    )


async def test_delete_organization_stops_everything_under_it(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    ws = await env.workspace(owner, org.id)
    org_admin = await env.member(owner, org.id, r.ORG_ROLE_ADMIN)
    await fails(
        env.orgs.DeleteOrganization(
            opb.DeleteOrganizationRequest(organization_id=org.id), metadata=org_admin.md
        ),
        Code.PERMISSION_DENIED,
    )
    await env.orgs.DeleteOrganization(
        opb.DeleteOrganizationRequest(organization_id=org.id), metadata=owner.md
    )
    assert not await env.can(owner, f"workspace:{ws.id}", "chat")
    assert not await env.can(org_admin, f"organization:{org.id}", "org:view")
    await fails(
        env.orgs.GetOrganization(opb.GetOrganizationRequest(organization_id=org.id), metadata=owner.md),
        Code.NOT_FOUND,
    )
    await fails(
        env.ws.GetWorkspace(wpb.GetWorkspaceRequest(workspace_id=ws.id), metadata=owner.md), Code.NOT_FOUND
    )
    mine = await env.orgs.ListOrganizations(opb.ListOrganizationsRequest(), metadata=owner.md)
    assert org.id not in [o.id for o in mine.organizations]
    shown = await env.orgs.GetOrganization(
        opb.GetOrganizationRequest(organization_id=org.id, show_deleted=True), metadata=owner.md
    )
    assert shown.organization.state == r.STATE_DELETED and shown.organization.HasField("purge_time")
    await fails(
        env.orgs.GetOrganization(
            opb.GetOrganizationRequest(organization_id=org.id, show_deleted=True), metadata=org_admin.md
        ),
        Code.NOT_FOUND,
    )
    every = await env.orgs.ListOrganizations(
        opb.ListOrganizationsRequest(show_deleted=True, page_size=1000), metadata=admin.md
    )
    assert org.id in [o.id for o in every.organizations]
    await fails(
        env.orgs.UndeleteOrganization(
            opb.UndeleteOrganizationRequest(organization_id=org.id), metadata=org_admin.md
        ),
        Code.NOT_FOUND,
    )
    await env.orgs.UndeleteOrganization(
        opb.UndeleteOrganizationRequest(organization_id=org.id), metadata=owner.md
    )
    assert await env.can(owner, f"workspace:{ws.id}", "chat")
    assert await env.can(org_admin, f"organization:{org.id}", "org:invite")


async def test_current_workspace_falls_back_when_access_is_lost(env):
    admin, owner = await env.admin(), await env.user()
    org = await env.org(admin, owner)
    first, second = await env.workspace(owner, org.id), await env.workspace(owner, org.id)
    member = await env.member(owner, org.id)
    for ws in (first, second):
        await env.ws.AddWorkspaceMember(
            wpb.AddWorkspaceMemberRequest(workspace_id=ws.id, principal=user_ref(member)), metadata=owner.md
        )
    await env.ws.SetCurrentWorkspace(
        wpb.SetCurrentWorkspaceRequest(workspace_id=second.id), metadata=member.md
    )
    cur = await env.ws.GetCurrentWorkspace(wpb.GetCurrentWorkspaceRequest(), metadata=member.md)
    assert cur.workspace.id == second.id
    await env.ws.RemoveWorkspaceMember(
        wpb.RemoveWorkspaceMemberRequest(workspace_id=second.id, member_id=f"user:{member.id}"),
        metadata=owner.md,
    )
    cur = await env.ws.GetCurrentWorkspace(wpb.GetCurrentWorkspaceRequest(), metadata=member.md)
    assert cur.workspace.id == first.id
    # one cannot remember a workspace one cannot reach
    await fails(
        env.ws.SetCurrentWorkspace(
            wpb.SetCurrentWorkspaceRequest(workspace_id=second.id), metadata=member.md
        ),
        Code.PERMISSION_DENIED,
    )
