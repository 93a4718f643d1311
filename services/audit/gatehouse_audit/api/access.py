"""Who may read which part of the trail, decided by authz (never by audit's own rows).

- workspace admins: their workspace (``view:audit`` on ``workspace:<id>``);
- organization admins: their organization (``org:read_audit`` on ``organization:<id>``);
- platform admins and security auditors: every chain (``platform:read_audit`` on
  ``platform:platform``) — such reads are *cross-organization* and audited;
- anyone else: PERMISSION_DENIED. Service accounts only ingest.

The scope narrows the caller's filter, so another organization's events are
simply not there whatever the filter says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gatehouse.kit import errors
from gatehouse.kit.context import Principal
from gatehouse_audit.domain.model import PLATFORM, Event, EventFilter

PLATFORM_RESOURCE = ("platform", "platform")
PLATFORM_READ = "platform:read_audit"
ORG_READ = "org:read_audit"
WORKSPACE_READ = "view:audit"


@dataclass(frozen=True)
class Scope:
    filter: EventFilter
    cross_organization: bool


def _users_only(principal: Principal) -> None:
    if principal.is_service:
        raise errors.PermissionDenied(
            "service accounts do not read the audit trail",
            capability=PLATFORM_READ,
            reason="CAPABILITY_DENIED",
        )


class CoherentChecks:
    """Checks through an ``AuthzClient`` that use its cache only while its Watch stream is live.

    So a cached decision is never older than the last change authz reported; before the stream
    is up (start-up) or while it is down, every check asks authz (and fails closed).
    """

    def __init__(self, client):
        self.client = client

    async def check(self, principal: Principal, resource: tuple[str, str], capability: str):
        return await self.client.check(principal, resource, capability, use_cache=self.client.coherent)


class Access:
    def __init__(self, guard):
        """``guard``: anything with ``await check(principal, resource, capability) -> Decision``
        that fails closed (:class:`CoherentChecks` over an ``AuthzClient`` in the server)."""
        self.guard = guard

    async def _allowed(self, principal: Principal, resource: tuple[str, str], capability: str) -> bool:
        return (await self.guard.check(principal, resource, capability)).allowed

    async def _platform(self, principal: Principal) -> bool:
        return await self._allowed(principal, PLATFORM_RESOURCE, PLATFORM_READ)

    async def for_filter(self, principal: Principal, wanted: EventFilter) -> Scope:
        """The caller's filter narrowed to what they may read (PERMISSION_DENIED if nothing)."""
        _users_only(principal)
        org = wanted.organization_ids[0] if wanted.organization_ids else ""
        ws = wanted.workspace_id
        if org and await self._allowed(principal, ("organization", org), ORG_READ):
            return Scope(wanted, False)
        if ws and await self._allowed(principal, ("workspace", ws), WORKSPACE_READ):
            return Scope(wanted, False)
        if await self._platform(principal):
            return Scope(wanted, True)
        if org:
            raise errors.PermissionDenied(
                f"missing capability {ORG_READ!r} on organization:{org}",
                capability=ORG_READ,
                resource=f"organization:{org}",
            )
        raise errors.PermissionDenied(
            "reading across organizations needs platform:read_audit; set filter.organization_id",
            capability=PLATFORM_READ,
            resource="platform:platform",
        )

    async def for_event(self, principal: Principal, event: Event | None, event_id: str) -> bool:
        """Whether the caller may see ``event``; NOT_FOUND otherwise. True if by platform scope."""
        _users_only(principal)
        if event is not None:
            org, ws = event.organization_id, event.workspace_id
            if org and await self._allowed(principal, ("organization", org), ORG_READ):
                return False
            if ws and await self._allowed(principal, ("workspace", ws), WORKSPACE_READ):
                return False
            if await self._platform(principal):
                return True
        raise errors.NotFound("audit event", event_id)

    async def for_chain(self, principal: Principal, org: str) -> bool:
        """Checkpoints and verification: the organization's admins or platform readers."""
        _users_only(principal)
        if org != PLATFORM and await self._allowed(principal, ("organization", org), ORG_READ):
            return False
        if await self._platform(principal):
            return True
        capability, resource = (
            (ORG_READ, f"organization:{org}") if org else (PLATFORM_READ, "platform:platform")
        )
        raise errors.PermissionDenied(
            f"missing capability {capability!r} on {resource}", capability=capability, resource=resource
        )


def describe(f: EventFilter) -> dict:
    """The filter as event details (for audited reads)."""
    out = {k: v for k, v in dataclasses.asdict(f).items() if v not in (None, "", ())}
    orgs = out.pop("organization_ids", None)
    out["organization_id"] = orgs[0] if orgs else ""
    return out
