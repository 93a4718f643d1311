"""First-time setup, organizations and their members."""

from __future__ import annotations

import asyncio

from gatehouse.kit import errors
from gatehouse.kit.context import Principal
from gatehouse.kit.ids import new_id
from gatehouse.kit.pagination import decode_token, page_size
from gatehouse_tenancy.domain import model as m
from gatehouse_tenancy.domain.base import ORG_VIEW, PLATFORM, Core, org_ref, user_ref, ws_ref

SETTINGS_FIELDS = {
    "settings.require_mfa",
    "settings.invitation_ttl",
    "settings.deletion_retention_days",
    "settings.audit_retention_days",
}


def owner_updates(org_id: str, user_id: str) -> list[tuple]:
    return [
        ("touch", org_ref(org_id), "owner", user_ref(user_id)),
        ("membership", org_id, user_id, m.MEMBER_ACTIVE),
    ]


class Organizations(Core):
    def __init__(self, **deps):
        super().__init__(**deps)
        self._bootstrap_lock = asyncio.Lock()  # one bootstrap at a time per process (the row decides across)

    # ---- setup ---------------------------------------------------------------
    async def setup_state(self) -> bool:
        async with self.tx() as tx:
            return await tx.repo.setup_state() is not None

    async def bootstrap(self, email: str, password: str, display_name: str, org_name: str, slug: str):
        errs = errors.ErrorCollector()
        email = m.check_email(errs, "admin_email", email)
        errs.require(bool(password), "admin_password", "is required")
        m.check_name(errs, "organization_name", org_name)
        m.check_slug(errs, "organization_slug", slug)
        errs.raise_if_any()
        async with self._bootstrap_lock:
            if await self.setup_state():
                await self._audit_bootstrap_refused()
                raise errors.FailedPrecondition(
                    "the deployment is already bootstrapped", reason="ALREADY_BOOTSTRAPPED"
                )
            # identity's request_id makes a retried bootstrap get the same user back; an email
            # that already has an account is refused (ALREADY_EXISTS), never taken over.
            user = await self.identity.create_user(
                email,
                display_name or email.split("@")[0],
                password,
                request_id=f"tenancy-bootstrap:{email}",
                fields={
                    "email": "admin_email",
                    "password": "admin_password",
                    "display_name": "admin_display_name",
                },
            )
            now = self.clock()
            org = m.Organization(
                new_id(), m.normalize_name(org_name), slug, m.ACTIVE, user.id, m.OrgSettings(), now, now
            )
            async with self.tx() as tx:
                await tx.repo.mark_bootstrapped(user.id, org.id)
                await tx.repo.insert_organization(org)
                await tx.repo.put_org_member(m.OrgMember(org.id, user.id, "owner", m.MEMBER_ACTIVE, now))
                await tx.authz(
                    ("touch", PLATFORM, "platform_admin", user_ref(user.id)), *owner_updates(org.id, user.id)
                )
                await tx.audit(
                    "tenancy.setup.bootstrap",
                    organization_id=org.id,
                    target=("organization", org.id),
                    details={"admin_user_id": user.id, "name": org.name, "slug": org.slug},
                )
                await tx.commit()
            await self.deliver("bootstrap", tx)
        return user.id, org

    async def _audit_bootstrap_refused(self) -> None:
        async with self.tx() as tx:
            await tx.audit("tenancy.setup.bootstrap", outcome="DENIED", reason="ALREADY_BOOTSTRAPPED")
            await tx.commit()

    # ---- organizations ---------------------------------------------------------
    async def create_organization(
        self, p: Principal, name: str, slug: str, owner_user_id: str, request_id: str
    ):
        errs = errors.ErrorCollector()
        m.check_name(errs, "name", name)
        m.check_slug(errs, "slug", slug)
        m.require_id(errs, "owner_user_id", owner_user_id)
        errs.raise_if_any()
        if not await self.is_platform_admin(p):
            await self.audit_denied(
                p, "tenancy.organization.create", capability="platform:create_organization"
            )
            raise errors.PermissionDenied(
                "only platform admins create organizations",
                capability="platform:create_organization",
                resource=PLATFORM,
            )
        key = self.request_key("CreateOrganization", p, request_id) if request_id else ""
        if key:
            async with self.tx() as tx:
                done = await tx.repo.request_result(key)
            if done:
                return await self.load_org(p, done)
        owner = await self.identity.get_user(owner_user_id)
        if owner is None:
            raise errors.InvalidArgument.field("owner_user_id", "no such user")
        now = self.clock()
        org = m.Organization(
            new_id(), m.normalize_name(name), slug, m.ACTIVE, owner.id, m.OrgSettings(), now, now
        )
        async with self.tx() as tx:
            if await tx.repo.organization_name_taken(org.name):
                raise errors.AlreadyExists(f"an organization named {org.name!r} already exists")
            if await tx.repo.get_organization_by_slug(slug):
                raise errors.AlreadyExists(f"the slug {slug!r} is taken")
            await tx.repo.insert_organization(org)
            await tx.repo.put_org_member(m.OrgMember(org.id, owner.id, "owner", m.MEMBER_ACTIVE, now))
            if key:
                await tx.repo.remember_request(key, org.id)
            await tx.authz(*owner_updates(org.id, owner.id))
            await tx.audit(
                "tenancy.organization.create",
                organization_id=org.id,
                target=("organization", org.id),
                details={"name": org.name, "slug": slug, "owner_user_id": owner.id},
            )
            await tx.commit()
        await self.deliver("organization.create", tx)
        return org

    async def get_organization(self, p: Principal, org_id: str, show_deleted: bool) -> m.Organization:
        org = await self.load_org(p, org_id, show_deleted=show_deleted)
        if not org.deleted:
            await self.require_org(p, org.id, ORG_VIEW, "tenancy.organization.get")
        return org

    async def get_organization_by_slug(self, slug: str) -> m.Organization:
        async with self.tx() as tx:
            org = await tx.repo.get_organization_by_slug(slug or "")
        if org is None or org.deleted:
            raise errors.NotFound("organization", slug)
        return org

    async def list_organizations(
        self, p: Principal, size: int, token: str, flt: str, show_deleted: bool
    ) -> m.Page:
        size = page_size(size)
        position = decode_token(token) or {}
        after = str(position.get("after", ""))
        admin = await self.is_platform_admin(p)
        prefix = None
        if flt:
            field, sep, value = flt.partition(":")
            if not admin:
                raise errors.InvalidArgument.field("filter", "only platform admins may filter")
            if not sep or field not in ("name", "slug"):
                raise errors.InvalidArgument.field("filter", "must be name:<prefix> or slug:<prefix>")
            prefix = (field, value)
        if show_deleted and not admin:
            raise errors.PermissionDenied(
                "only platform admins list deleted organizations", capability="platform:create_organization"
            )
        ids = None if admin else await self.authz.lookup(p, "organization", ORG_VIEW)
        async with self.tx() as tx:
            rows = await tx.repo.list_organizations(
                ids=ids, after=after, limit=size + 1, show_deleted=show_deleted, prefix=prefix
            )
        return m.Page.of(rows, size, lambda last: {"after": last.id})

    async def update_organization(self, p: Principal, org_id: str, values: dict, mask: list[str], etag: str):
        if not mask:
            raise errors.InvalidArgument.field("update_mask", "name the fields to change")
        unknown = [f for f in mask if f != "name" and f not in SETTINGS_FIELDS and f != "settings"]
        if unknown:
            raise errors.InvalidArgument.field("update_mask", f"cannot update {', '.join(unknown)}")
        if "settings" in mask:
            mask = [f for f in mask if f != "settings"] + sorted(SETTINGS_FIELDS)
        errs = errors.ErrorCollector()
        if "name" in mask:
            m.check_name(errs, "organization.name", values.get("name", ""))
        ttl = values.get("invitation_ttl_seconds")
        if "settings.invitation_ttl" in mask:
            errs.require(
                3600 <= (ttl or 0) <= m.MAX_INVITATION_TTL,
                "organization.settings.invitation_ttl",
                "must be between 1 hour and 90 days",
            )
        if "settings.deletion_retention_days" in mask:
            errs.require(
                1 <= values.get("deletion_retention_days", 0) <= 3650,
                "organization.settings.deletion_retention_days",
                "must be between 1 and 3650",
            )
        if "settings.audit_retention_days" in mask:
            errs.require(
                1 <= values.get("audit_retention_days", 0) <= 36500,
                "organization.settings.audit_retention_days",
                "must be between 1 and 36500",
            )
        errs.raise_if_any()
        org = await self.load_org(p, org_id)
        action = "tenancy.organization.update"
        if "name" in mask:
            await self.require_org(p, org.id, "org:manage_members", action)
        if any(f.startswith("settings.") for f in mask):
            await self.require_org(p, org.id, "org:manage_settings", action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            org = await tx.repo.get_organization(org.id)
            if org is None or org.deleted:
                raise errors.NotFound("organization", org_id)
            org.check_etag(etag, "organization")
            changes: dict = {}
            s = org.settings
            if "name" in mask:
                name = m.normalize_name(values["name"])
                if name != org.name and await tx.repo.organization_name_taken(name, except_id=org.id):
                    raise errors.AlreadyExists(f"an organization named {name!r} already exists")
                changes["name"] = {"old": org.name, "new": name}
                org.name = name
            for field, attr in (
                ("settings.require_mfa", "require_mfa"),
                ("settings.invitation_ttl", "invitation_ttl_seconds"),
                ("settings.deletion_retention_days", "deletion_retention_days"),
                ("settings.audit_retention_days", "audit_retention_days"),
            ):
                if field in mask:
                    new = values.get(attr)
                    changes[field] = {"old": getattr(s, attr), "new": new}
                    setattr(s, attr, new)
            org.touch(self.clock())
            await tx.repo.save_organization(org)
            if "settings.require_mfa" in mask:
                await tx.authz(("require_mfa", org.id, s.require_mfa))
            await tx.audit(action, organization_id=org.id, target=("organization", org.id), details=changes)
            await tx.commit()
        await self.deliver("organization.update", tx)
        return org

    async def delete_organization(
        self, p: Principal, org_id: str, etag: str, request_id: str = ""
    ) -> m.Organization:
        key, done = await self.seen("DeleteOrganization", p, request_id, org_id)
        if done:
            return await self.load_org(p, done, show_deleted=True)
        org = await self.org_for(p, org_id, "org:delete", "tenancy.organization.delete")
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            org = await tx.repo.get_organization(org.id)
            if org is None or org.deleted:
                raise errors.NotFound("organization", org_id)
            org.check_etag(etag, "organization")
            org.soft_delete(self.clock(), org.settings.deletion_retention_days)
            await tx.repo.save_organization(org)
            await tx.authz(("deleted", org_ref(org.id), True))
            await tx.audit(
                "tenancy.organization.delete",
                organization_id=org.id,
                target=("organization", org.id),
                details={"state": {"old": m.ACTIVE, "new": m.DELETED}, "purge_time": org.purge_time},
            )
            if key:
                await tx.repo.remember_request(key, org.id)
            await tx.commit()
        await self.deliver("organization.delete", tx)
        return org

    async def undelete_organization(self, p: Principal, org_id: str) -> m.Organization:
        org = await self.load_org(p, org_id, show_deleted=True)
        if not org.deleted:
            await self.require_org(p, org.id, "org:delete", "tenancy.organization.undelete")
            return org
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            org = await tx.repo.get_organization(org.id)
            if org is None:
                raise errors.NotFound("organization", org_id)
            if org.deleted:
                org.restore(self.clock())
                await tx.repo.save_organization(org)
                await tx.authz(("deleted", org_ref(org.id), False))
                await tx.audit(
                    "tenancy.organization.undelete",
                    organization_id=org.id,
                    target=("organization", org.id),
                    details={"state": {"old": m.DELETED, "new": m.ACTIVE}},
                )
                await tx.commit()
        await self.deliver("organization.undelete", tx)
        return org

    # ---- members -----------------------------------------------------------------
    async def list_members(self, p: Principal, org_id: str, size: int, token: str) -> m.Page:
        org = await self.org_for(p, org_id, "org:list_members", "tenancy.organization.list_members")
        size = page_size(size)
        after = str((decode_token(token) or {}).get("after", ""))
        async with self.tx() as tx:
            rows = await tx.repo.list_org_members(org.id, after, size + 1)
        page = m.Page.of(rows, size, lambda last: {"after": last.user_id})
        users = await self.identity.users([r.user_id for r in page.items])
        for r in page.items:
            if r.user_id in users:
                r.email, r.display_name = users[r.user_id].email, users[r.user_id].display_name
        return page

    async def create_member(
        self,
        p: Principal,
        org_id: str,
        email: str,
        display_name: str,
        password: str,
        role: str,
        request_id: str,
    ) -> m.OrgMember:
        errs = errors.ErrorCollector()
        email = m.check_email(errs, "email", email)
        m.check_assignable_role(errs, "role", role)
        errs.require(bool(password), "initial_password", "is required")
        errs.raise_if_any()
        org = await self.org_for(p, org_id, "org:manage_members", "tenancy.organization.create_member")
        key = self.request_key("CreateOrganizationMember", p, request_id) if request_id else ""
        if key:
            async with self.tx() as tx:
                done = await tx.repo.request_result(key)
                member = await tx.repo.get_org_member(org.id, done) if done else None
            if member:
                return member
        if await self.identity.lookup_by_email(email) is not None:
            raise errors.AlreadyExists("a user with this email exists; invite them instead")
        user = await self.identity.create_user(
            email,
            display_name or email.split("@")[0],
            password,
            request_id=f"tenancy-member:{org.id}:{email}",
            fields={"password": "initial_password"},
        )
        member = m.OrgMember(
            org.id, user.id, role, m.MEMBER_ACTIVE, self.clock(), user.email, user.display_name
        )
        async with self.tx() as tx:
            if not await tx.repo.lock_organization(org.id):
                raise errors.NotFound("organization", org_id)
            await tx.repo.put_org_member(member)
            if key:
                await tx.repo.remember_request(key, user.id)
            await tx.authz(
                ("touch", org_ref(org.id), role, user_ref(user.id)),
                ("membership", org.id, user.id, m.MEMBER_ACTIVE),
            )
            await tx.audit(
                "tenancy.organization.create_member",
                organization_id=org.id,
                target=("user", user.id),
                details={"email": email, "role": role},
            )
            await tx.commit()
        await self.deliver("organization.create_member", tx)
        return member

    async def update_member(
        self, p: Principal, org_id: str, user_id: str, role: str | None, status: str | None
    ):
        errs = errors.ErrorCollector()
        m.require_id(errs, "user_id", user_id)
        if role is not None:
            m.check_assignable_role(errs, "role", role)
        if status is not None:
            errs.require(status in (m.MEMBER_ACTIVE, m.INACTIVE), "status", "must be active or inactive")
        errs.require(role is not None or status is not None, "role", "set a role or a status")
        errs.raise_if_any()
        org = await self.org_for(p, org_id, "org:manage_members", "tenancy.organization.update_member")
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            member = await tx.repo.get_org_member(org.id, user_id)
            if member is None:
                raise errors.NotFound("member", user_id)
            if member.role == "owner":
                raise errors.FailedPrecondition(
                    "the owner cannot be demoted or deactivated; transfer ownership first",
                    reason="OWNER_CANNOT_BE_REMOVED",
                )
            changes, updates = {}, []
            if role is not None and role != member.role:
                changes["role"] = {"old": member.role, "new": role}
                updates += [
                    ("delete", org_ref(org.id), member.role, user_ref(user_id)),
                    ("touch", org_ref(org.id), role, user_ref(user_id)),
                ]
                member.role = role
            if status is not None and status != member.status:
                changes["status"] = {"old": member.status, "new": status}
                updates.append(("membership", org.id, user_id, status))
                member.status = status
            await tx.repo.put_org_member(member)
            await tx.authz(*updates)
            await tx.audit(
                "tenancy.organization.update_member",
                organization_id=org.id,
                target=("user", user_id),
                details=changes,
            )
            await tx.commit()
        await self.deliver("organization.update_member", tx)
        return member

    async def remove_member(self, p: Principal, org_id: str, user_id: str, request_id: str = "") -> None:
        key, done = await self.seen("RemoveOrganizationMember", p, request_id, org_id, user_id)
        if done:
            return
        if not user_id:
            raise errors.InvalidArgument.field("user_id", "is required")
        action = "tenancy.organization.remove_member"
        org = await self.load_org(p, org_id)
        if not (p.kind == "user" and p.id == user_id):
            await self.require_org(p, org.id, "org:manage_members", action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            member = await tx.repo.get_org_member(org.id, user_id)
            if member is None and p.kind == "user" and p.id == user_id:
                # leaving an organization one is not in: its id must look unknown (no access check
                # came before, so "member not found" would tell that the organization exists)
                raise errors.NotFound("organization", org.id)
            if member is None:
                raise errors.NotFound("member", user_id)
            if member.role == "owner":
                raise errors.FailedPrecondition(
                    "the owner cannot be removed; transfer ownership first", reason="OWNER_CANNOT_BE_REMOVED"
                )
            owned = [w for w in await tx.repo.workspaces_of_org(org.id) if w.owner_user_id == user_id]
            owner_id = (await tx.repo.get_organization(org.id)).owner_user_id
            await tx.repo.delete_principal_in_org(org.id, "user", user_id)
            await tx.repo.delete_org_member(org.id, user_id)
            # 1. deny at once, 2. strip every relationship inside the organization, 3. forget the membership.
            await tx.authz(("membership", org.id, user_id, m.INACTIVE))
            handed = []
            for ws in owned:  # a workspace is never left without an owner: the org owner takes it
                ws.owner_user_id = owner_id
                await tx.repo.save_workspace(ws)
                await tx.repo.put_workspace_member(m.WorkspaceMember(ws.id, "user", owner_id, "owner"))
                handed.append(ws.id)
            if handed:
                await tx.authz(*[("touch", ws_ref(w), "owner", user_ref(owner_id)) for w in handed])
            await tx.authz_delete(subject_type="user", subject_id=user_id, within_organization_id=org.id)
            await tx.authz(("membership", org.id, user_id, None))
            await tx.audit(
                action,
                organization_id=org.id,
                target=("user", user_id),
                details={"role": member.role, "workspaces_handed_to_owner": handed},
            )
            if key:
                await tx.repo.remember_request(key, user_id)
            await tx.commit()
        await self.deliver("organization.remove_member", tx)

    async def transfer_ownership(
        self, p: Principal, org_id: str, new_owner: str, request_id: str = ""
    ) -> m.Organization:
        key, done = await self.seen("TransferOrganizationOwnership", p, request_id, org_id, new_owner)
        if done:
            return await self.load_org(p, done)
        if not new_owner:
            raise errors.InvalidArgument.field("new_owner_user_id", "is required")
        org = await self.org_for(
            p, org_id, "org:transfer_ownership", "tenancy.organization.transfer_ownership"
        )
        checked_owner = org.owner_user_id
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            org = await tx.repo.get_organization(org.id)
            if org.owner_user_id != checked_owner:
                # the right was checked against an owner who has changed since: do not act on it
                raise errors.Aborted("the ownership changed concurrently; read again and retry")
            target = await tx.repo.get_org_member(org.id, new_owner)
            if target is None:
                raise errors.NotFound("member", new_owner)
            if target.status != m.MEMBER_ACTIVE:
                raise errors.FailedPrecondition(
                    "the new owner must be an active member", reason="MEMBERSHIP_NOT_ACTIVE"
                )
            old = org.owner_user_id
            if old != new_owner:
                await tx.repo.put_org_member(m.OrgMember(org.id, old, "admin", m.MEMBER_ACTIVE, 0))
                await tx.repo.put_org_member(m.OrgMember(org.id, new_owner, "owner", m.MEMBER_ACTIVE, 0))
                org.owner_user_id = new_owner
                org.touch(self.clock())
                await tx.repo.save_organization(org)
                # New owner first, then the old one steps down: never a moment without an owner.
                await tx.authz(
                    ("delete", org_ref(org.id), target.role, user_ref(new_owner)),
                    ("touch", org_ref(org.id), "owner", user_ref(new_owner)),
                    ("delete", org_ref(org.id), "owner", user_ref(old)),
                    ("touch", org_ref(org.id), "admin", user_ref(old)),
                )
                await tx.audit(
                    "tenancy.organization.transfer_ownership",
                    organization_id=org.id,
                    target=("organization", org.id),
                    details={"owner": {"old": old, "new": new_owner}},
                )
                if key:
                    await tx.repo.remember_request(key, org.id)
                await tx.commit()
        await self.deliver("organization.transfer_ownership", tx)
        return org
