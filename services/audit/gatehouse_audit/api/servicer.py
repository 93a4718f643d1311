"""AuditService over gRPC: validate, check access through authz, call one use case, convert."""

from __future__ import annotations

import hashlib

from gatehouse.audit.v1 import audit_event_pb2 as epb
from gatehouse.audit.v1 import audit_service_pb2 as pb
from gatehouse.audit.v1 import audit_service_pb2_grpc
from gatehouse.kit import errors
from gatehouse.kit.context import current_request_id
from gatehouse.kit.errors import ErrorCollector
from gatehouse.kit.interceptors import require_principal, require_service_account
from gatehouse.kit.pagination import decode_token, encode_token, page_size
from gatehouse_audit.api.access import Access, describe
from gatehouse_audit.api.convert import event_from_pb, event_to_pb, filter_from_pb, from_us
from gatehouse_audit.domain.model import MAX_BATCH
from gatehouse_audit.domain.usecases import Audit, SignedCheckpoint

EXPORT_PAGE = 500


def _fingerprint(request_filter) -> str:
    return hashlib.sha256(request_filter.SerializeToString(deterministic=True)).hexdigest()[:12]


def _collect(errs: ErrorCollector, validate):
    """``validate()``'s value, or None with its field violations added to ``errs``."""
    try:
        return validate()
    except errors.InvalidArgument as exc:
        errs.violations.extend(exc.violations)
        return None


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: Audit, access: Access):
        self.audit = audit
        self.access = access

    async def _scope(self, request_filter, errs: ErrorCollector | None = None):
        """Validate the filter (adding to ``errs``, which may hold other fields' violations), then
        narrow it to what the caller may read."""
        errs = errs or ErrorCollector()
        wanted = filter_from_pb(request_filter, errs)
        errs.raise_if_any()
        principal = require_principal()
        scope = await self.access.for_filter(principal, wanted)
        return principal, scope

    async def _audit_read(self, principal, rpc: str, details: dict) -> None:
        await self.audit.record_read(principal.id, rpc, details, current_request_id() or "")

    # ---- ingest ---------------------------------------------------------------
    async def IngestEvents(self, request, context):
        caller = require_service_account()
        name = caller.service_name
        if name is None:
            raise errors.PermissionDenied(
                "this service token carries no service name (issued before audit required one); "
                "get a new token from identity",
                reason="SERVICE_ACCOUNT_REQUIRED",
            )
        if len(request.events) > MAX_BATCH:
            raise errors.InvalidArgument.field("events", f"at most {MAX_BATCH} events per call")
        errs = ErrorCollector()
        batch = [event_from_pb(e, f"events[{i}]", errs) for i, e in enumerate(request.events)]
        for i, e in enumerate(request.events):
            # A service records only its own events: one service's credentials cannot put words in
            # another's mouth (the name is signed into the token by identity).
            if e.service and e.service != name:
                errs.add(f"events[{i}].service", f"must be {name!r}, the calling service account")
            # ... and only its own actions ("tenancy.organization.update" carries an organization's
            # retention: from anyone else it would let them purge that organization's history)
            field = f"events[{i}].action"
            if e.action.split(".", 1)[0] != name and not any(v.field == field for v in errs.violations):
                errs.add(field, f"must start with {name + '.'!r}: a service records only its own actions")
        errs.raise_if_any()
        result = await self.audit.ingest(batch)
        return pb.IngestEventsResponse(accepted_count=result.accepted, duplicate_count=result.duplicates)

    # ---- reading --------------------------------------------------------------
    async def ListEvents(self, request, context):
        errs = ErrorCollector()  # every bad field at once
        size = _collect(errs, lambda: page_size(request.page_size, default=50, maximum=1000))
        position = _collect(errs, lambda: decode_token(request.page_token))
        principal, scope = await self._scope(request.filter, errs)
        fingerprint = _fingerprint(request.filter)
        after = None
        if position is not None:
            if position.get("f") != fingerprint or not isinstance(position.get("t"), int):
                raise errors.InvalidArgument.field("page_token", "belongs to another filter")
            after = (position["t"], str(position.get("i", "")))
        if scope.cross_organization:
            # every page: a page token is the client's to make, so "only the first page" let a
            # made-up second page read across organizations unrecorded
            await self._audit_read(principal, "ListEvents", describe(scope.filter))
        found = await self.audit.store.list(scope.filter, size + 1, after)
        page = found[:size]
        token = ""
        if len(found) > size:
            token = encode_token({"t": page[-1].occur_us, "i": page[-1].id, "f": fingerprint})
        return pb.ListEventsResponse(events=[event_to_pb(e) for e in page], next_page_token=token)

    async def GetEvent(self, request, context):
        if not request.event_id:
            raise errors.InvalidArgument.field("event_id", "is required")
        principal = require_principal()
        event = await self.audit.store.get(request.event_id)
        if await self.access.for_event(principal, event, request.event_id):
            await self._audit_read(
                principal, "GetEvent", {"event_id": event.id, "organization_id": event.organization_id}
            )
        return pb.GetEventResponse(event=event_to_pb(event))

    async def ExportEvents(self, request, context):
        principal, scope = await self._scope(request.filter)
        if scope.cross_organization:
            await self._audit_read(principal, "ExportEvents", describe(scope.filter))
        async for page in self.audit.store.stream(scope.filter, EXPORT_PAGE):
            yield pb.ExportEventsResponse(events=[event_to_pb(e) for e in page])

    # ---- integrity ------------------------------------------------------------
    async def GetCheckpoint(self, request, context):
        principal = require_principal()
        org = request.organization_id
        if await self.access.for_chain(principal, org):
            await self._audit_read(principal, "GetCheckpoint", {"organization_id": org})
        cp = await self.audit.checkpoint(org)
        return pb.GetCheckpointResponse(
            checkpoint=epb.Checkpoint(
                organization_id=cp.organization_id,
                sequence=cp.sequence,
                head_hash=cp.head_hash,
                signature=cp.signature,
                key_id=cp.key_id,
                create_time=from_us(cp.create_us),
            ),
            public_key=self.audit.signer.public_raw,
        )

    async def VerifyChain(self, request, context):
        principal = require_principal()
        org = request.organization_id
        if await self.access.for_chain(principal, org):
            await self._audit_read(principal, "VerifyChain", {"organization_id": org})
        checkpoint = None
        if request.HasField("checkpoint"):
            c = request.checkpoint
            checkpoint = SignedCheckpoint(
                c.organization_id, c.sequence, c.head_hash, c.signature, c.key_id, 0
            )
        verdict = await self.audit.verify(org, request.from_sequence, request.to_sequence, checkpoint)
        return pb.VerifyChainResponse(
            ok=verdict.ok,
            checked_count=verdict.checked,
            failed_sequence=verdict.failed_sequence,
            failed_event_id=verdict.failed_event_id,
            failure=pb.ChainFailure.Value(f"CHAIN_FAILURE_{verdict.failure}") if verdict.failure else 0,
            message=verdict.message,
        )
