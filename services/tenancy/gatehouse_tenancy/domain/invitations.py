"""Invitations (single-use hashed tokens with an expiry) and the purge of soft-deleted objects."""

from __future__ import annotations

from gatehouse.kit import errors
from gatehouse.kit.audit_log import Actor
from gatehouse.kit.context import Principal
from gatehouse.kit.ids import new_id
from gatehouse.kit.pagination import decode_token, page_size
from gatehouse_tenancy.domain import model as m
from gatehouse_tenancy.domain.base import Core, org_ref, user_ref, ws_ref

INVITE = "org:invite"
SYSTEM = Actor("service", "tenancy", "purge job")
ROLE_RANK = {r: i for i, r in enumerate(m.ORG_ROLES)}


class Invitations(Core):
    async def create_invitation(
        self,
        p: Principal,
        org_id: str,
        email: str,
        role: str,
        ws_roles: list[tuple[str, str]],
        request_id: str,
    ) -> tuple[m.Invitation, str]:
        errs = errors.ErrorCollector()
        email = m.check_email(errs, "email", email)
        m.check_assignable_role(errs, "role", role)
        for i, (ws_id, ws_role) in enumerate(ws_roles):
            m.require_id(errs, f"workspace_roles[{i}].workspace_id", ws_id)
            m.check_assignable_role(errs, f"workspace_roles[{i}].role", ws_role)
        errs.raise_if_any()
        action = "tenancy.invitation.create"
        org = await self.org_for(p, org_id, INVITE, action)
        key = self.request_key("CreateInvitation", p, request_id) if request_id else ""
        existing = await self.identity.lookup_by_email(email)
        token, token_hash = m.new_invitation_token()
        now = self.clock()
        async with self.tx() as tx:
            await tx.repo.lock_organization(org.id)
            done = await tx.repo.request_result(key) if key else None
            if done:
                # A retry: the first token was shown once; issue a fresh one for the same invitation.
                inv = await tx.repo.get_invitation(done)
                if inv is not None and inv.state == m.PENDING:
                    inv.token_hash = token_hash
                    await tx.repo.save_invitation(inv)
                    await tx.commit()
                    return inv, token
            for i, (ws_id, _) in enumerate(ws_roles):
                ws = await tx.repo.get_workspace(ws_id)
                if ws is None or ws.organization_id != org.id or ws.deleted:
                    raise errors.InvalidArgument.field(
                        f"workspace_roles[{i}].workspace_id", "no such workspace"
                    )
            if existing is not None:
                member = await tx.repo.get_org_member(org.id, existing.id)
                if member is not None:
                    raise errors.AlreadyExists("this person is already a member of the organization")
            inv = m.Invitation(
                new_id(),
                org.id,
                email,
                role,
                list(ws_roles),
                m.PENDING,
                token_hash,
                now + org.settings.invitation_ttl_seconds,
                now,
                p.id,
            )
            await tx.repo.insert_invitation(inv)
            if key:
                await tx.repo.remember_request(key, inv.id)
            await tx.audit(
                action,
                organization_id=org.id,
                target=("invitation", inv.id),
                details={"email": email, "role": role, "workspace_roles": [list(x) for x in ws_roles]},
            )
            await tx.commit()
        return inv, token

    async def _invitation(self, p: Principal, org_id: str, inv_id: str, action: str) -> m.Invitation:
        org = await self.org_for(p, org_id, INVITE, action)
        async with self.tx() as tx:
            inv = await tx.repo.get_invitation(inv_id) if inv_id else None
        if inv is None or inv.organization_id != org.id:
            raise errors.NotFound("invitation", inv_id)
        return inv

    async def list_invitations(
        self, p: Principal, org_id: str, size: int, token: str, state: str | None
    ) -> m.Page:
        org = await self.org_for(p, org_id, INVITE, "tenancy.invitation.list")
        size = page_size(size)
        before = str((decode_token(token) or {}).get("before", ""))
        async with self.tx() as tx:
            rows = await tx.repo.list_invitations(org.id, before, size + 1, state, self.clock())
        return m.Page.of(rows, size, lambda last: {"before": last.id})

    async def revoke_invitation(self, p: Principal, org_id: str, inv_id: str) -> m.Invitation:
        action = "tenancy.invitation.revoke"
        inv = await self._invitation(p, org_id, inv_id, action)
        async with self.tx() as tx:
            await tx.repo.lock_organization(inv.organization_id)
            inv = await tx.repo.get_invitation(inv.id)
            self._require_pending(inv)
            inv.state = m.REVOKED
            await tx.repo.save_invitation(inv)
            await tx.audit(
                action,
                organization_id=inv.organization_id,
                target=("invitation", inv.id),
                details={"state": {"old": m.PENDING, "new": m.REVOKED}},
            )
            await tx.commit()
        return inv

    async def resend_invitation(self, p: Principal, org_id: str, inv_id: str) -> tuple[m.Invitation, str]:
        action = "tenancy.invitation.resend"
        inv = await self._invitation(p, org_id, inv_id, action)
        token, token_hash = m.new_invitation_token()
        async with self.tx() as tx:
            await tx.repo.lock_organization(inv.organization_id)
            org = await tx.repo.get_organization(inv.organization_id)
            inv = await tx.repo.get_invitation(inv.id)
            if inv.state != m.PENDING:  # an expired one may be resent; used or revoked ones may not
                self._require_pending(inv)
            old_expiry = inv.expire_time
            inv.token_hash = token_hash
            inv.expire_time = self.clock() + org.settings.invitation_ttl_seconds
            await tx.repo.save_invitation(inv)
            await tx.audit(
                action,
                organization_id=inv.organization_id,
                target=("invitation", inv.id),
                details={"expire_time": {"old": old_expiry, "new": inv.expire_time}},
            )
            await tx.commit()
        return inv, token

    def _require_pending(self, inv: m.Invitation, *, now: float | None = None) -> None:
        state = inv.state_at(now) if now is not None else inv.state
        if state == m.ACCEPTED:
            raise errors.FailedPrecondition("the invitation was already used", reason="INVITATION_USED")
        if state == m.REVOKED:
            raise errors.FailedPrecondition("the invitation was revoked", reason="INVITATION_REVOKED")
        if state == m.EXPIRED:
            raise errors.FailedPrecondition("the invitation expired", reason="INVITATION_EXPIRED")

    async def accept_invitation(self, p: Principal | None, token: str, display_name: str, password: str):
        if not token:
            raise errors.InvalidArgument.field("token", "is required")
        async with self.tx() as tx:
            inv = await tx.repo.invitation_by_token_hash(m.hash_token(token))
            org = await tx.repo.get_organization(inv.organization_id) if inv else None
        if inv is None or org is None or org.deleted:
            raise errors.NotFound("invitation")
        self._require_pending(inv, now=self.clock())
        user = await self.identity.lookup_by_email(inv.email)
        if user is not None:
            if p is None or p.kind != "user" or p.id != user.id:
                raise errors.FailedPrecondition(
                    "an account with this email exists: sign in as that account to accept",
                    reason="INVITATION_EMAIL_MISMATCH",
                )
        else:
            if p is not None:
                raise errors.FailedPrecondition(
                    "the invitation is for another email than the signed-in account",
                    reason="INVITATION_EMAIL_MISMATCH",
                )
            errs = errors.ErrorCollector()
            errs.require(bool(password), "password", "is required for a new account")
            errs.raise_if_any()
            user = await self.identity.create_user(
                inv.email,
                display_name or inv.email.split("@")[0],
                password,
                request_id=f"tenancy-invitation:{inv.id}",
            )
        async with self.tx() as tx:
            await tx.repo.lock_organization(inv.organization_id)
            inv = await tx.repo.get_invitation(inv.id)
            if inv.token_hash != m.hash_token(token):
                raise errors.NotFound("invitation")
            self._require_pending(inv, now=self.clock())
            member = await tx.repo.get_org_member(inv.organization_id, user.id)
            if member is not None and member.status == m.INACTIVE:
                # an invitation is not a way around a deactivation: an admin reactivates the member
                raise errors.FailedPrecondition(
                    "your membership of this organization is deactivated; ask an admin to reactivate it",
                    reason="MEMBERSHIP_INACTIVE",
                )
            inv.state, inv.accepted_user_id = m.ACCEPTED, user.id
            await tx.repo.save_invitation(inv)
            # the person is in: their other invitations to the organization are spent (one kept
            # would let them back in after a removal)
            await tx.repo.revoke_other_invitations(inv.organization_id, inv.email, inv.id)
            role = inv.role
            updates: list[tuple] = []
            if member is not None and ROLE_RANK[member.role] >= ROLE_RANK[role]:
                role = member.role  # joining never lowers a role (and never touches the owner)
            elif member is not None:
                updates.append(("delete", org_ref(inv.organization_id), member.role, user_ref(user.id)))
            await tx.repo.put_org_member(
                m.OrgMember(inv.organization_id, user.id, role, m.MEMBER_ACTIVE, self.clock())
            )
            updates += [
                ("touch", org_ref(inv.organization_id), role, user_ref(user.id)),
                ("membership", inv.organization_id, user.id, m.MEMBER_ACTIVE),
            ]
            joined = []
            for ws_id, ws_role in inv.workspace_roles:
                ws = await tx.repo.get_workspace(ws_id)
                if ws is None or ws.deleted or await tx.repo.get_workspace_member(ws_id, "user", user.id):
                    continue
                await tx.repo.put_workspace_member(m.WorkspaceMember(ws_id, "user", user.id, ws_role))
                updates.append(("touch", ws_ref(ws_id), ws_role, user_ref(user.id)))
                joined.append(ws_id)
            await tx.authz(*updates)
            await tx.audit(
                "tenancy.invitation.accept",
                actor=Actor("user", user.id),
                organization_id=inv.organization_id,
                target=("invitation", inv.id),
                details={"user_id": user.id, "role": role, "workspaces": joined},
            )
            await tx.commit()
        await self.deliver("invitation.accept", tx)
        return org, user.id

    # ---- purge ---------------------------------------------------------------------
    async def purge_expired(self) -> int:
        """Remove organizations and workspaces whose retention ended, with their relationships; audited."""
        now = self.clock()
        purged = 0
        async with self.tx() as tx:
            orgs = await tx.repo.purgeable_organizations(now)
            workspaces = await tx.repo.purgeable_workspaces(now)
        for org in orgs:
            async with self.tx() as tx:
                members = await tx.repo.list_org_members(org.id, "", 100000)
                await tx.repo.delete_organization_rows(org.id)
                await tx.authz_delete(within_organization_id=org.id)
                await tx.authz(*[("membership", org.id, mem.user_id, None) for mem in members])
                await tx.audit(
                    "tenancy.organization.purge",
                    actor=SYSTEM,
                    organization_id=org.id,
                    target=("organization", org.id),
                    details={"name": org.name, "slug": org.slug},
                )
                await tx.commit()
            await self.deliver("organization.purge", tx)
            purged += 1
        for ws in workspaces:
            async with self.tx() as tx:
                if not await tx.repo.get_workspace(ws.id):
                    continue
                await tx.repo.delete_workspace_rows(ws.id)
                await tx.authz_delete(resource_type="workspace", resource_id=ws.id)
                await tx.audit(
                    "tenancy.workspace.purge",
                    actor=SYSTEM,
                    organization_id=ws.organization_id,
                    workspace_id=ws.id,
                    target=("workspace", ws.id),
                    details={"name": ws.name},
                )
                await tx.commit()
            await self.deliver("workspace.purge", tx)
            purged += 1
        return purged
