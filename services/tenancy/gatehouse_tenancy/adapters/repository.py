"""Repositories of the tenancy tables over one SQLAlchemy session (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gatehouse.kit import errors
from gatehouse_tenancy.adapters import tables as t
from gatehouse_tenancy.domain import model as m


def _org(row) -> m.Organization:
    return m.Organization(
        id=row.id,
        name=row.name,
        slug=row.slug,
        state=row.state,
        owner_user_id=row.owner_user_id,
        settings=m.OrgSettings(
            require_mfa=bool(row.require_mfa),
            invitation_ttl_seconds=row.invitation_ttl_seconds,
            deletion_retention_days=row.deletion_retention_days,
            audit_retention_days=row.audit_retention_days,
        ),
        create_time=row.create_time,
        update_time=row.update_time,
        delete_time=row.delete_time,
        purge_time=row.purge_time,
        version=row.version,
    )


def _ws(row) -> m.Workspace:
    return m.Workspace(
        id=row.id,
        organization_id=row.organization_id,
        name=row.name,
        description=row.description,
        state=row.state,
        owner_user_id=row.owner_user_id,
        create_time=row.create_time,
        update_time=row.update_time,
        delete_time=row.delete_time,
        purge_time=row.purge_time,
        version=row.version,
    )


def _group(row, count: int = 0) -> m.Group:
    return m.Group(
        id=row.id,
        organization_id=row.organization_id,
        name=row.name,
        description=row.description,
        create_time=row.create_time,
        update_time=row.update_time,
        version=row.version,
        member_count=count,
    )


def _invitation(row) -> m.Invitation:
    return m.Invitation(
        id=row.id,
        organization_id=row.organization_id,
        email=row.email,
        role=row.role,
        workspace_roles=[tuple(x) for x in json.loads(row.workspace_roles)],
        state=row.state,
        token_hash=row.token_hash,
        expire_time=row.expire_time,
        create_time=row.create_time,
        inviter_user_id=row.inviter_user_id,
        accepted_user_id=row.accepted_user_id,
    )


class Repository:
    """All reads and writes of tenancy rows inside one unit of work."""

    def __init__(self, session: AsyncSession):
        self.s = session

    async def _one(self, query):
        return (await self.s.execute(query)).first()

    # ---- setup ------------------------------------------------------------
    async def setup_state(self):
        return await self._one(sa.select(t.setup_state).where(t.setup_state.c.id == 1))

    async def mark_bootstrapped(self, admin_user_id: str, organization_id: str) -> None:
        """Insert the single setup row; a concurrent second bootstrap fails on the primary key."""
        # No SAVEPOINT (pysqlite's would commit early): a failure aborts the whole unit of work anyway.
        try:
            await self.s.execute(
                t.setup_state.insert().values(
                    id=1,
                    admin_user_id=admin_user_id,
                    organization_id=organization_id,
                    create_time=time.time(),
                )
            )
        except IntegrityError:
            raise errors.FailedPrecondition(
                "the deployment is already bootstrapped", reason="ALREADY_BOOTSTRAPPED"
            ) from None

    # ---- idempotency ------------------------------------------------------
    async def request_result(self, key: str) -> str | None:
        row = await self._one(sa.select(t.requests.c.result_id).where(t.requests.c.key == key))
        return row.result_id if row else None

    async def remember_request(self, key: str, result_id: str) -> None:
        try:
            await self.s.execute(
                t.requests.insert().values(key=key, result_id=result_id, create_time=time.time())
            )
        except IntegrityError:
            # the same request_id is being served right now by a concurrent call
            raise errors.Aborted("a request with this request_id is in progress; retry") from None

    # ---- organizations ----------------------------------------------------
    async def lock_organization(self, org_id: str) -> bool:
        """Serialize changes of one organization (row lock on PostgreSQL, write lock on SQLite)."""
        result = await self.s.execute(
            t.organizations.update()
            .where(t.organizations.c.id == org_id)
            .values(lock_seq=t.organizations.c.lock_seq + 1)
        )
        return bool(result.rowcount)

    async def get_organization(self, org_id: str) -> m.Organization | None:
        row = await self._one(sa.select(t.organizations).where(t.organizations.c.id == org_id))
        return _org(row) if row else None

    async def get_organization_by_slug(self, slug: str) -> m.Organization | None:
        row = await self._one(sa.select(t.organizations).where(t.organizations.c.slug == slug))
        return _org(row) if row else None

    async def organization_name_taken(self, name: str, except_id: str = "") -> bool:
        row = await self._one(
            sa.select(t.organizations.c.id).where(
                t.organizations.c.name_key == m.name_key(name), t.organizations.c.id != except_id
            )
        )
        return row is not None

    async def insert_organization(self, org: m.Organization) -> None:
        try:
            await self.s.execute(t.organizations.insert().values(**self._org_values(org)))
        except IntegrityError:
            raise errors.AlreadyExists(
                "an organization with this name or slug already exists", reason=None
            ) from None

    @staticmethod
    def _org_values(org: m.Organization) -> dict:
        return dict(
            id=org.id,
            name=org.name,
            name_key=m.name_key(org.name),
            slug=org.slug,
            state=org.state,
            owner_user_id=org.owner_user_id,
            require_mfa=org.settings.require_mfa,
            invitation_ttl_seconds=org.settings.invitation_ttl_seconds,
            deletion_retention_days=org.settings.deletion_retention_days,
            audit_retention_days=org.settings.audit_retention_days,
            create_time=org.create_time,
            update_time=org.update_time,
            delete_time=org.delete_time,
            purge_time=org.purge_time,
            version=org.version,
        )

    async def save_organization(self, org: m.Organization) -> None:
        values = self._org_values(org)
        values.pop("id")
        try:
            await self.s.execute(
                t.organizations.update().where(t.organizations.c.id == org.id).values(**values)
            )
        except IntegrityError:
            raise errors.AlreadyExists("an organization with this name already exists") from None

    async def list_organizations(
        self,
        *,
        ids: list[str] | None,
        after: str,
        limit: int,
        show_deleted: bool,
        prefix: tuple[str, str] | None,
    ) -> list[m.Organization]:
        c = t.organizations.c
        q = sa.select(t.organizations).where(c.id > after).order_by(c.id).limit(limit)
        if ids is not None:
            q = q.where(c.id.in_(ids))
        if not show_deleted:
            q = q.where(c.state == m.ACTIVE)
        if prefix:
            column = c.name_key if prefix[0] == "name" else c.slug
            value = prefix[1].casefold() if prefix[0] == "name" else prefix[1]
            q = q.where(column.startswith(value, autoescape=True))
        return [_org(r) for r in (await self.s.execute(q)).all()]

    async def purgeable_organizations(self, now: float) -> list[m.Organization]:
        c = t.organizations.c
        rows = (
            await self.s.execute(sa.select(t.organizations).where(c.state == m.DELETED, c.purge_time <= now))
        ).all()
        return [_org(r) for r in rows]

    async def delete_organization_rows(self, org_id: str) -> None:
        ws_ids = sa.select(t.workspaces.c.id).where(t.workspaces.c.organization_id == org_id)
        group_ids = sa.select(t.groups.c.id).where(t.groups.c.organization_id == org_id)
        await self.s.execute(
            t.workspace_members.delete().where(t.workspace_members.c.workspace_id.in_(ws_ids))
        )
        await self.s.execute(t.group_members.delete().where(t.group_members.c.group_id.in_(group_ids)))
        for table in (t.workspaces, t.groups, t.invitations, t.org_members):
            await self.s.execute(table.delete().where(table.c.organization_id == org_id))
        await self.s.execute(t.organizations.delete().where(t.organizations.c.id == org_id))

    # ---- organization members --------------------------------------------
    async def is_active_member(self, org_id: str, user_id: str) -> bool:
        member = await self.get_org_member(org_id, user_id)
        return member is not None and member.status == m.MEMBER_ACTIVE

    async def get_org_member(self, org_id: str, user_id: str) -> m.OrgMember | None:
        c = t.org_members.c
        row = await self._one(
            sa.select(t.org_members).where(c.organization_id == org_id, c.user_id == user_id)
        )
        return (
            m.OrgMember(row.organization_id, row.user_id, row.role, row.status, row.create_time)
            if row
            else None
        )

    async def put_org_member(self, member: m.OrgMember) -> None:
        c = t.org_members.c
        exists = await self.get_org_member(member.organization_id, member.user_id)
        if exists:
            await self.s.execute(
                t.org_members.update()
                .where(c.organization_id == member.organization_id, c.user_id == member.user_id)
                .values(role=member.role, status=member.status)
            )
        else:
            await self.s.execute(
                t.org_members.insert().values(
                    organization_id=member.organization_id,
                    user_id=member.user_id,
                    role=member.role,
                    status=member.status,
                    create_time=member.create_time,
                )
            )

    async def delete_org_member(self, org_id: str, user_id: str) -> None:
        c = t.org_members.c
        await self.s.execute(t.org_members.delete().where(c.organization_id == org_id, c.user_id == user_id))

    async def list_org_members(self, org_id: str, after: str, limit: int) -> list[m.OrgMember]:
        c = t.org_members.c
        rows = (
            await self.s.execute(
                sa.select(t.org_members)
                .where(c.organization_id == org_id, c.user_id > after)
                .order_by(c.user_id)
                .limit(limit)
            )
        ).all()
        return [m.OrgMember(r.organization_id, r.user_id, r.role, r.status, r.create_time) for r in rows]

    async def organizations_of_user(self, user_id: str) -> list[str]:
        c = t.org_members.c
        rows = (
            await self.s.execute(
                sa.select(c.organization_id).where(c.user_id == user_id, c.status == m.MEMBER_ACTIVE)
            )
        ).all()
        return [r.organization_id for r in rows]

    async def count_owners(self, org_id: str) -> int:
        c = t.org_members.c
        q = sa.select(sa.func.count()).where(c.organization_id == org_id, c.role == "owner")
        return (await self.s.execute(q)).scalar_one()

    # ---- workspaces --------------------------------------------------------
    async def get_workspace(self, ws_id: str) -> m.Workspace | None:
        row = await self._one(sa.select(t.workspaces).where(t.workspaces.c.id == ws_id))
        return _ws(row) if row else None

    async def live_workspace_name_taken(self, org_id: str, name: str, except_id: str = "") -> bool:
        c = t.workspaces.c
        row = await self._one(
            sa.select(c.id).where(
                c.organization_id == org_id,
                c.name_key == m.name_key(name),
                c.state == m.ACTIVE,
                c.id != except_id,
            )
        )
        return row is not None

    async def insert_workspace(self, ws: m.Workspace) -> None:
        await self.s.execute(t.workspaces.insert().values(**self._ws_values(ws)))

    @staticmethod
    def _ws_values(ws: m.Workspace) -> dict:
        return dict(
            id=ws.id,
            organization_id=ws.organization_id,
            name=ws.name,
            name_key=m.name_key(ws.name),
            description=ws.description,
            state=ws.state,
            owner_user_id=ws.owner_user_id,
            create_time=ws.create_time,
            update_time=ws.update_time,
            delete_time=ws.delete_time,
            purge_time=ws.purge_time,
            version=ws.version,
        )

    async def save_workspace(self, ws: m.Workspace) -> None:
        values = self._ws_values(ws)
        values.pop("id")
        await self.s.execute(t.workspaces.update().where(t.workspaces.c.id == ws.id).values(**values))

    async def workspaces_by_ids(self, ids: list[str], *, show_deleted: bool) -> list[m.Workspace]:
        if not ids:
            return []
        c = t.workspaces.c
        q = sa.select(t.workspaces).where(c.id.in_(ids)).order_by(c.id)
        if not show_deleted:
            q = q.where(c.state == m.ACTIVE)
        return [_ws(r) for r in (await self.s.execute(q)).all()]

    async def workspaces_of_org(
        self, org_id: str, *, after: str = "", limit: int = 1000, state: str | None = None
    ) -> list[m.Workspace]:
        c = t.workspaces.c
        q = (
            sa.select(t.workspaces)
            .where(c.organization_id == org_id, c.id > after)
            .order_by(c.id)
            .limit(limit)
        )
        if state:
            q = q.where(c.state == state)
        return [_ws(r) for r in (await self.s.execute(q)).all()]

    async def purgeable_workspaces(self, now: float) -> list[m.Workspace]:
        c = t.workspaces.c
        rows = (
            await self.s.execute(sa.select(t.workspaces).where(c.state == m.DELETED, c.purge_time <= now))
        ).all()
        return [_ws(r) for r in rows]

    async def delete_workspace_rows(self, ws_id: str) -> None:
        await self.s.execute(t.workspace_members.delete().where(t.workspace_members.c.workspace_id == ws_id))
        await self.s.execute(t.workspaces.delete().where(t.workspaces.c.id == ws_id))

    # ---- workspace members -------------------------------------------------
    async def get_workspace_member(self, ws_id: str, ptype: str, pid: str) -> m.WorkspaceMember | None:
        c = t.workspace_members.c
        row = await self._one(
            sa.select(t.workspace_members).where(
                c.workspace_id == ws_id, c.principal_type == ptype, c.principal_id == pid
            )
        )
        return (
            m.WorkspaceMember(row.workspace_id, row.principal_type, row.principal_id, row.role)
            if row
            else None
        )

    async def put_workspace_member(self, member: m.WorkspaceMember) -> None:
        c = t.workspace_members.c
        where = (
            c.workspace_id == member.workspace_id,
            c.principal_type == member.principal_type,
            c.principal_id == member.principal_id,
        )
        result = await self.s.execute(t.workspace_members.update().where(*where).values(role=member.role))
        if not result.rowcount:
            await self.s.execute(
                t.workspace_members.insert().values(
                    workspace_id=member.workspace_id,
                    principal_type=member.principal_type,
                    principal_id=member.principal_id,
                    role=member.role,
                    create_time=time.time(),
                )
            )

    async def delete_workspace_member(self, ws_id: str, ptype: str, pid: str) -> None:
        c = t.workspace_members.c
        await self.s.execute(
            t.workspace_members.delete().where(
                c.workspace_id == ws_id, c.principal_type == ptype, c.principal_id == pid
            )
        )

    async def list_workspace_members(
        self, ws_id: str, after: tuple[str, str], limit: int
    ) -> list[m.WorkspaceMember]:
        c = t.workspace_members.c
        rows = (
            await self.s.execute(
                sa.select(t.workspace_members)
                .where(
                    c.workspace_id == ws_id, sa.tuple_(c.principal_type, c.principal_id) > sa.tuple_(*after)
                )
                .order_by(c.principal_type, c.principal_id)
                .limit(limit)
            )
        ).all()
        return [m.WorkspaceMember(r.workspace_id, r.principal_type, r.principal_id, r.role) for r in rows]

    async def delete_principal_in_org(self, org_id: str, ptype: str, pid: str) -> None:
        """Every workspace role (and, for users, group membership) of a principal inside one organization."""
        ws_ids = sa.select(t.workspaces.c.id).where(t.workspaces.c.organization_id == org_id)
        c = t.workspace_members.c
        await self.s.execute(
            t.workspace_members.delete().where(
                c.workspace_id.in_(ws_ids), c.principal_type == ptype, c.principal_id == pid
            )
        )
        if ptype == "user":
            group_ids = sa.select(t.groups.c.id).where(t.groups.c.organization_id == org_id)
            await self.s.execute(
                t.group_members.delete().where(
                    t.group_members.c.group_id.in_(group_ids), t.group_members.c.user_id == pid
                )
            )

    # ---- groups --------------------------------------------------------------
    async def get_group(self, group_id: str) -> m.Group | None:
        row = await self._one(sa.select(t.groups).where(t.groups.c.id == group_id))
        if not row:
            return None
        return _group(row, await self.count_group_members(group_id))

    async def count_group_members(self, group_id: str) -> int:
        q = sa.select(sa.func.count()).where(t.group_members.c.group_id == group_id)
        return (await self.s.execute(q)).scalar_one()

    async def group_name_taken(self, org_id: str, name: str, except_id: str = "") -> bool:
        c = t.groups.c
        row = await self._one(
            sa.select(c.id).where(
                c.organization_id == org_id, c.name_key == m.name_key(name), c.id != except_id
            )
        )
        return row is not None

    async def save_group(self, group: m.Group, *, insert: bool = False) -> None:
        values = dict(
            organization_id=group.organization_id,
            name=group.name,
            name_key=m.name_key(group.name),
            description=group.description,
            create_time=group.create_time,
            update_time=group.update_time,
            version=group.version,
        )
        if insert:
            await self.s.execute(t.groups.insert().values(id=group.id, **values))
        else:
            await self.s.execute(t.groups.update().where(t.groups.c.id == group.id).values(**values))

    async def delete_group(self, group_id: str) -> None:
        await self.s.execute(t.group_members.delete().where(t.group_members.c.group_id == group_id))
        c = t.workspace_members.c
        await self.s.execute(
            t.workspace_members.delete().where(c.principal_type == "group", c.principal_id == group_id)
        )
        await self.s.execute(t.groups.delete().where(t.groups.c.id == group_id))

    async def list_groups(self, org_id: str, after: str, limit: int) -> list[m.Group]:
        c = t.groups.c
        rows = (
            await self.s.execute(
                sa.select(t.groups)
                .where(c.organization_id == org_id, c.id > after)
                .order_by(c.id)
                .limit(limit)
            )
        ).all()
        gm = t.group_members.c
        counts = dict(
            (
                await self.s.execute(
                    sa.select(gm.group_id, sa.func.count())
                    .where(gm.group_id.in_([r.id for r in rows]))
                    .group_by(gm.group_id)
                )
            ).all()
        )
        return [_group(r, counts.get(r.id, 0)) for r in rows]

    async def is_group_member(self, group_id: str, user_id: str) -> bool:
        c = t.group_members.c
        return (
            await self._one(sa.select(c.user_id).where(c.group_id == group_id, c.user_id == user_id))
            is not None
        )

    async def add_group_member(self, group_id: str, user_id: str) -> None:
        if not await self.is_group_member(group_id, user_id):
            await self.s.execute(
                t.group_members.insert().values(group_id=group_id, user_id=user_id, create_time=time.time())
            )

    async def remove_group_member(self, group_id: str, user_id: str) -> None:
        c = t.group_members.c
        await self.s.execute(t.group_members.delete().where(c.group_id == group_id, c.user_id == user_id))

    async def list_group_members(self, group_id: str, after: str, limit: int) -> list[str]:
        c = t.group_members.c
        rows = (
            await self.s.execute(
                sa.select(c.user_id)
                .where(c.group_id == group_id, c.user_id > after)
                .order_by(c.user_id)
                .limit(limit)
            )
        ).all()
        return [r.user_id for r in rows]

    # ---- invitations ---------------------------------------------------------
    async def insert_invitation(self, inv: m.Invitation) -> None:
        await self.s.execute(t.invitations.insert().values(**self._inv_values(inv)))

    @staticmethod
    def _inv_values(inv: m.Invitation) -> dict:
        return dict(
            id=inv.id,
            organization_id=inv.organization_id,
            email=inv.email,
            role=inv.role,
            workspace_roles=json.dumps([list(x) for x in inv.workspace_roles]),
            state=inv.state,
            token_hash=inv.token_hash,
            expire_time=inv.expire_time,
            create_time=inv.create_time,
            inviter_user_id=inv.inviter_user_id,
            accepted_user_id=inv.accepted_user_id,
        )

    async def save_invitation(self, inv: m.Invitation) -> None:
        values = self._inv_values(inv)
        values.pop("id")
        await self.s.execute(t.invitations.update().where(t.invitations.c.id == inv.id).values(**values))

    async def revoke_other_invitations(self, org_id: str, email: str, keep_id: str) -> int:
        """Revoke the pending invitations of ``email`` to the organization other than ``keep_id``."""
        c = t.invitations.c
        result = await self.s.execute(
            t.invitations.update()
            .where(c.organization_id == org_id, c.email == email, c.state == m.PENDING, c.id != keep_id)
            .values(state=m.REVOKED)
        )
        return result.rowcount

    async def get_invitation(self, inv_id: str) -> m.Invitation | None:
        row = await self._one(sa.select(t.invitations).where(t.invitations.c.id == inv_id))
        return _invitation(row) if row else None

    async def invitation_by_token_hash(self, token_hash: str) -> m.Invitation | None:
        row = await self._one(sa.select(t.invitations).where(t.invitations.c.token_hash == token_hash))
        return _invitation(row) if row else None

    async def list_invitations(
        self, org_id: str, before: str, limit: int, state: str | None, now: float
    ) -> list[m.Invitation]:
        c = t.invitations.c
        q = sa.select(t.invitations).where(c.organization_id == org_id).order_by(c.id.desc()).limit(limit)
        if before:
            q = q.where(c.id < before)
        if state == m.EXPIRED:
            q = q.where(c.state == m.PENDING, c.expire_time <= now)
        elif state == m.PENDING:
            q = q.where(c.state == m.PENDING, c.expire_time > now)
        elif state:
            q = q.where(c.state == state)
        return [_invitation(r) for r in (await self.s.execute(q)).all()]

    # ---- preferences -----------------------------------------------------------
    async def current_workspace(self, user_id: str) -> str | None:
        row = await self._one(sa.select(t.preferences).where(t.preferences.c.user_id == user_id))
        return row.current_workspace_id if row else None

    async def set_current_workspace(self, user_id: str, ws_id: str) -> None:
        c = t.preferences.c
        result = await self.s.execute(
            t.preferences.update()
            .where(c.user_id == user_id)
            .values(current_workspace_id=ws_id, update_time=time.time())
        )
        if not result.rowcount:
            await self.s.execute(
                t.preferences.insert().values(
                    user_id=user_id, current_workspace_id=ws_id, update_time=time.time()
                )
            )
