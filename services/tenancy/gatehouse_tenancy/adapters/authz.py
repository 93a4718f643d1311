"""Tenancy's side of authz: checks (fail closed), reads, and relationship writes through the outbox.

Writes never go straight to authz. A use case puts them in the local outbox
(topic ``authz``) in the same transaction as its own change — so tenancy and
authz can never disagree for good — and, after commit, :class:`AuthzDelivery`
delivers them at once when the caller must see the result immediately; if
that fails, the background relay keeps retrying. Delivery is strictly in entry
order (ids are monotonic per process, and an entry waiting for a retry holds
back every later one), and idempotent: the entry id is the ``request_id`` of
the authz call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from gatehouse.authz.v1 import authz_service_pb2 as apb
from gatehouse.authz.v1 import authz_service_pb2_grpc, decision_pb2, relationship_pb2
from gatehouse.kit import errors, outbox
from gatehouse.kit.authz_guard import AuthzGuard, TokenSource
from gatehouse.kit.context import Principal
from gatehouse.kit.db import Database
from gatehouse.type.v1 import refs_pb2

log = logging.getLogger("gatehouse.tenancy.authz")

TOPIC = "authz"
Op = relationship_pb2.RelationshipUpdate.Operation
_WRITE, _DELETE = b"W", b"D"
_PERMANENT = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


def rel(resource: str, relation: str, subject: str, capability: str = "") -> relationship_pb2.Relationship:
    rtype, _, rid = resource.partition(":")
    stype, _, sid = subject.partition(":")
    return relationship_pb2.Relationship(
        resource=refs_pb2.ResourceRef(type=rtype, id=rid),
        relation=relation,
        subject=refs_pb2.SubjectRef(type=stype, id=sid),
        capability=capability,
    )


def touch(resource: str, relation: str, subject: str) -> relationship_pb2.RelationshipUpdate:
    return relationship_pb2.RelationshipUpdate(
        operation=Op.OPERATION_TOUCH, relationship=rel(resource, relation, subject)
    )


def delete(resource: str, relation: str, subject: str) -> relationship_pb2.RelationshipUpdate:
    return relationship_pb2.RelationshipUpdate(
        operation=Op.OPERATION_DELETE, relationship=rel(resource, relation, subject)
    )


MEMBERSHIP = {
    "INVITED": relationship_pb2.MEMBERSHIP_STATUS_INVITED,
    "ACTIVE": relationship_pb2.MEMBERSHIP_STATUS_ACTIVE,
    "INACTIVE": relationship_pb2.MEMBERSHIP_STATUS_INACTIVE,
}


def membership(org_id: str, user_id: str, status: str | None) -> relationship_pb2.RelationshipUpdate:
    """Membership state update; ``None`` removes the membership record."""
    state = relationship_pb2.MembershipState(
        organization_id=org_id, user_id=user_id, status=MEMBERSHIP.get(status or "", 0)
    )
    op = Op.OPERATION_DELETE if status is None else Op.OPERATION_TOUCH
    return relationship_pb2.RelationshipUpdate(operation=op, membership_state=state)


def resource_state(resource: str, deleted: bool) -> relationship_pb2.RelationshipUpdate:
    rtype, _, rid = resource.partition(":")
    return relationship_pb2.RelationshipUpdate(
        operation=Op.OPERATION_TOUCH,
        resource_state=relationship_pb2.ResourceState(
            resource=refs_pb2.ResourceRef(type=rtype, id=rid), deleted=deleted
        ),
    )


def resource_settings(org_id: str, require_mfa: bool) -> relationship_pb2.RelationshipUpdate:
    return relationship_pb2.RelationshipUpdate(
        operation=Op.OPERATION_TOUCH,
        resource_settings=relationship_pb2.ResourceSettings(
            resource=refs_pb2.ResourceRef(type="organization", id=org_id), require_mfa=require_mfa
        ),
    )


async def enqueue_write(session, updates: list[relationship_pb2.RelationshipUpdate]) -> str:
    """Put a WriteRelationships call in the outbox (caller's transaction); returns the entry id."""
    payload = apb.WriteRelationshipsRequest(updates=updates).SerializeToString()
    return await outbox.add(session, TOPIC, _WRITE + payload, key=outbox.ordered_key())


async def enqueue_delete(session, **filter_fields: str) -> str:
    """Put a DeleteRelationships call (``RelationshipFilter`` fields) in the outbox."""
    payload = apb.DeleteRelationshipsRequest(
        filter=relationship_pb2.RelationshipFilter(**filter_fields)
    ).SerializeToString()
    return await outbox.add(session, TOPIC, _DELETE + payload, key=outbox.ordered_key())


@dataclass(frozen=True)
class Access:
    member_role: str
    is_platform_admin: bool
    effective_role: str
    capabilities: tuple[str, ...]
    revision: int


class AuthzClient:
    """Checks, access summaries and lookups against authz, with a deadline; UNAVAILABLE when unsure."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float, token_source: TokenSource | None):
        self.guard = AuthzGuard(channel, timeout=timeout, token_source=token_source)
        self.stub = authz_service_pb2_grpc.AuthzServiceStub(channel)
        self.timeout = timeout
        self.token_source = token_source

    async def metadata(self):
        if self.token_source is None:
            return ()
        token = await self.token_source()
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _call(self, method: str, request, timeout: float | None = None):
        try:
            return await getattr(self.stub, method)(
                request, timeout=timeout or self.timeout, metadata=await self.metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise errors.Unavailable(
                f"authorization service did not answer ({exc.code().name}); denied",
                dependency="authz",
                metadata={"authz_code": exc.code().name},
            ) from exc

    async def allowed(
        self, principal: Principal, resource: str, capability: str, revision: int | None = None
    ) -> bool:
        return (await self.guard.check(principal, resource, capability, at_least_revision=revision)).allowed

    async def access(self, principal: Principal, resource: str, revision: int | None = None) -> Access:
        rtype, _, rid = resource.partition(":")
        request = apb.GetAccessRequest(
            subject=refs_pb2.SubjectRef(type=principal.kind, id=principal.id),
            resource=refs_pb2.ResourceRef(type=rtype, id=rid),
            authentication_context=decision_pb2.AuthenticationContext(
                amr=list(principal.amr), session_id=principal.session_id or ""
            ),
        )
        if revision:
            request.consistency.at_least_revision = revision
        answer = await self._call("GetAccess", request)
        return Access(
            answer.member_role,
            answer.is_platform_admin,
            answer.effective_role,
            tuple(answer.capabilities),
            answer.revision,
        )

    async def lookup(
        self,
        principal: Principal,
        resource_type: str,
        capability: str,
        parent: str = "",
        revision: int | None = None,
    ) -> list[str]:
        """Every id of ``resource_type`` (under ``parent``) where the caller holds ``capability`` (bounded)."""
        ids: list[str] = []
        token = ""
        for _ in range(100):
            request = apb.LookupResourcesRequest(
                subject=refs_pb2.SubjectRef(type=principal.kind, id=principal.id),
                resource_type=resource_type,
                capability=capability,
                page_size=1000,
                page_token=token,
                authentication_context=decision_pb2.AuthenticationContext(amr=list(principal.amr)),
            )
            if parent:
                ptype, _, pid = parent.partition(":")
                request.parent.type, request.parent.id = ptype, pid
            if revision:
                request.consistency.at_least_revision = revision
            answer = await self._call("LookupResources", request)
            ids.extend(answer.resource_ids)
            token = answer.next_page_token
            if not token:
                break
        else:
            raise _truncated("LookupResources")
        return ids

    async def read(self, **filter_fields: str) -> list[relationship_pb2.Relationship]:
        """Relationships matching a filter (service account call; bounded)."""
        out: list[relationship_pb2.Relationship] = []
        token = ""
        for _ in range(100):
            request = apb.ReadRelationshipsRequest(
                filter=relationship_pb2.RelationshipFilter(**filter_fields), page_size=1000, page_token=token
            )
            request.consistency.fully_consistent = True
            answer = await self._call("ReadRelationships", request)
            out.extend(answer.relationships)
            token = answer.next_page_token
            if not token:
                break
        else:
            raise _truncated("ReadRelationships")
        return out


def _truncated(method: str) -> errors.Unavailable:
    """More than 100 pages: refuse rather than act on a silently cut-short answer."""
    return errors.Unavailable(f"authz {method} answered more than 100 pages; refusing a partial answer")


class AuthzDelivery:
    """Delivers the ``authz`` outbox in order: right after a commit and from the background relay."""

    def __init__(self, database: Database, client: AuthzClient, *, deliver_timeout: float = 5.0):
        self.db = database
        self.client = client
        self.deliver_timeout = deliver_timeout
        self.lock = asyncio.Lock()
        self.relay = outbox.OutboxRelay(
            database, TOPIC, self._deliver, batch_size=50, max_backoff=10.0, ordered=True
        )
        self.last_revision = 0

    async def _deliver(self, entries: list[outbox.OutboxEntry]) -> None:
        for entry in entries:
            kind, body = entry.payload[:1], entry.payload[1:]
            if kind == _WRITE:
                request = apb.WriteRelationshipsRequest.FromString(body)
                method = "WriteRelationships"
            else:
                request = apb.DeleteRelationshipsRequest.FromString(body)
                method = "DeleteRelationships"
            request.request_id = f"tenancy:{entry.id}"
            try:
                answer = await getattr(self.client.stub, method)(
                    request, timeout=self.deliver_timeout, metadata=await self.client.metadata()
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _PERMANENT:
                    # Retrying cannot help; keep the queue moving and leave a loud trace.
                    log.error("authz rejected outbox entry %s for good: %s", entry.id, exc.details())
                    continue
                raise
            self.last_revision = max(self.last_revision, answer.revision)

    async def flush(self, entry_id: str | None = None) -> int | None:
        """Deliver what is due now, in order; the authz revision if ``entry_id`` got delivered, else None."""
        async with self.lock:
            try:
                await self.relay.drain(max_batches=20)
            except Exception:  # the relay keeps the entries; the caller falls back to it
                log.exception("immediate authz delivery failed; the relay will retry")
        if entry_id is None:
            return self.last_revision
        return self.last_revision if await self.relay.is_delivered(entry_id) else None

    async def run(self) -> None:
        """Background relay: retries what immediate delivery could not do."""
        while True:
            async with self.lock:
                try:
                    delivered = await self.relay.drain_once()
                except Exception:
                    log.exception("authz relay error")
                    delivered = 0
            if not delivered:
                await asyncio.sleep(self.relay.poll_interval)
