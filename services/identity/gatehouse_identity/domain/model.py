"""Identity's entities and constants (no grpc, no sqlalchemy)."""

from __future__ import annotations

from dataclasses import dataclass, field

ACTIVE = "ACTIVE"
DISABLED = "DISABLED"
SERVICE = "identity"

# Session revoke reasons.
LOGOUT = "logout"
REVOKED = "revoked"
REUSE = "refresh_token_reused"
PASSWORD_CHANGED = "password_changed"
PASSWORD_RESET = "password_reset"
USER_DISABLED = "user_disabled"


def normalize_email(email: str) -> str:
    """Emails are unique after trimming, compared case-insensitively."""
    return email.strip().lower()


@dataclass(frozen=True)
class User:
    id: str
    email: str
    display_name: str
    state: str
    mfa_enabled: bool
    version: int
    created_at: float
    updated_at: float
    password_hash: str = field(default="", repr=False, compare=False)

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    amr: tuple[str, ...]
    created_at: float
    expire_at: float
    last_refresh_at: float | None = None
    revoked_at: float | None = None
    revoke_reason: str | None = None
    source_address: str = ""
    user_agent: str = ""

    def live(self, now: float) -> bool:
        return self.revoked_at is None and self.expire_at > now


@dataclass(frozen=True)
class ServiceAccount:
    id: str
    name: str
    client_id: str
    created_at: float
    secret_hash: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class Revocation:
    sequence: int
    session_id: str
    user_id: str
    revoked_at: float
    expire_at: float


@dataclass(frozen=True)
class IssuedToken:
    """An access token with its expiry (epoch seconds)."""

    token: str
    expire_at: float


@dataclass(frozen=True)
class LoginResult:
    access: IssuedToken
    refresh_token: str
    session: Session
    user: User
