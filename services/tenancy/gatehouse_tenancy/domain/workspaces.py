"""Workspaces, their members, soft delete, and the user's current workspace."""

from __future__ import annotations

from gatehouse.kit import errors
from gatehouse.kit.context import Principal
from gatehouse.kit.ids import new_id
from gatehouse.kit.pagination import decode_token, encode_token, page_size
from gatehouse_tenancy.domain import model as m
from gatehouse_tenancy.domain.base import Core, org_ref, require_active_member, user_ref, ws_ref

ANY_CAPABILITY = "chat"  # the viewer's first capability: whoever holds any role on a workspace holds it


class Workspaces(Core):
    async def create_workspace(self, p: Principal, org_id: str, name: str, description: str, request_id: str):
        errs = errors.ErrorCollector()
        m.check_name(errs, "name", name)
        errs.require(len(description or "") <= 2000, "description", "must be at most 2,000 characters")
        errs.raise_if_any()
        action = "tenancy.workspace.create"
        org = await self.org_for(p, org_id, "org:create_workspace", action)
        if p.kind != "user":
            raise errors.InvalidArgument.field(
                "organization_id", "workspaces are created by users (who become owner)"
            )
        key = self.request_key("CreateWorkspace", p, request_id) if request_id else ""
        now = self.clock()
        ws = m.Workspace(
            new_id(), org.id, m.normalize_name(name), description or "", m.ACTIVE, p.id, now, now
        )
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            done = await tx.repo.request_result(key) if key else None
            if done:
                existing = await tx.repo.get_workspace(done)
                if existing:
                    return existing
            if await tx.repo.live_workspace_name_taken(org.id, ws.name):
                raise errors.AlreadyExists(f"a workspace named {ws.name!r} exists in this organization")
            await tx.repo.insert_workspace(ws)
            await tx.repo.put_workspace_member(m.WorkspaceMember(ws.id, "user", p.id, "owner"))
            if key:
                await tx.repo.remember_request(key, ws.id)
            await tx.authz(
                ("touch", ws_ref(ws.id), "parent", org_ref(org.id)),
                ("touch", ws_ref(ws.id), "owner", user_ref(p.id)),
            )
            await tx.audit(
                action,
                organization_id=org.id,
                workspace_id=ws.id,
                target=("workspace", ws.id),
                details={"name": ws.name, "description": ws.description},
            )
            await tx.commit()
        await self.deliver("workspace.create", tx)
        return ws

    async def get_workspace(self, p: Principal, ws_id: str, show_deleted: bool) -> m.Workspace:
        return await self.ws_for(p, ws_id, ANY_CAPABILITY, "tenancy.workspace.get", show_deleted=show_deleted)

    async def list_workspaces(
        self, p: Principal, org_id: str, size: int, token: str, show_deleted: bool
    ) -> m.Page:
        org = await self.load_org(p, org_id)
        size = page_size(size)
        after = str((decode_token(token) or {}).get("after", ""))
        ids = set(await self.authz.lookup(p, "workspace", ANY_CAPABILITY, parent=org_ref(org.id)))
        deleted: set[str] = set()
        if show_deleted and await self.authz.allowed(p, org_ref(org.id), "org:delete"):
            async with self.tx() as tx:
                deleted = {w.id for w in await tx.repo.workspaces_of_org(org.id, state=m.DELETED)}
        if not ids and not deleted and not await self.authz.allowed(p, org_ref(org.id), "org:view"):
            raise errors.NotFound("organization", org_id)
        wanted = sorted(i for i in ids | deleted if i > after)
        async with self.tx() as tx:
            rows = await tx.repo.workspaces_by_ids(wanted[: size + 1], show_deleted=bool(deleted))
        rows = [w for w in rows if w.organization_id == org.id and (w.state == m.ACTIVE or w.id in deleted)]
        more = len(wanted) > size
        rows = rows[:size]
        return m.Page(rows, encode_token({"after": rows[-1].id}) if more and rows else "")

    async def update_workspace(self, p: Principal, ws_id: str, values: dict, mask: list[str], etag: str):
        m.check_name_description_update("workspace", values, mask)
        action = "tenancy.workspace.update"
        ws = await self.ws_for(p, ws_id, "manage:settings", action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(ws.organization_id)
            ws = await tx.repo.get_workspace(ws.id)
            if ws is None or ws.deleted:
                raise errors.NotFound("workspace", ws_id)
            ws.check_etag(etag, "workspace")
            if "name" in mask:
                name = m.normalize_name(values["name"])
                if await tx.repo.live_workspace_name_taken(ws.organization_id, name, except_id=ws.id):
                    raise errors.AlreadyExists(f"a workspace named {name!r} exists in this organization")
            changes = m.apply_name_description(ws, values, mask)
            ws.touch(self.clock())
            await tx.repo.save_workspace(ws)
            await tx.audit(
                action,
                organization_id=ws.organization_id,
                workspace_id=ws.id,
                target=("workspace", ws.id),
                details=changes,
            )
            await tx.commit()
        return ws

    async def delete_workspace(
        self, p: Principal, ws_id: str, etag: str, request_id: str = ""
    ) -> m.Workspace:
        key, done = await self.seen("DeleteWorkspace", p, request_id, ws_id)
        if done:
            return await self.load_ws(p, done, show_deleted=True)
        action = "tenancy.workspace.delete"
        ws = await self.ws_for(p, ws_id, "delete:workspace", action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(ws.organization_id)
            org = await tx.repo.get_organization(ws.organization_id)
            ws = await tx.repo.get_workspace(ws.id)
            if ws is None or ws.deleted:
                raise errors.NotFound("workspace", ws_id)
            ws.check_etag(etag, "workspace")
            ws.soft_delete(self.clock(), org.settings.deletion_retention_days)
            await tx.repo.save_workspace(ws)
            await tx.authz(("deleted", ws_ref(ws.id), True))
            await tx.audit(
                action,
                organization_id=ws.organization_id,
                workspace_id=ws.id,
                target=("workspace", ws.id),
                details={"state": {"old": m.ACTIVE, "new": m.DELETED}},
            )
            if key:
                await tx.repo.remember_request(key, ws.id)
            await tx.commit()
        await self.deliver("workspace.delete", tx)
        return ws

    async def undelete_workspace(self, p: Principal, ws_id: str) -> m.Workspace:
        action = "tenancy.workspace.undelete"
        ws = await self.load_ws(p, ws_id, show_deleted=True)
        if not ws.deleted:
            return await self.ws_for(p, ws_id, "delete:workspace", action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(ws.organization_id)
            ws = await tx.repo.get_workspace(ws.id)
            if ws is None:
                raise errors.NotFound("workspace", ws_id)
            if ws.deleted:
                if await tx.repo.live_workspace_name_taken(ws.organization_id, ws.name, except_id=ws.id):
                    raise errors.AlreadyExists(f"a live workspace is now named {ws.name!r}; rename it first")
                ws.restore(self.clock())
                await tx.repo.save_workspace(ws)
                await tx.authz(("deleted", ws_ref(ws.id), False))
                await tx.audit(
                    action,
                    organization_id=ws.organization_id,
                    workspace_id=ws.id,
                    target=("workspace", ws.id),
                    details={"state": {"old": m.DELETED, "new": m.ACTIVE}},
                )
                await tx.commit()
        await self.deliver("workspace.undelete", tx)
        return ws

    async def workspace_access(self, p: Principal, ws_id: str):
        ws = await self.load_ws(p, ws_id)
        access = await self.authz.access(p, ws_ref(ws.id))
        if not access.capabilities and not access.is_platform_admin:
            if not await self.authz.allowed(p, org_ref(ws.organization_id), "org:view"):
                raise errors.NotFound("workspace", ws_id)
        return access

    # ---- members -----------------------------------------------------------------
    async def list_members(self, p: Principal, ws_id: str, size: int, token: str) -> m.Page:
        ws = await self.ws_for(p, ws_id, ANY_CAPABILITY, "tenancy.workspace.list_members")
        size = page_size(size)
        after = tuple((decode_token(token) or {}).get("after", ["", ""]))
        async with self.tx() as tx:
            rows = await tx.repo.list_workspace_members(ws.id, after, size + 1)
            groups = {
                r.principal_id: await tx.repo.get_group(r.principal_id)
                for r in rows
                if r.principal_type == "group"
            }
        page = m.Page.of(rows, size, lambda last: {"after": [last.principal_type, last.principal_id]})
        users = await self.identity.users([r.principal_id for r in page.items if r.principal_type == "user"])
        for r in page.items:
            if r.principal_type == "user" and r.principal_id in users:
                r.display_name = users[r.principal_id].display_name
            elif r.principal_type == "group" and groups.get(r.principal_id):
                r.display_name = groups[r.principal_id].name
        return page

    async def _check_principal(self, tx, ws: m.Workspace, ptype: str, pid: str) -> None:
        if ptype == "user":
            await require_active_member(tx, ws.organization_id, pid)
        elif ptype == "group":
            group = await tx.repo.get_group(pid)
            if group is None or group.organization_id != ws.organization_id:
                raise errors.NotFound("group", pid)
        else:
            raise errors.InvalidArgument.field("principal.type", "must be user or group")

    async def add_member(
        self, p: Principal, ws_id: str, ptype: str, pid: str, role: str | None, request_id: str = ""
    ):
        key, done = await self.seen("AddWorkspaceMember", p, request_id, ws_id, ptype, pid)
        role = role or "member"
        errs = errors.ErrorCollector()
        errs.require(ptype in ("user", "group"), "principal.type", "must be user or group")
        m.require_id(errs, "principal.id", pid)
        m.check_assignable_role(errs, "role", role)
        errs.raise_if_any()
        action = "tenancy.workspace.add_member"
        ws = await self.ws_for(p, ws_id, "manage:members", action)
        if done:  # a retry of this very request: its answer again, after the same access check
            async with self.tx() as tx:
                again = await tx.repo.get_workspace_member(ws.id, ptype, pid)
            if again is not None:
                return again
        async with self.tx() as tx:
            await tx.repo.lock_organization(ws.organization_id)
            await self._check_principal(tx, ws, ptype, pid)
            existing = await tx.repo.get_workspace_member(ws.id, ptype, pid)
            if existing is not None:
                raise errors.AlreadyExists(f"{ptype}:{pid} is already a member; update their role instead")
            member = m.WorkspaceMember(ws.id, ptype, pid, role)
            await tx.repo.put_workspace_member(member)
            await tx.authz(("touch", ws_ref(ws.id), role, f"{ptype}:{pid}"))
            await tx.audit(
                action,
                organization_id=ws.organization_id,
                workspace_id=ws.id,
                target=(ptype, pid),
                details={"role": role},
            )
            if key:
                await tx.repo.remember_request(key, f"{ptype}:{pid}")
            await tx.commit()
        await self.deliver("workspace.add_member", tx)
        return member

    async def update_member(self, p: Principal, ws_id: str, member_id: str, role: str):
        ptype, pid = m.parse_member_id(member_id)
        errs = errors.ErrorCollector()
        m.check_assignable_role(errs, "role", role)
        errs.raise_if_any()
        action = "tenancy.workspace.update_member"
        ws = await self.ws_for(p, ws_id, "manage:members", action)
        async with self.tx() as tx:
            member = await _locked_non_owner(tx, ws, member_id, "the owner changes only by transfer")
            old = member.role
            if old != role:
                member.role = role
                await tx.repo.put_workspace_member(member)
                await tx.authz(
                    ("delete", ws_ref(ws.id), old, member_id), ("touch", ws_ref(ws.id), role, member_id)
                )
                await tx.audit(
                    action,
                    organization_id=ws.organization_id,
                    workspace_id=ws.id,
                    target=(ptype, pid),
                    details={"role": {"old": old, "new": role}},
                )
                await tx.commit()
        await self.deliver("workspace.update_member", tx)
        return member

    async def remove_member(self, p: Principal, ws_id: str, member_id: str, request_id: str = "") -> None:
        key, done = await self.seen("RemoveWorkspaceMember", p, request_id, ws_id, member_id)
        if done:
            return
        ptype, pid = m.parse_member_id(member_id)
        action = "tenancy.workspace.remove_member"
        ws = await self.ws_for(p, ws_id, "manage:members", action)
        async with self.tx() as tx:
            member = await _locked_non_owner(
                tx, ws, member_id, "the owner cannot be removed; transfer ownership first"
            )
            await tx.repo.delete_workspace_member(ws.id, ptype, pid)
            await tx.authz(("delete", ws_ref(ws.id), member.role, member_id))
            await tx.audit(
                action,
                organization_id=ws.organization_id,
                workspace_id=ws.id,
                target=(ptype, pid),
                details={"role": member.role},
            )
            if key:
                await tx.repo.remember_request(key, member_id)
            await tx.commit()
        await self.deliver("workspace.remove_member", tx)

    async def transfer_ownership(
        self, p: Principal, ws_id: str, new_owner: str, request_id: str = ""
    ) -> m.Workspace:
        key, done = await self.seen("TransferWorkspaceOwnership", p, request_id, ws_id, new_owner)
        if done:
            return await self.load_ws(p, done)
        if not new_owner:
            raise errors.InvalidArgument.field("new_owner_user_id", "is required")
        action = "tenancy.workspace.transfer_ownership"
        ws = await self.ws_for(p, ws_id, "transfer:ownership", action)
        checked_owner = ws.owner_user_id
        async with self.tx() as tx:
            await tx.repo.lock_organization(ws.organization_id)
            ws = await tx.repo.get_workspace(ws.id)
            if ws is None or ws.deleted:
                raise errors.NotFound("workspace", ws_id)
            if ws.owner_user_id != checked_owner:
                # the right was checked against an owner who has changed since: do not act on it
                raise errors.Aborted("the ownership changed concurrently; read again and retry")
            await require_active_member(
                tx,
                ws.organization_id,
                new_owner,
                "the new owner must be an active member of the organization",
            )
            old = ws.owner_user_id
            if old != new_owner:
                current = await tx.repo.get_workspace_member(ws.id, "user", new_owner)
                await tx.repo.put_workspace_member(m.WorkspaceMember(ws.id, "user", new_owner, "owner"))
                await tx.repo.put_workspace_member(m.WorkspaceMember(ws.id, "user", old, "admin"))
                ws.owner_user_id = new_owner
                ws.touch(self.clock())
                await tx.repo.save_workspace(ws)
                updates = []
                if current is not None:
                    updates.append(("delete", ws_ref(ws.id), current.role, user_ref(new_owner)))
                updates += [
                    ("touch", ws_ref(ws.id), "owner", user_ref(new_owner)),
                    ("delete", ws_ref(ws.id), "owner", user_ref(old)),
                    ("touch", ws_ref(ws.id), "admin", user_ref(old)),
                ]
                await tx.authz(*updates)
                await tx.audit(
                    action,
                    organization_id=ws.organization_id,
                    workspace_id=ws.id,
                    target=("workspace", ws.id),
                    details={"owner": {"old": old, "new": new_owner}},
                )
                if key:
                    await tx.repo.remember_request(key, ws.id)
                await tx.commit()
        await self.deliver("workspace.transfer_ownership", tx)
        return ws

    # ---- current workspace -----------------------------------------------------------
    async def set_current(self, p: Principal, ws_id: str) -> m.Workspace:
        ws = await self.ws_for(p, ws_id, ANY_CAPABILITY, "tenancy.workspace.set_current")
        async with self.tx() as tx:
            await tx.repo.set_current_workspace(p.id, ws.id)
            await tx.audit(
                "tenancy.workspace.set_current",
                organization_id=ws.organization_id,
                workspace_id=ws.id,
                target=("workspace", ws.id),
            )
            await tx.commit()
        return ws

    async def get_current(self, p: Principal) -> m.Workspace | None:
        async with self.tx() as tx:
            remembered = await tx.repo.current_workspace(p.id)
        if remembered:
            async with self.tx() as tx:
                ws = await tx.repo.get_workspace(remembered)
            if (
                ws is not None
                and not ws.deleted
                and await self.authz.allowed(p, ws_ref(ws.id), ANY_CAPABILITY)
            ):
                return ws
        reachable = await self.authz.lookup(p, "workspace", ANY_CAPABILITY)
        async with self.tx() as tx:
            for ws in await tx.repo.workspaces_by_ids(reachable[:1000], show_deleted=False):
                org = await tx.repo.get_organization(ws.organization_id)
                if org is not None and not org.deleted:
                    return ws
        return None


async def _locked_non_owner(tx, ws: m.Workspace, member_id: str, owner_message: str) -> m.WorkspaceMember:
    """With the organization locked, the workspace member ``member_id`` (NOT_FOUND if none), who
    must not be the owner (FAILED_PRECONDITION ``owner_message``: the owner changes only by transfer)."""
    ptype, pid = m.parse_member_id(member_id)
    await tx.repo.lock_organization(ws.organization_id)
    member = await tx.repo.get_workspace_member(ws.id, ptype, pid)
    if member is None:
        raise errors.NotFound("member", member_id)
    if member.role == "owner":
        raise errors.FailedPrecondition(owner_message, reason="OWNER_CANNOT_BE_REMOVED")
    return member
