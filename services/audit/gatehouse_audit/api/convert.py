"""Proto <-> domain converters of the audit API (with ingest validation)."""

from __future__ import annotations

import json

from google.protobuf import struct_pb2, timestamp_pb2

from gatehouse.audit.v1 import audit_event_pb2 as epb
from gatehouse.kit.errors import ErrorCollector
from gatehouse_audit.domain.chain import canonical_details
from gatehouse_audit.domain.model import ACTOR_TYPES, Event, EventFilter

# (field path, max length, required) of the string fields of an ingested event
_STRINGS = [
    ("id", 64, True),
    ("service", 64, True),
    ("action", 200, True),
    ("actor.id", 128, False),
    ("actor.display", 500, False),
    ("organization_id", 64, False),
    ("workspace_id", 64, False),
    ("target.type", 64, False),
    ("target.id", 200, False),
    ("reason", 1000, False),
    ("request_id", 200, False),
    ("trace_id", 64, False),
    ("source_address", 200, False),
    ("user_agent", 500, False),
]
MAX_DETAILS = 256_000
OWN_SERVICE, OWN_PREFIX = "audit", "audit."
_OUTCOMES = {epb.OUTCOME_SUCCESS: "SUCCESS", epb.OUTCOME_DENIED: "DENIED", epb.OUTCOME_FAILURE: "FAILURE"}


def _value(v: struct_pb2.Value):
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        return v.number_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return _struct(v.struct_value)
    if kind == "list_value":
        return [_value(item) for item in v.list_value.values]
    return None


def _struct(s: struct_pb2.Struct) -> dict:
    """A Struct as plain Python (what json_format.MessageToDict gives, several times faster)."""
    return {key: _value(value) for key, value in s.fields.items()}


def to_us(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def from_us(us: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def outcome_name(value: int) -> str:
    return epb.Outcome.Name(value).removeprefix("OUTCOME_") if value else ""


def event_from_pb(e: epb.AuditEvent, where: str, errs: ErrorCollector) -> Event:
    """A domain event from an ingested message; every bad field goes to ``errs``."""
    actor, target = e.actor, e.target
    v = {  # every field read once (message attribute access is the cost here)
        "id": e.id,
        "service": e.service,
        "action": e.action,
        "actor.id": actor.id,
        "actor.display": actor.display,
        "organization_id": e.organization_id,
        "workspace_id": e.workspace_id,
        "target.type": target.type,
        "target.id": target.id,
        "reason": e.reason,
        "request_id": e.request_id,
        "trace_id": e.trace_id,
        "source_address": e.source_address,
        "user_agent": e.user_agent,
    }
    for name, limit, required in _STRINGS:
        value = v[name]
        if required and not value:
            errs.add(f"{where}.{name}", "is required")
        elif len(value) > limit:
            errs.add(f"{where}.{name}", f"must be at most {limit} characters")
    action, actor_type, outcome = v["action"], actor.type, e.outcome
    if action and "." not in action:
        errs.add(f"{where}.action", "must be dotted, e.g. tenancy.workspace.delete")
    if action.startswith(OWN_PREFIX) or v["service"] == OWN_SERVICE:
        # purges and audited reads are written by audit itself; nobody may forge them
        errs.add(
            f"{where}.action" if action.startswith(OWN_PREFIX) else f"{where}.service",
            "is reserved for audit",
        )
    occur = e.occur_time
    seconds, nanos = occur.seconds, occur.nanos
    if seconds <= 0 and nanos <= 0:
        errs.add(f"{where}.occur_time", "is required")
    if actor_type not in ACTOR_TYPES:
        errs.add(f"{where}.actor.type", f"must be one of {', '.join(ACTOR_TYPES)}")
    if outcome not in _OUTCOMES:
        errs.add(f"{where}.outcome", "must be SUCCESS, DENIED or FAILURE")
    details = canonical_details(_struct(e.details)) if e.HasField("details") else "{}"
    if len(details) > MAX_DETAILS:
        errs.add(f"{where}.details", f"must be at most {MAX_DETAILS} characters as JSON")
    return Event(
        id=v["id"],
        occur_us=seconds * 1_000_000 + nanos // 1000,
        service=v["service"],
        action=action,
        actor_type=actor_type,
        actor_id=v["actor.id"],
        actor_display=v["actor.display"],
        organization_id=v["organization_id"],
        workspace_id=v["workspace_id"],
        target_type=v["target.type"],
        target_id=v["target.id"],
        outcome=_OUTCOMES.get(outcome, ""),
        reason=v["reason"],
        request_id=v["request_id"],
        trace_id=v["trace_id"],
        source_address=v["source_address"],
        user_agent=v["user_agent"],
        details=details,
    )


def event_to_pb(e: Event) -> epb.AuditEvent:
    message = epb.AuditEvent(
        id=e.id,
        occur_time=from_us(e.occur_us),
        service=e.service,
        action=e.action,
        actor=epb.Actor(type=e.actor_type, id=e.actor_id, display=e.actor_display),
        organization_id=e.organization_id,
        workspace_id=e.workspace_id,
        target=epb.Target(type=e.target_type, id=e.target_id),
        outcome=epb.Outcome.Value(f"OUTCOME_{e.outcome}"),
        reason=e.reason,
        request_id=e.request_id,
        trace_id=e.trace_id,
        source_address=e.source_address,
        user_agent=e.user_agent,
        sequence=e.sequence,
        hash=e.hash,
        ingest_time=from_us(e.ingest_us),
    )
    if e.details != "{}":
        message.details.update(json.loads(e.details))
    return message


def filter_from_pb(f, errs: ErrorCollector) -> EventFilter:
    """The caller's filter (organization scope is decided by the access rules, not here)."""
    if f.outcome and f.outcome not in (epb.OUTCOME_SUCCESS, epb.OUTCOME_DENIED, epb.OUTCOME_FAILURE):
        errs.add("filter.outcome", "is not a known outcome")
    start = to_us(f.start_time) if f.HasField("start_time") else None
    end = to_us(f.end_time) if f.HasField("end_time") else None
    if start is not None and end is not None and end <= start:
        errs.add("filter.end_time", "must be after start_time")
    return EventFilter(
        organization_ids=(f.organization_id,) if f.organization_id else None,
        workspace_id=f.workspace_id,
        actor_id=f.actor_id,
        action_prefix=f.action_prefix,
        outcome=outcome_name(f.outcome) if f.outcome in epb.Outcome.values() else "",
        start_us=start,
        end_us=end,
    )
