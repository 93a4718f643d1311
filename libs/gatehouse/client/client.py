"""``GatehouseClient``: typed stubs for every Gatehouse service over one set of channels.

::

    async with GatehouseClient.from_env() as gh:            # GATEHOUSE_<SERVICE>_ADDRESS
        await gh.login("ada@example.com", "correct horse")    # or credentials=ServiceAccountCredentials(...)
        orgs = await gh.organizations.ListOrganizations(tenancy_pb2.ListOrganizationsRequest())
        if (await gh.authz.check(f"user:{gh.user_id}", ("workspace", ws), "manage:members")).allowed: ...

Every call gets the client's bearer token (refreshed before it expires), a
deadline (``timeout``, overridable per call with ``timeout=``), retries with
exponential back-off and jitter when it is idempotent and the server answered
``UNAVAILABLE`` (:mod:`gatehouse.client.retry`), and a CLIENT span whose trace
context travels to the server (``traceparent``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc

from gatehouse.client.authz import AuthzClient
from gatehouse.client.channels import TokenSource, open_channel
from gatehouse.client.credentials import ServiceAccountCredentials, SessionCredentials
from gatehouse.client.retry import RetryInterceptor, RetryPolicy
from gatehouse.kit.config import DEFAULT_ADDRESSES, SERVICES

if TYPE_CHECKING:
    from gatehouse.audit.v1.audit_service_pb2_grpc import AuditServiceStub
    from gatehouse.authz.v1.authz_service_pb2_grpc import AuthzServiceStub
    from gatehouse.identity.v1.identity_service_pb2_grpc import IdentityServiceStub
    from gatehouse.tenancy.v1.group_service_pb2_grpc import GroupServiceStub
    from gatehouse.tenancy.v1.organization_service_pb2_grpc import OrganizationServiceStub
    from gatehouse.tenancy.v1.setup_service_pb2_grpc import SetupServiceStub
    from gatehouse.tenancy.v1.workspace_service_pb2_grpc import WorkspaceServiceStub


class GatehouseClient:
    """Stubs of identity, tenancy (setup, organizations, workspaces, groups), authz and audit."""

    def __init__(
        self,
        addresses: Mapping[str, str] | None = None,
        *,
        credentials: TokenSource | None = None,
        timeout: float | None = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        authz_timeout: float = 0.5,
        cache_ttl: float = 1.0,
        telemetry=None,
        channel_options=(),
    ):
        self.addresses = {svc: DEFAULT_ADDRESSES[svc] for svc in SERVICES}
        self.addresses.update(addresses or {})
        self.credentials = credentials
        self._timeout = timeout
        self._retry = retry
        self._telemetry = telemetry
        self._options = tuple(channel_options)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retriers: dict[str, RetryInterceptor] = {}
        self._authz_timeout = authz_timeout
        self._cache_ttl = cache_ttl
        self._authz: AuthzClient | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs) -> GatehouseClient:
        """Addresses from ``GATEHOUSE_<SERVICE>_ADDRESS`` (defaults as in README "Configuration")."""
        env = os.environ if environ is None else environ
        addresses = {
            svc: env.get(f"GATEHOUSE_{svc.upper()}_ADDRESS") or DEFAULT_ADDRESSES[svc] for svc in SERVICES
        }
        return cls(addresses, **kwargs)

    # ---- channels -------------------------------------------------------------
    def _open(self, key: str, address: str) -> grpc.aio.Channel:
        if key not in self._channels:
            self._channels[key], self._retriers[key] = open_channel(
                address,
                token_source=lambda: self.credentials,
                retry=self._retry,
                timeout=self._timeout,
                telemetry=self._telemetry,
                options=self._options,
            )
        return self._channels[key]

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to ``service`` (one per address, created on first use)."""
        address = self.addresses[service]
        return self._open(address, address)

    def backend_channel(self, address: str) -> grpc.aio.Channel:
        """A channel to another backend (e.g. one guarded with :class:`~gatehouse.client.Guard`) that
        carries this client's token, deadline, retries and trace context, like the Gatehouse channels."""
        return self._open(f"backend:{address}", address)

    @property
    def retries(self) -> int:
        """Retries made so far (all channels)."""
        return sum(r.retries for r in self._retriers.values())

    # ---- typed stubs ----------------------------------------------------------
    def _stub(self, service: str, module: str, name: str):
        import importlib

        return getattr(importlib.import_module(f"gatehouse.{module}_pb2_grpc"), name)(self.channel(service))

    @property
    def identity(self) -> IdentityServiceStub:
        """``gatehouse.identity.v1.IdentityService``."""
        return self._stub("identity", "identity.v1.identity_service", "IdentityServiceStub")

    @property
    def setup(self) -> SetupServiceStub:
        """``gatehouse.tenancy.v1.SetupService``."""
        return self._stub("tenancy", "tenancy.v1.setup_service", "SetupServiceStub")

    @property
    def organizations(self) -> OrganizationServiceStub:
        """``gatehouse.tenancy.v1.OrganizationService``."""
        return self._stub("tenancy", "tenancy.v1.organization_service", "OrganizationServiceStub")

    @property
    def workspaces(self) -> WorkspaceServiceStub:
        """``gatehouse.tenancy.v1.WorkspaceService``."""
        return self._stub("tenancy", "tenancy.v1.workspace_service", "WorkspaceServiceStub")

    @property
    def groups(self) -> GroupServiceStub:
        """``gatehouse.tenancy.v1.GroupService``."""
        return self._stub("tenancy", "tenancy.v1.group_service", "GroupServiceStub")

    @property
    def authz_stub(self) -> AuthzServiceStub:
        """``gatehouse.authz.v1.AuthzService`` (raw; see :attr:`authz` for the caching client)."""
        return self._stub("authz", "authz.v1.authz_service", "AuthzServiceStub")

    @property
    def audit(self) -> AuditServiceStub:
        """``gatehouse.audit.v1.AuditService``."""
        return self._stub("audit", "audit.v1.audit_service", "AuditServiceStub")

    @property
    def authz(self) -> AuthzClient:
        """The decision-caching, fail-closed authz client (shares the authz channel and token)."""
        if self._authz is None:

            async def token() -> str | None:
                return await self.credentials() if self.credentials is not None else None

            self._authz = AuthzClient(
                self.channel("authz"),
                token_source=token,
                timeout=self._authz_timeout,
                cache_ttl=self._cache_ttl,
            )
        return self._authz

    # ---- credentials ------------------------------------------------------------
    async def login(self, email: str, password: str, *, totp_code: str = "", refresh_margin: float = 60.0):
        """Log in as a user; later calls carry their access token, refreshed before it expires."""
        session = SessionCredentials(
            self.identity, email=email, password=password, totp_code=totp_code, refresh_margin=refresh_margin
        )
        answer = await session.login()
        self.credentials = session
        return answer

    def use_service_account(self, client_id: str, client_secret: str) -> None:
        """Authenticate as a service account (``IssueServiceToken``, refreshed before expiry)."""
        self.credentials = ServiceAccountCredentials(self.channel("identity"), client_id, client_secret)

    @property
    def user_id(self) -> str | None:
        user = getattr(self.credentials, "user", None)
        return user.id if user is not None else None

    async def logout(self) -> None:
        if isinstance(self.credentials, SessionCredentials):
            await self.credentials.logout()
        self.credentials = None

    # ---- life cycle -----------------------------------------------------------------
    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def __aenter__(self) -> GatehouseClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
