"""Audit events from every producer: written to the local outbox, relayed to audit.

A use case calls :func:`record` inside its unit of work, in the *same
transaction* as the change it reports, so the event exists exactly when the
change does. The event carries the request id, the trace id and (for calls
through the gateway) the client's address and user agent from the request
context. :func:`audit_relay` builds the :class:`~gatehouse.kit.outbox.OutboxRelay`
that delivers pending events in batches to ``AuditService/IngestEvents``, which
is idempotent by event id — so a redelivery never stores an event twice, and
audit being down only delays events.

Details never carry secrets: values under keys that look like secrets
(``password``, ``secret``, ``token``, ``hash``, ``code``) are replaced by
``"[redacted]"`` before the event is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from gatehouse.kit import outbox
from gatehouse.kit.context import Principal, current_client_info, current_principal, current_request_id
from gatehouse.kit.db import Database
from gatehouse.kit.ids import new_id

TOPIC = "audit"
OUTCOMES = ("SUCCESS", "DENIED", "FAILURE")
REDACTED = "[redacted]"
_SECRET_MARKERS = ("password", "secret", "token", "hash", "code", "credential")


@dataclass(frozen=True)
class Actor:
    """Who acted: ``user``, ``service`` or ``anonymous``, with a display kept as it was."""

    type: str
    id: str = ""
    display: str = ""

    @classmethod
    def of(cls, principal: Principal | None, display: str = "") -> Actor:
        if principal is None:
            return cls("anonymous", "", display)
        return cls(principal.kind, principal.id, display)


ANONYMOUS = Actor("anonymous")


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS) and not lowered.endswith("_id")


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value replaced."""
    if isinstance(value, Mapping):
        return {str(k): (REDACTED if _is_secret_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def build_event(
    *,
    service: str,
    action: str,
    actor: Actor | Principal | None = None,
    outcome: str = "SUCCESS",
    reason: str = "",
    organization_id: str = "",
    workspace_id: str = "",
    target: tuple[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    occur_time: dt.datetime | None = None,
):
    """An ``AuditEvent`` message filled from the arguments and the request context."""
    from gatehouse.audit.v1 import audit_event_pb2 as pb
    from gatehouse.kit.telemetry import current_trace_id

    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    if actor is None:
        actor = Actor.of(current_principal())
    elif isinstance(actor, Principal):
        actor = Actor.of(actor)
    when = timestamp_pb2.Timestamp()
    if occur_time is None:
        when.GetCurrentTime()
    else:
        when.FromDatetime(occur_time.astimezone(dt.UTC))
    client = current_client_info()
    event = pb.AuditEvent(
        id=event_id or new_id(),
        occur_time=when,
        service=service,
        action=action,
        actor=pb.Actor(type=actor.type, id=actor.id, display=actor.display),
        organization_id=organization_id,
        workspace_id=workspace_id,
        outcome=pb.Outcome.Value(f"OUTCOME_{outcome}"),
        reason=reason,
        request_id=current_request_id() or "",
        trace_id=current_trace_id() or "",
        source_address=client.address,
        user_agent=client.user_agent,
    )
    if target is not None:
        event.target.type, event.target.id = target
    if details:
        struct = struct_pb2.Struct()
        struct.update(redact(details))
        event.details.CopyFrom(struct)
    return event


async def record(session: AsyncSession, **fields: Any) -> str:
    """Write one audit event to the outbox in ``session``'s transaction; returns its id.

    Takes the keyword arguments of :func:`build_event` (``service`` and ``action``
    are required).
    """
    event = build_event(**fields)
    return await outbox.add(session, TOPIC, event.SerializeToString(), key=event.id)


def audit_relay(
    database: Database,
    channel: grpc.aio.Channel,
    token_source,
    *,
    timeout: float = 10.0,
    **relay_options: Any,
) -> outbox.OutboxRelay:
    """The relay that delivers this service's pending audit events to audit.

    ``token_source`` is an async callable returning the service's bearer token
    (see :mod:`gatehouse.kit.service_auth`).
    """
    from gatehouse.audit.v1 import audit_event_pb2, audit_service_pb2, audit_service_pb2_grpc

    stub = audit_service_pb2_grpc.AuditServiceStub(channel)

    async def deliver(entries: list[outbox.OutboxEntry]) -> None:
        events = [audit_event_pb2.AuditEvent.FromString(e.payload) for e in entries]
        token = await token_source()
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        await _send(events, metadata)

    async def _send(events: list, metadata) -> None:
        try:
            await stub.IngestEvents(
                audit_service_pb2.IngestEventsRequest(events=events), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            # One event audit rejects must not hold back the others of its batch: deliver the
            # halves (ingest is idempotent), then still fail so the batch stays pending and retried.
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or len(events) == 1:
                raise
            middle = len(events) // 2
            for half in (events[:middle], events[middle:]):
                try:
                    await _send(half, metadata)
                except grpc.aio.AioRpcError:
                    pass
            raise

    relay_options.setdefault("batch_size", 500)
    # A claim outlives one delivery attempt only briefly: if the process dies mid-delivery,
    # another relay (or this one after a restart) takes the entries over within seconds.
    relay_options.setdefault("lease", timeout + 5.0)
    return outbox.OutboxRelay(database, TOPIC, deliver, **relay_options)
