"""Groups: named sets of organization members that hold roles and grants in authz."""

from __future__ import annotations

from gatehouse.kit import errors
from gatehouse.kit.context import Principal
from gatehouse.kit.ids import new_id
from gatehouse.kit.pagination import decode_token, page_size
from gatehouse_tenancy.domain import model as m
from gatehouse_tenancy.domain.base import ORG_VIEW, Core, group_ref, org_ref, require_active_member, user_ref

MANAGE = "org:manage_groups"


class Groups(Core):
    async def create_group(self, p: Principal, org_id: str, name: str, description: str, request_id: str):
        errs = errors.ErrorCollector()
        m.check_name(errs, "name", name)
        errs.require(len(description or "") <= 2000, "description", "must be at most 2,000 characters")
        errs.raise_if_any()
        action = "tenancy.group.create"
        org = await self.org_for(p, org_id, MANAGE, action)
        key = self.request_key("CreateGroup", p, request_id) if request_id else ""
        now = self.clock()
        group = m.Group(new_id(), org.id, m.normalize_name(name), description or "", now, now)
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            done = await tx.repo.request_result(key) if key else None
            if done and (existing := await tx.repo.get_group(done)):
                return existing
            if await tx.repo.group_name_taken(org.id, group.name):
                raise errors.AlreadyExists(f"a group named {group.name!r} exists in this organization")
            await tx.repo.save_group(group, insert=True)
            if key:
                await tx.repo.remember_request(key, group.id)
            await tx.authz(("touch", group_ref(group.id), "parent", org_ref(org.id)))
            await tx.audit(
                action,
                organization_id=org.id,
                target=("group", group.id),
                details={"name": group.name, "description": group.description},
            )
            await tx.commit()
        await self.deliver("group.create", tx)
        return group

    async def get_group(self, p: Principal, group_id: str) -> m.Group:
        return await self.load_group(p, group_id, ORG_VIEW, "tenancy.group.get")

    async def list_groups(self, p: Principal, org_id: str, size: int, token: str) -> m.Page:
        org = await self.org_for(p, org_id, ORG_VIEW, "tenancy.group.list")
        size = page_size(size)
        after = str((decode_token(token) or {}).get("after", ""))
        async with self.tx() as tx:
            rows = await tx.repo.list_groups(org.id, after, size + 1)
        return m.Page.of(rows, size, lambda last: {"after": last.id})

    async def update_group(
        self, p: Principal, group_id: str, values: dict, mask: list[str], etag: str
    ) -> m.Group:
        m.check_name_description_update("group", values, mask)
        action = "tenancy.group.update"
        group = await self.load_group(p, group_id, MANAGE, action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(group.organization_id)
            group = await tx.repo.get_group(group.id)
            if group is None:
                raise errors.NotFound("group", group_id)
            group.check_etag(etag, "group")
            if "name" in mask:
                name = m.normalize_name(values["name"])
                if await tx.repo.group_name_taken(group.organization_id, name, except_id=group.id):
                    raise errors.AlreadyExists(f"a group named {name!r} exists in this organization")
            changes = m.apply_name_description(group, values, mask)
            group.touch(self.clock())
            await tx.repo.save_group(group)
            await tx.audit(
                action, organization_id=group.organization_id, target=("group", group.id), details=changes
            )
            await tx.commit()
        return group

    async def delete_group(self, p: Principal, group_id: str, request_id: str = "") -> None:
        key, done = await self.seen("DeleteGroup", p, request_id, group_id)
        if done:
            return
        action = "tenancy.group.delete"
        group = await self.load_group(p, group_id, MANAGE, action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(group.organization_id)
            if await tx.repo.get_group(group.id) is None:
                raise errors.NotFound("group", group_id)
            await tx.repo.delete_group(group.id)
            # Every role and grant the group held, then its own members and parent.
            await tx.authz_delete(subject_type="group", subject_id=group.id)
            await tx.authz_delete(resource_type="group", resource_id=group.id)
            await tx.audit(
                action,
                organization_id=group.organization_id,
                target=("group", group.id),
                details={"name": group.name},
            )
            if key:
                await tx.repo.remember_request(key, group.id)
            await tx.commit()
        await self.deliver("group.delete", tx)

    async def add_member(self, p: Principal, group_id: str, user_id: str, request_id: str = ""):
        key, done = await self.seen("AddGroupMember", p, request_id, group_id, user_id)
        if not user_id:
            raise errors.InvalidArgument.field("user_id", "is required")
        action = "tenancy.group.add_member"
        group = await self.load_group(p, group_id, MANAGE, action)
        if done:  # a retry of this very request: its answer again, after the same access check
            return await self._group_member(group.id, user_id)
        async with self.tx() as tx:
            await tx.repo.lock_organization(group.organization_id)
            await require_active_member(tx, group.organization_id, user_id)
            if await tx.repo.is_group_member(group.id, user_id):
                raise errors.AlreadyExists("the user is already in the group")
            await tx.repo.add_group_member(group.id, user_id)
            await tx.authz(("touch", group_ref(group.id), "member", user_ref(user_id)))
            await tx.audit(
                action,
                organization_id=group.organization_id,
                target=("group", group.id),
                details={"user_id": user_id},
            )
            if key:
                await tx.repo.remember_request(key, user_id)
            await tx.commit()
        await self.deliver("group.add_member", tx)
        return await self._group_member(group.id, user_id)

    async def _group_member(self, group_id: str, user_id: str) -> m.GroupMember:
        u = (await self.identity.users([user_id])).get(user_id)
        return m.GroupMember(group_id, user_id, u.email if u else "", u.display_name if u else "")

    async def remove_member(self, p: Principal, group_id: str, user_id: str, request_id: str = "") -> None:
        key, done = await self.seen("RemoveGroupMember", p, request_id, group_id, user_id)
        if done:
            return
        if not user_id:
            raise errors.InvalidArgument.field("user_id", "is required")
        action = "tenancy.group.remove_member"
        group = await self.load_group(p, group_id, MANAGE, action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(group.organization_id)
            if not await tx.repo.is_group_member(group.id, user_id):
                raise errors.NotFound("group member", user_id)
            await tx.repo.remove_group_member(group.id, user_id)
            await tx.authz(("delete", group_ref(group.id), "member", user_ref(user_id)))
            await tx.audit(
                action,
                organization_id=group.organization_id,
                target=("group", group.id),
                details={"user_id": user_id},
            )
            if key:
                await tx.repo.remember_request(key, user_id)
            await tx.commit()
        await self.deliver("group.remove_member", tx)

    async def list_members(self, p: Principal, group_id: str, size: int, token: str) -> m.Page:
        group = await self.load_group(p, group_id, ORG_VIEW, "tenancy.group.list_members")
        size = page_size(size)
        after = str((decode_token(token) or {}).get("after", ""))
        async with self.tx() as tx:
            ids = await tx.repo.list_group_members(group.id, after, size + 1)
        page = m.Page.of(ids, size, lambda last: {"after": last})
        users = await self.identity.users(page.items)
        page.items = [
            m.GroupMember(
                group.id, i, users[i].email if i in users else "", users[i].display_name if i in users else ""
            )
            for i in page.items
        ]
        return page
