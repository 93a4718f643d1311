"""Authz domain values: relationship tuples and state changes (no grpc, no sqlalchemy)."""

from __future__ import annotations

from dataclasses import dataclass

Ref = tuple[str, str]  # (type, id)

# Membership statuses
INVITED, ACTIVE, INACTIVE = "INVITED", "ACTIVE", "INACTIVE"

# Decision reasons (names of gatehouse.authz.v1.DecisionReason without prefix)
ROLE = "ROLE"
GROUP_ROLE = "GROUP_ROLE"
INHERITED_ROLE = "INHERITED_ROLE"
DIRECT_GRANT = "DIRECT_GRANT"
GROUP_GRANT = "GROUP_GRANT"
ORGANIZATION_GRANT = "ORGANIZATION_GRANT"
PLATFORM_ROLE = "PLATFORM_ROLE"
NO_RELATIONSHIP = "NO_RELATIONSHIP"
SUBJECT_DISABLED = "SUBJECT_DISABLED"
MEMBERSHIP_INACTIVE = "MEMBERSHIP_INACTIVE"
RESOURCE_DELETED = "RESOURCE_DELETED"
MFA_REQUIRED = "MFA_REQUIRED"

REASON_ORDER = (ROLE, GROUP_ROLE, INHERITED_ROLE, PLATFORM_ROLE)
SUBJECT_TYPES = ("user", "group", "organization", "service")


@dataclass(frozen=True, order=True)
class Tuple:
    """``resource#relation@subject`` (``capability`` set only for relation ``grant``)."""

    resource_type: str
    resource_id: str
    relation: str
    subject_type: str
    subject_id: str
    capability: str = ""

    @property
    def resource(self) -> Ref:
        return (self.resource_type, self.resource_id)

    @property
    def subject(self) -> Ref:
        return (self.subject_type, self.subject_id)

    def text(self) -> str:
        rel = f"grant:{self.capability}" if self.relation == "grant" else self.relation
        return f"{self.resource_type}:{self.resource_id}#{rel}@{self.subject_type}:{self.subject_id}"


@dataclass(frozen=True)
class State:
    """A state fact: kind is ``disabled`` (key ``user:u``), ``membership`` (key ``org|user``,
    value status), ``deleted`` (key ``type:id``) or ``require_mfa`` (key: the organization id)."""

    kind: str
    key: str
    value: str = "1"


@dataclass(frozen=True)
class Change:
    """One applied change: op ``put`` or ``delete`` of a Tuple or State."""

    op: str
    item: Tuple | State


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One step of an explanation: what holds, the relationship behind it (text form), the reason."""

    description: str
    relationship: str
    reason: str


@dataclass(frozen=True)
class Access:
    member_role: str
    is_platform_admin: bool
    effective_role: str
    capabilities: tuple[str, ...]
