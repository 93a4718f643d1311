"""Converters between tenancy domain objects and the gatehouse.tenancy.v1 messages."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2

from gatehouse.tenancy.v1 import resources_pb2 as r
from gatehouse.type.v1 import refs_pb2
from gatehouse_tenancy.domain import model as m

STATE = {m.ACTIVE: r.STATE_ACTIVE, m.DELETED: r.STATE_DELETED}
ORG_ROLE = {
    "viewer": r.ORG_ROLE_VIEWER,
    "member": r.ORG_ROLE_MEMBER,
    "admin": r.ORG_ROLE_ADMIN,
    "owner": r.ORG_ROLE_OWNER,
}
WS_ROLE = {
    "viewer": r.WORKSPACE_ROLE_VIEWER,
    "member": r.WORKSPACE_ROLE_MEMBER,
    "admin": r.WORKSPACE_ROLE_ADMIN,
    "owner": r.WORKSPACE_ROLE_OWNER,
}
MEMBER_STATUS = {
    m.INVITED: r.MEMBER_STATUS_INVITED,
    m.MEMBER_ACTIVE: r.MEMBER_STATUS_ACTIVE,
    m.INACTIVE: r.MEMBER_STATUS_INACTIVE,
}
INVITATION_STATE = {
    m.PENDING: r.INVITATION_STATE_PENDING,
    m.ACCEPTED: r.INVITATION_STATE_ACCEPTED,
    m.EXPIRED: r.INVITATION_STATE_EXPIRED,
    m.REVOKED: r.INVITATION_STATE_REVOKED,
}


def _rev(mapping: dict) -> dict:
    return {v: k for k, v in mapping.items()}


ORG_ROLE_NAME = _rev(ORG_ROLE)
WS_ROLE_NAME = _rev(WS_ROLE)
MEMBER_STATUS_NAME = _rev(MEMBER_STATUS)
INVITATION_STATE_NAME = _rev(INVITATION_STATE)


def org_role(value: int) -> str | None:
    """Role name of an enum value; None for UNSPECIFIED, '?' for an unknown value (rejected later)."""
    return None if value == 0 else ORG_ROLE_NAME.get(value, "?")


def ws_role(value: int) -> str | None:
    return None if value == 0 else WS_ROLE_NAME.get(value, "?")


def ts(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def organization(org: m.Organization) -> r.Organization:
    s = org.settings
    return r.Organization(
        id=org.id,
        name=org.name,
        slug=org.slug,
        state=STATE[org.state],
        settings=r.OrganizationSettings(
            require_mfa=s.require_mfa,
            invitation_ttl=duration_pb2.Duration(seconds=s.invitation_ttl_seconds),
            deletion_retention_days=s.deletion_retention_days,
            audit_retention_days=s.audit_retention_days,
        ),
        create_time=ts(org.create_time),
        update_time=ts(org.update_time),
        delete_time=ts(org.delete_time),
        purge_time=ts(org.purge_time),
        etag=org.etag,
    )


def public_organization(org: m.Organization) -> r.Organization:
    return r.Organization(id=org.id, name=org.name, slug=org.slug)


def org_member(mem: m.OrgMember) -> r.OrganizationMember:
    return r.OrganizationMember(
        user_id=mem.user_id,
        email=mem.email,
        display_name=mem.display_name,
        role=ORG_ROLE[mem.role],
        status=MEMBER_STATUS[mem.status],
        create_time=ts(mem.create_time) if mem.create_time else None,
    )


def workspace(ws: m.Workspace) -> r.Workspace:
    return r.Workspace(
        id=ws.id,
        organization_id=ws.organization_id,
        name=ws.name,
        description=ws.description,
        state=STATE[ws.state],
        create_time=ts(ws.create_time),
        update_time=ts(ws.update_time),
        delete_time=ts(ws.delete_time),
        purge_time=ts(ws.purge_time),
        etag=ws.etag,
    )


def workspace_member(mem: m.WorkspaceMember) -> r.WorkspaceMember:
    return r.WorkspaceMember(
        member_id=mem.member_id,
        principal=refs_pb2.SubjectRef(type=mem.principal_type, id=mem.principal_id),
        display_name=mem.display_name,
        role=WS_ROLE[mem.role],
    )


def group(g: m.Group) -> r.Group:
    return r.Group(
        id=g.id,
        organization_id=g.organization_id,
        name=g.name,
        description=g.description,
        member_count=g.member_count,
        create_time=ts(g.create_time),
        update_time=ts(g.update_time),
        etag=g.etag,
    )


def group_member(gm: m.GroupMember) -> r.GroupMember:
    return r.GroupMember(user_id=gm.user_id, email=gm.email, display_name=gm.display_name)


def invitation(inv: m.Invitation, now: float) -> r.Invitation:
    return r.Invitation(
        id=inv.id,
        organization_id=inv.organization_id,
        email=inv.email,
        role=ORG_ROLE[inv.role],
        workspace_roles=[
            r.WorkspaceRoleAssignment(workspace_id=w, role=WS_ROLE.get(role, 0))
            for w, role in inv.workspace_roles
        ],
        state=INVITATION_STATE[inv.state_at(now)],
        expire_time=ts(inv.expire_time),
        create_time=ts(inv.create_time),
        inviter_user_id=inv.inviter_user_id,
    )
