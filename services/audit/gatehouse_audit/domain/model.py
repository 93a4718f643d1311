"""Audit events as the domain sees them: plain data, no grpc, no sqlalchemy."""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("SUCCESS", "DENIED", "FAILURE")
ACTOR_TYPES = ("user", "service", "anonymous")
MAX_BATCH = 1000
PLATFORM = ""  # organization_id of the platform's own chain


@dataclass
class Event:
    """One audit event; the chain fields (sequence, prev_hash, hash, key_id) are set at ingest."""

    id: str
    occur_us: int
    service: str
    action: str
    actor_type: str
    actor_id: str = ""
    actor_display: str = ""
    organization_id: str = PLATFORM
    workspace_id: str = ""
    target_type: str = ""
    target_id: str = ""
    outcome: str = "SUCCESS"
    reason: str = ""
    request_id: str = ""
    trace_id: str = ""
    source_address: str = ""
    user_agent: str = ""
    details: str = "{}"  # canonical JSON text (sorted keys, compact); hashed as stored
    ingest_us: int = 0
    sequence: int = 0
    prev_hash: bytes = b""
    hash: bytes = b""
    key_id: str = ""


@dataclass(frozen=True)
class EventFilter:
    """What ListEvents/ExportEvents match; ``organization_ids`` None means every chain."""

    organization_ids: tuple[str, ...] | None = None
    workspace_id: str = ""
    actor_id: str = ""
    action_prefix: str = ""
    outcome: str = ""
    start_us: int | None = None
    end_us: int | None = None


@dataclass(frozen=True)
class ChainState:
    """The head row of one chain: the newest sequence/hash and the retention anchor."""

    organization_id: str
    head_sequence: int = 0
    head_hash: bytes = b""
    anchor_sequence: int = 0
    anchor_hash: bytes = b""
    anchor_mac: bytes = b""


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    accepted_ids: list[str] = field(default_factory=list)
