"""Tenancy entities and the rules that need no I/O (no grpc, no sqlalchemy)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

from gatehouse.kit import errors

ACTIVE, DELETED = "ACTIVE", "DELETED"
# Roles, lowest first (the authz catalog's role names).
ORG_ROLES = ("viewer", "member", "admin", "owner")
WORKSPACE_ROLES = ("viewer", "member", "admin", "owner")
ASSIGNABLE_ROLES = ("viewer", "member", "admin")  # never owner: owner changes only by transfer
# Membership status (authz MembershipStatus names).
INVITED, MEMBER_ACTIVE, INACTIVE = "INVITED", "ACTIVE", "INACTIVE"
# Invitation states.
PENDING, ACCEPTED, EXPIRED, REVOKED = "PENDING", "ACCEPTED", "EXPIRED", "REVOKED"

DEFAULT_INVITATION_TTL = 7 * 86400
DEFAULT_RETENTION_DAYS = 30
DEFAULT_AUDIT_RETENTION_DAYS = 365
MAX_INVITATION_TTL = 90 * 86400

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])$")
RESERVED_SLUGS = frozenset(
    {
        "admin",
        "api",
        "www",
        "system",
        "root",
        "platform",
        "gatehouse",
        "login",
        "logout",
        "auth",
        "oauth",
        "setup",
        "static",
        "assets",
        "help",
        "support",
        "status",
        "internal",
        "default",
        "null",
        "undefined",
        "me",
    }
)
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class OrgSettings:
    require_mfa: bool = False
    invitation_ttl_seconds: int = DEFAULT_INVITATION_TTL
    deletion_retention_days: int = DEFAULT_RETENTION_DAYS
    audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS


class Versioned:
    """Etag, soft-delete state and the life-cycle steps shared by organizations, workspaces and groups
    (dataclasses with ``version``, ``update_time`` and — for soft delete — ``state``, ``delete_time``, ``purge_time``)."""

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def deleted(self) -> bool:
        return self.state == DELETED

    def check_etag(self, etag: str, kind: str) -> None:
        """ABORTED (ETAG_MISMATCH) when a given etag is stale."""
        if etag and etag != self.etag:
            raise errors.Aborted(f"the {kind} changed since it was read", reason="ETAG_MISMATCH")

    def touch(self, now: float) -> None:
        self.version += 1
        self.update_time = now

    def soft_delete(self, now: float, retention_days: int) -> None:
        self.state, self.delete_time, self.purge_time = DELETED, now, now + retention_days * 86400
        self.version += 1

    def restore(self, now: float) -> None:
        if self.purge_time is not None and now >= self.purge_time:
            raise errors.FailedPrecondition("the retention period is over", reason="RETENTION_EXPIRED")
        self.state, self.delete_time, self.purge_time = ACTIVE, None, None
        self.touch(now)


@dataclass
class Organization(Versioned):
    id: str
    name: str
    slug: str
    state: str
    owner_user_id: str
    settings: OrgSettings
    create_time: float
    update_time: float
    delete_time: float | None = None
    purge_time: float | None = None
    version: int = 1


@dataclass
class OrgMember:
    organization_id: str
    user_id: str
    role: str
    status: str
    create_time: float
    email: str = ""
    display_name: str = ""


@dataclass
class Workspace(Versioned):
    id: str
    organization_id: str
    name: str
    description: str
    state: str
    owner_user_id: str
    create_time: float
    update_time: float
    delete_time: float | None = None
    purge_time: float | None = None
    version: int = 1


@dataclass
class WorkspaceMember:
    workspace_id: str
    principal_type: str  # user or group
    principal_id: str
    role: str
    display_name: str = ""

    @property
    def member_id(self) -> str:
        return f"{self.principal_type}:{self.principal_id}"


@dataclass
class Group(Versioned):
    id: str
    organization_id: str
    name: str
    description: str
    create_time: float
    update_time: float
    version: int = 1
    member_count: int = 0


@dataclass
class GroupMember:
    group_id: str
    user_id: str
    email: str = ""
    display_name: str = ""


@dataclass
class Invitation:
    id: str
    organization_id: str
    email: str
    role: str
    workspace_roles: list[tuple[str, str]]
    state: str
    token_hash: str
    expire_time: float
    create_time: float
    inviter_user_id: str
    accepted_user_id: str | None = None

    def state_at(self, now: float) -> str:
        if self.state == PENDING and now >= self.expire_time:
            return EXPIRED
        return self.state


@dataclass
class Page:
    items: list = field(default_factory=list)
    next_page_token: str = ""

    @classmethod
    def of(cls, rows: list, size: int, position) -> Page:
        """The first ``size`` of ``rows`` (fetched ``size + 1``) and a token after the last, if more exist."""
        from gatehouse.kit.pagination import encode_token

        more = len(rows) > size
        rows = rows[:size]
        return cls(rows, encode_token(position(rows[-1])) if more and rows else "")


# ---- rules ---------------------------------------------------------------
def normalize_name(value: str) -> str:
    return " ".join(value.split())


def name_key(value: str) -> str:
    return normalize_name(value).casefold()


def check_name(errs: errors.ErrorCollector, field_name: str, value: str) -> None:
    name = normalize_name(value)
    errs.require(bool(name), field_name, "is required")
    errs.require(len(name) <= 200, field_name, "must be at most 200 characters")


def check_slug(errs: errors.ErrorCollector, field_name: str, slug: str) -> None:
    if not SLUG.match(slug or ""):
        errs.add(
            field_name,
            "must be 3-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
        )
    elif slug in RESERVED_SLUGS:
        errs.add(field_name, f"{slug!r} is reserved")


def check_email(errs: errors.ErrorCollector, field_name: str, email: str) -> str:
    email = (email or "").strip().lower()
    errs.require(bool(EMAIL.match(email)) and len(email) <= 320, field_name, "must be an email address")
    return email


def check_assignable_role(errs: errors.ErrorCollector, field_name: str, role: str | None) -> None:
    if role == "owner":
        errs.add(field_name, "owner is given only by transfer of ownership")
    elif role not in ASSIGNABLE_ROLES:
        errs.add(field_name, "must be viewer, member or admin")


def require_id(errs: errors.ErrorCollector, field_name: str, value: str) -> None:
    errs.require(bool(value), field_name, "is required")


def check_name_description_update(kind: str, values: dict, mask: list[str]) -> None:
    """Validate an update of ``name``/``description`` (the only fields workspaces and groups change)."""
    if not mask:
        raise errors.InvalidArgument.field("update_mask", "name the fields to change")
    bad = [f for f in mask if f not in ("name", "description")]
    if bad:
        raise errors.InvalidArgument.field("update_mask", f"cannot update {', '.join(bad)}")
    errs = errors.ErrorCollector()
    if "name" in mask:
        check_name(errs, f"{kind}.name", values.get("name", ""))
    if "description" in mask:
        errs.require(
            len(values.get("description", "")) <= 2000,
            f"{kind}.description",
            "must be at most 2,000 characters",
        )
    errs.raise_if_any()


def apply_name_description(entity, values: dict, mask: list[str]) -> dict:
    """Set the masked fields; returns the audit details ``{field: {old, new}}``."""
    changes = {}
    if "name" in mask:
        name = normalize_name(values["name"])
        changes["name"] = {"old": entity.name, "new": name}
        entity.name = name
    if "description" in mask:
        changes["description"] = {"old": entity.description, "new": values.get("description", "")}
        entity.description = values.get("description", "")
    return changes


def new_invitation_token() -> tuple[str, str]:
    """A fresh single-use token and its hash (only the hash is stored)."""
    token = "inv_" + secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_member_id(value: str) -> tuple[str, str]:
    kind, sep, ident = (value or "").partition(":")
    if not sep or kind not in ("user", "group") or not ident:
        raise errors.InvalidArgument.field("member_id", "must be user:<id> or group:<id>")
    return kind, ident
