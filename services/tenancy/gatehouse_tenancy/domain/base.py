"""What every tenancy use case shares: access decisions through authz, loading with tenant rules, commits.

Access is always decided by authz. When authz denies, the caller learns that
the object exists only if they can see its organization at all (``org:view``);
otherwise the answer is NOT_FOUND, exactly as for an id that never existed.
Every denial is audited (outcome DENIED) in its own transaction.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable

from gatehouse.kit import errors
from gatehouse.kit.context import Principal
from gatehouse_tenancy.domain import model as m

ORG_VIEW = "org:view"
PLATFORM = "platform:platform"
PLATFORM_ADMIN_CAP = "platform:create_organization"


def org_ref(org_id: str) -> str:
    return f"organization:{org_id}"


def ws_ref(ws_id: str) -> str:
    return f"workspace:{ws_id}"


def group_ref(group_id: str) -> str:
    return f"group:{group_id}"


def user_ref(user_id: str) -> str:
    return f"user:{user_id}"


class Core:
    """Dependencies and shared steps of the use cases (no grpc, no sqlalchemy here)."""

    def __init__(
        self,
        *,
        transactions,
        authz,
        delivery,
        identity,
        clock: Callable[[], float] = time.time,
        after_commit: Callable[[str], Awaitable[None]] | None = None,
    ):
        self.tx = transactions
        self.authz = authz
        self.delivery = delivery
        self.identity = identity
        self.clock = clock
        self._after_commit = after_commit

    # ---- commits ------------------------------------------------------------
    async def deliver(self, action: str, tx) -> int | None:
        """After commit: deliver this transaction's authz changes now (the relay retries on failure)."""
        if self._after_commit is not None:
            await self._after_commit(action)
        if not tx.authz_entries:
            return None
        return await self.delivery.flush(tx.authz_entries[-1])

    # ---- idempotency --------------------------------------------------------
    @staticmethod
    def request_key(method: str, principal: Principal | None, request_id: str, *target: str) -> str:
        """The idempotency key: the method, the caller, and a digest of what the request is about
        (``target``: e.g. the group and the user of AddGroupMember) with its ``request_id``. The
        same request id reused for another target is another request, so a retry can only ever
        replay its own first answer (before, a reused id answered about whatever the new request
        named, without any access check). A digest keeps the key within its column whatever the
        lengths of the request id and the targets."""
        who = principal.subject if principal else "anonymous"
        about = hashlib.sha256("\x1f".join((*target, request_id)).encode()).hexdigest()
        return f"{method}|{who}|{about}"

    async def seen(
        self, method: str, p: Principal | None, request_id: str, *target: str
    ) -> tuple[str, str | None]:
        """The idempotency key of a request and, for a retry, the id its first call recorded."""
        if not request_id:
            return "", None
        key = self.request_key(method, p, request_id, *target)
        async with self.tx() as tx:
            return key, await tx.repo.request_result(key)

    # ---- access ------------------------------------------------------------
    async def is_platform_admin(self, p: Principal) -> bool:
        return await self.authz.allowed(p, PLATFORM, PLATFORM_ADMIN_CAP)

    async def audit_denied(
        self,
        p: Principal,
        action: str,
        *,
        organization_id: str = "",
        workspace_id: str = "",
        target: tuple[str, str] | None = None,
        capability: str = "",
    ) -> None:
        async with self.tx() as tx:
            await tx.audit(
                action,
                outcome="DENIED",
                reason="CAPABILITY_DENIED",
                organization_id=organization_id,
                workspace_id=workspace_id,
                target=target,
                details={"capability": capability} if capability else None,
            )
            await tx.commit()

    async def require(
        self,
        p: Principal,
        resource: str,
        capability: str,
        *,
        organization_id: str,
        action: str,
        kind: str,
        ident: str,
        workspace_id: str = "",
    ) -> None:
        """Allowed by authz, or NOT_FOUND (caller sees nothing of the organization) / PERMISSION_DENIED."""
        if await self.authz.allowed(p, resource, capability):
            return
        await self.audit_denied(
            p,
            action,
            organization_id=organization_id,
            workspace_id=workspace_id,
            target=(kind, ident),
            capability=capability,
        )
        if resource != org_ref(organization_id) or capability != ORG_VIEW:
            if await self.authz.allowed(p, org_ref(organization_id), ORG_VIEW):
                raise errors.PermissionDenied(
                    f"missing capability {capability!r} on {resource}",
                    capability=capability,
                    resource=resource,
                )
        raise errors.NotFound(kind, ident)

    async def require_org(self, p: Principal, org_id: str, capability: str, action: str) -> None:
        """:meth:`require` for a capability on the organization itself."""
        await self.require(
            p,
            org_ref(org_id),
            capability,
            organization_id=org_id,
            action=action,
            kind="organization",
            ident=org_id,
        )

    async def may_undelete_org(self, p: Principal, org_id: str) -> bool:
        access = await self.authz.access(p, org_ref(org_id))
        if access.is_platform_admin:
            return True
        return access.member_role == "owner" and await self._active_member(p, org_id)

    async def may_undelete_ws(self, p: Principal, ws: m.Workspace) -> bool:
        access = await self.authz.access(p, ws_ref(ws.id))
        if access.is_platform_admin:
            return True
        if access.member_role == "owner" and await self._active_member(p, ws.organization_id):
            return True
        return await self.authz.allowed(p, org_ref(ws.organization_id), "org:delete")

    async def _active_member(self, p: Principal, org_id: str) -> bool:
        """Whether the caller is an active member of the organization. Authz denies every capability
        on a deleted resource, so undeleting goes by the role the caller holds on it (``member_role``),
        which authz reports whatever the caller's membership: a deactivated member still holds the
        owner binding of a workspace they created."""
        if p.kind != "user":
            return False
        async with self.tx() as tx:
            return await tx.repo.is_active_member(org_id, p.id)

    # ---- loading with the tenant rules ----------------------------------------
    async def load_org(
        self, p: Principal | None, org_id: str, *, show_deleted: bool = False
    ) -> m.Organization:
        """The organization, or NOT_FOUND when unknown or deleted (unless shown to who may undelete)."""
        if not org_id:
            raise errors.InvalidArgument.field("organization_id", "is required")
        async with self.tx() as tx:
            org = await tx.repo.get_organization(org_id)
        if org is None:
            raise errors.NotFound("organization", org_id)
        if org.deleted and not (show_deleted and p is not None and await self.may_undelete_org(p, org_id)):
            raise errors.NotFound("organization", org_id)
        return org

    async def load_ws(self, p: Principal, ws_id: str, *, show_deleted: bool = False) -> m.Workspace:
        if not ws_id:
            raise errors.InvalidArgument.field("workspace_id", "is required")
        async with self.tx() as tx:
            ws = await tx.repo.get_workspace(ws_id)
            org = await tx.repo.get_organization(ws.organization_id) if ws else None
        if ws is None or org is None:
            raise errors.NotFound("workspace", ws_id)
        if (ws.deleted or org.deleted) and not (
            show_deleted and not org.deleted and await self.may_undelete_ws(p, ws)
        ):
            raise errors.NotFound("workspace", ws_id)
        return ws

    async def ws_for(
        self, p: Principal, ws_id: str, capability: str, action: str, *, show_deleted: bool = False
    ) -> m.Workspace:
        ws = await self.load_ws(p, ws_id, show_deleted=show_deleted)
        if ws.deleted:
            return ws  # only reachable by who may undelete (checked in load_ws)
        await self.require(
            p,
            ws_ref(ws.id),
            capability,
            organization_id=ws.organization_id,
            workspace_id=ws.id,
            action=action,
            kind="workspace",
            ident=ws.id,
        )
        return ws

    async def org_for(self, p: Principal, org_id: str, capability: str, action: str) -> m.Organization:
        org = await self.load_org(p, org_id)
        await self.require_org(p, org.id, capability, action)
        return org

    async def load_group(self, p: Principal, group_id: str, capability: str, action: str) -> m.Group:
        if not group_id:
            raise errors.InvalidArgument.field("group_id", "is required")
        async with self.tx() as tx:
            group = await tx.repo.get_group(group_id)
            org = await tx.repo.get_organization(group.organization_id) if group else None
        if group is None or org is None or org.deleted:
            raise errors.NotFound("group", group_id)
        await self.require(
            p,
            org_ref(group.organization_id),
            capability,
            organization_id=group.organization_id,
            action=action,
            kind="group",
            ident=group_id,
        )
        return group


async def require_active_member(
    tx, org_id: str, user_id: str, message: str = "the user is not an active member of the organization"
) -> None:
    """FAILED_PRECONDITION (``MEMBERSHIP_NOT_ACTIVE``) unless the user is an active member."""
    if not await tx.repo.is_active_member(org_id, user_id):
        raise errors.FailedPrecondition(message, reason="MEMBERSHIP_NOT_ACTIVE")
