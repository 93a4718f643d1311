"""The four tenancy servicers: validate the request shape, call one use case, convert the answer."""

from __future__ import annotations

import time

from gatehouse.kit import errors
from gatehouse.kit.context import current_principal
from gatehouse.kit.interceptors import require_principal
from gatehouse.tenancy.v1 import group_service_pb2 as gpb
from gatehouse.tenancy.v1 import (
    group_service_pb2_grpc,
    organization_service_pb2_grpc,
    setup_service_pb2_grpc,
    workspace_service_pb2_grpc,
)
from gatehouse.tenancy.v1 import organization_service_pb2 as opb
from gatehouse.tenancy.v1 import setup_service_pb2 as spb
from gatehouse.tenancy.v1 import workspace_service_pb2 as wpb
from gatehouse_tenancy.api import convert as c
from gatehouse_tenancy.domain import model as m

STATUS_NAME = {0: None, 2: m.MEMBER_ACTIVE, 3: m.INACTIVE, 1: "?"}


def _role(value: int, convert, field: str) -> str | None:
    role = convert(value)
    if role == "?":
        raise errors.InvalidArgument.field(field, "unknown role")
    return role


class SetupServicer(setup_service_pb2_grpc.SetupServiceServicer):
    def __init__(self, tenancy):
        self.t = tenancy

    async def GetSetupState(self, request, context):
        return spb.GetSetupStateResponse(bootstrapped=await self.t.orgs.setup_state())

    async def Bootstrap(self, request, context):
        user_id, org = await self.t.orgs.bootstrap(
            request.admin_email,
            request.admin_password,
            request.admin_display_name,
            request.organization_name,
            request.organization_slug,
        )
        return spb.BootstrapResponse(admin_user_id=user_id, organization=c.organization(org))


class OrganizationServicer(organization_service_pb2_grpc.OrganizationServiceServicer):
    def __init__(self, tenancy):
        self.t = tenancy

    async def CreateOrganization(self, request, context):
        org = await self.t.orgs.create_organization(
            require_principal(), request.name, request.slug, request.owner_user_id, request.request_id
        )
        return opb.CreateOrganizationResponse(organization=c.organization(org))

    async def GetOrganization(self, request, context):
        org = await self.t.orgs.get_organization(
            require_principal(), request.organization_id, request.show_deleted
        )
        return opb.GetOrganizationResponse(organization=c.organization(org))

    async def GetOrganizationBySlug(self, request, context):
        org = await self.t.orgs.get_organization_by_slug(request.slug)
        return opb.GetOrganizationBySlugResponse(organization=c.public_organization(org))

    async def ListOrganizations(self, request, context):
        page = await self.t.orgs.list_organizations(
            require_principal(), request.page_size, request.page_token, request.filter, request.show_deleted
        )
        return opb.ListOrganizationsResponse(
            organizations=[c.organization(o) for o in page.items], next_page_token=page.next_page_token
        )

    async def UpdateOrganization(self, request, context):
        o = request.organization
        values = {
            "name": o.name,
            "require_mfa": o.settings.require_mfa,
            "invitation_ttl_seconds": o.settings.invitation_ttl.seconds,
            "deletion_retention_days": o.settings.deletion_retention_days,
            "audit_retention_days": o.settings.audit_retention_days,
        }
        org = await self.t.orgs.update_organization(
            require_principal(), o.id, values, list(request.update_mask.paths), o.etag
        )
        return opb.UpdateOrganizationResponse(organization=c.organization(org))

    async def DeleteOrganization(self, request, context):
        org = await self.t.orgs.delete_organization(
            require_principal(), request.organization_id, request.etag, request.request_id
        )
        return opb.DeleteOrganizationResponse(organization=c.organization(org))

    async def UndeleteOrganization(self, request, context):
        org = await self.t.orgs.undelete_organization(require_principal(), request.organization_id)
        return opb.UndeleteOrganizationResponse(organization=c.organization(org))

    async def ListOrganizationMembers(self, request, context):
        page = await self.t.orgs.list_members(
            require_principal(), request.organization_id, request.page_size, request.page_token
        )
        return opb.ListOrganizationMembersResponse(
            members=[c.org_member(x) for x in page.items], next_page_token=page.next_page_token
        )

    async def CreateOrganizationMember(self, request, context):
        member = await self.t.orgs.create_member(
            require_principal(),
            request.organization_id,
            request.email,
            request.display_name,
            request.initial_password,
            _role(request.role, c.org_role, "role"),
            request.request_id,
        )
        return opb.CreateOrganizationMemberResponse(member=c.org_member(member))

    async def UpdateOrganizationMember(self, request, context):
        status = STATUS_NAME.get(request.status, "?")
        if status == "?":
            raise errors.InvalidArgument.field("status", "must be active or inactive")
        member = await self.t.orgs.update_member(
            require_principal(),
            request.organization_id,
            request.user_id,
            _role(request.role, c.org_role, "role"),
            status,
        )
        return opb.UpdateOrganizationMemberResponse(member=c.org_member(member))

    async def RemoveOrganizationMember(self, request, context):
        await self.t.orgs.remove_member(
            require_principal(), request.organization_id, request.user_id, request.request_id
        )
        return opb.RemoveOrganizationMemberResponse()

    async def TransferOrganizationOwnership(self, request, context):
        org = await self.t.orgs.transfer_ownership(
            require_principal(), request.organization_id, request.new_owner_user_id, request.request_id
        )
        return opb.TransferOrganizationOwnershipResponse(organization=c.organization(org))

    async def CreateInvitation(self, request, context):
        ws_roles = [
            (a.workspace_id, _role(a.role, c.ws_role, f"workspace_roles[{i}].role") or "member")
            for i, a in enumerate(request.workspace_roles)
        ]
        inv, token = await self.t.invitations.create_invitation(
            require_principal(),
            request.organization_id,
            request.email,
            _role(request.role, c.org_role, "role") or "member",
            ws_roles,
            request.request_id,
        )
        return opb.CreateInvitationResponse(invitation=c.invitation(inv, time.time()), token=token)

    async def ListInvitations(self, request, context):
        state = c.INVITATION_STATE_NAME.get(request.state) if request.state else None
        page = await self.t.invitations.list_invitations(
            require_principal(), request.organization_id, request.page_size, request.page_token, state
        )
        now = time.time()
        return opb.ListInvitationsResponse(
            invitations=[c.invitation(i, now) for i in page.items], next_page_token=page.next_page_token
        )

    async def RevokeInvitation(self, request, context):
        inv = await self.t.invitations.revoke_invitation(
            require_principal(), request.organization_id, request.invitation_id
        )
        return opb.RevokeInvitationResponse(invitation=c.invitation(inv, time.time()))

    async def ResendInvitation(self, request, context):
        inv, token = await self.t.invitations.resend_invitation(
            require_principal(), request.organization_id, request.invitation_id
        )
        return opb.ResendInvitationResponse(invitation=c.invitation(inv, time.time()), token=token)

    async def AcceptInvitation(self, request, context):
        org, user_id = await self.t.invitations.accept_invitation(
            current_principal(), request.token, request.display_name, request.password
        )
        return opb.AcceptInvitationResponse(organization=c.public_organization(org), user_id=user_id)


class WorkspaceServicer(workspace_service_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, tenancy):
        self.t = tenancy

    async def CreateWorkspace(self, request, context):
        ws = await self.t.workspaces.create_workspace(
            require_principal(),
            request.organization_id,
            request.name,
            request.description,
            request.request_id,
        )
        return wpb.CreateWorkspaceResponse(workspace=c.workspace(ws))

    async def GetWorkspace(self, request, context):
        ws = await self.t.workspaces.get_workspace(
            require_principal(), request.workspace_id, request.show_deleted
        )
        return wpb.GetWorkspaceResponse(workspace=c.workspace(ws))

    async def ListWorkspaces(self, request, context):
        page = await self.t.workspaces.list_workspaces(
            require_principal(),
            request.organization_id,
            request.page_size,
            request.page_token,
            request.show_deleted,
        )
        return wpb.ListWorkspacesResponse(
            workspaces=[c.workspace(w) for w in page.items], next_page_token=page.next_page_token
        )

    async def UpdateWorkspace(self, request, context):
        w = request.workspace
        ws = await self.t.workspaces.update_workspace(
            require_principal(),
            w.id,
            {"name": w.name, "description": w.description},
            list(request.update_mask.paths),
            w.etag,
        )
        return wpb.UpdateWorkspaceResponse(workspace=c.workspace(ws))

    async def DeleteWorkspace(self, request, context):
        ws = await self.t.workspaces.delete_workspace(
            require_principal(), request.workspace_id, request.etag, request.request_id
        )
        return wpb.DeleteWorkspaceResponse(workspace=c.workspace(ws))

    async def UndeleteWorkspace(self, request, context):
        ws = await self.t.workspaces.undelete_workspace(require_principal(), request.workspace_id)
        return wpb.UndeleteWorkspaceResponse(workspace=c.workspace(ws))

    async def GetWorkspaceAccess(self, request, context):
        a = await self.t.workspaces.workspace_access(require_principal(), request.workspace_id)
        return wpb.GetWorkspaceAccessResponse(
            member_role=a.member_role,
            is_platform_admin=a.is_platform_admin,
            effective_role=a.effective_role,
            capabilities=list(a.capabilities),
            revision=a.revision,
        )

    async def ListWorkspaceMembers(self, request, context):
        page = await self.t.workspaces.list_members(
            require_principal(), request.workspace_id, request.page_size, request.page_token
        )
        return wpb.ListWorkspaceMembersResponse(
            members=[c.workspace_member(x) for x in page.items], next_page_token=page.next_page_token
        )

    async def AddWorkspaceMember(self, request, context):
        member = await self.t.workspaces.add_member(
            require_principal(),
            request.workspace_id,
            request.principal.type,
            request.principal.id,
            _role(request.role, c.ws_role, "role"),
            request.request_id,
        )
        return wpb.AddWorkspaceMemberResponse(member=c.workspace_member(member))

    async def UpdateWorkspaceMember(self, request, context):
        member = await self.t.workspaces.update_member(
            require_principal(),
            request.workspace_id,
            request.member_id,
            _role(request.role, c.ws_role, "role"),
        )
        return wpb.UpdateWorkspaceMemberResponse(member=c.workspace_member(member))

    async def RemoveWorkspaceMember(self, request, context):
        await self.t.workspaces.remove_member(
            require_principal(), request.workspace_id, request.member_id, request.request_id
        )
        return wpb.RemoveWorkspaceMemberResponse()

    async def TransferWorkspaceOwnership(self, request, context):
        ws = await self.t.workspaces.transfer_ownership(
            require_principal(), request.workspace_id, request.new_owner_user_id, request.request_id
        )
        return wpb.TransferWorkspaceOwnershipResponse(workspace=c.workspace(ws))

    async def SetCurrentWorkspace(self, request, context):
        ws = await self.t.workspaces.set_current(require_principal(), request.workspace_id)
        return wpb.SetCurrentWorkspaceResponse(workspace=c.workspace(ws))

    async def GetCurrentWorkspace(self, request, context):
        ws = await self.t.workspaces.get_current(require_principal())
        return wpb.GetCurrentWorkspaceResponse(workspace=c.workspace(ws) if ws else None)


class GroupServicer(group_service_pb2_grpc.GroupServiceServicer):
    def __init__(self, tenancy):
        self.t = tenancy

    async def CreateGroup(self, request, context):
        g = await self.t.groups.create_group(
            require_principal(),
            request.organization_id,
            request.name,
            request.description,
            request.request_id,
        )
        return gpb.CreateGroupResponse(group=c.group(g))

    async def GetGroup(self, request, context):
        return gpb.GetGroupResponse(
            group=c.group(await self.t.groups.get_group(require_principal(), request.group_id))
        )

    async def ListGroups(self, request, context):
        page = await self.t.groups.list_groups(
            require_principal(), request.organization_id, request.page_size, request.page_token
        )
        return gpb.ListGroupsResponse(
            groups=[c.group(g) for g in page.items], next_page_token=page.next_page_token
        )

    async def UpdateGroup(self, request, context):
        g = request.group
        group = await self.t.groups.update_group(
            require_principal(),
            g.id,
            {"name": g.name, "description": g.description},
            list(request.update_mask.paths),
            g.etag,
        )
        return gpb.UpdateGroupResponse(group=c.group(group))

    async def DeleteGroup(self, request, context):
        await self.t.groups.delete_group(require_principal(), request.group_id, request.request_id)
        return gpb.DeleteGroupResponse()

    async def AddGroupMember(self, request, context):
        member = await self.t.groups.add_member(
            require_principal(), request.group_id, request.user_id, request.request_id
        )
        return gpb.AddGroupMemberResponse(member=c.group_member(member))

    async def RemoveGroupMember(self, request, context):
        await self.t.groups.remove_member(
            require_principal(), request.group_id, request.user_id, request.request_id
        )
        return gpb.RemoveGroupMemberResponse()

    async def ListGroupMembers(self, request, context):
        page = await self.t.groups.list_members(
            require_principal(), request.group_id, request.page_size, request.page_token
        )
        return gpb.ListGroupMembersResponse(
            members=[c.group_member(x) for x in page.items], next_page_token=page.next_page_token
        )
