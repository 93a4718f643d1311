"""Per-request context shared by interceptors and handlers (contextvars)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

SERVICE_NAME_CLAIM = "svc"  # service tokens: the service account's name (what it records audit events as)


@dataclass(frozen=True)
class Principal:
    """The verified caller of an RPC, from its bearer token.

    ``kind`` is ``user`` or ``service`` (a service account); ``amr`` lists the
    authentication methods of the session (``pwd``, ``otp``).
    """

    kind: str
    id: str
    session_id: str | None = None
    amr: tuple[str, ...] = ()
    token_id: str | None = None
    expires_at: float | None = None
    claims: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def subject(self) -> str:
        """The authz subject string, e.g. ``user:01J...`` or ``service:01J...``."""
        return f"{self.kind}:{self.id}"

    @property
    def is_service(self) -> bool:
        return self.kind == "service"

    @property
    def service_name(self) -> str | None:
        """A service account's name, from its token (identity signs it in); None for users."""
        name = self.claims.get(SERVICE_NAME_CLAIM) if self.is_service else None
        return name if isinstance(name, str) and name else None


request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gatehouse_request_id", default=None
)
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "gatehouse_principal", default=None
)
bearer_token_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gatehouse_bearer_token", default=None
)


@dataclass(frozen=True)
class ClientInfo:
    """Where an end-user call came from, as the gateway forwarded it (empty for direct gRPC)."""

    address: str = ""
    user_agent: str = ""


# Metadata keys the HTTP gateway sets on the calls it forwards.
CLIENT_ADDRESS_KEY = "x-forwarded-for"
CLIENT_USER_AGENT_KEY = "x-gatehouse-user-agent"

NO_CLIENT_INFO = ClientInfo()
client_info_var: contextvars.ContextVar[ClientInfo | None] = contextvars.ContextVar(
    "gatehouse_client_info", default=None
)


def current_principal() -> Principal | None:
    return principal_var.get()


def current_request_id() -> str | None:
    return request_id_var.get()


def current_client_info() -> ClientInfo:
    return client_info_var.get() or NO_CLIENT_INFO
