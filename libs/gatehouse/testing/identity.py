"""A REAL identity server in-process, for the tests of every service that needs users or tokens.

Usage (pytest-asyncio, any test or fixture)::

    from gatehouse.testing.identity import running_identity

    async def test_something(tmp_path, database_url):
        async with running_identity(tmp_path, with_authz=True) as identity:
            token = await identity.service_token("tenancy")          # a real service token
            user_id = await identity.create_user("ann@example.com")  # returns the id
            access = await identity.login("ann@example.com")         # a real access token
            await identity.make_platform_admin(user_id)              # needs with_authz=True
            # settings for YOUR service, pointing at this identity (and authz), with
            # service credentials written into your data dir:
            settings = await identity.peer_settings(tmp_path / "tenancy", "tenancy",
                                                    database_url=database_url)
            server = build_server(settings, gatehouse_tenancy.server.build)

What it runs: identity through ``gatehouse.kit.app.build_server`` on
127.0.0.1:0 with its own data directory (``tmp_path/identity``) and database
(``database_url`` argument, default a SQLite file there), cheap argon2id
parameters (:meth:`IdentityConfig.for_tests`), service accounts provisioned for
every name in ``PROVISIONED_SERVICES``. With ``with_authz=True`` a real authz
server starts too (its own SQLite file, verifying identity's tokens through
JWKS and revocations exactly as in production), and identity's platform-admin
checks go to it. Without authz, identity's authz address points at a closed
port, so platform-admin-only RPCs answer UNAVAILABLE (fail closed); audit is
never started, so identity's audit relay just keeps retrying in the background.

Every user created here has the password :data:`DEFAULT_PASSWORD` unless one
is given. The harness API (``service_token``, ``service_metadata``,
``create_user``, ``login``, ``login_response``, ``user_token``,
``credentials_for``, ``write_credentials``, ``peer_settings``,
``make_platform_admin``, ``stub``, ``address``) is kept stable.
"""

from __future__ import annotations

import contextlib
import pathlib
import uuid
from collections.abc import AsyncIterator

import grpc

from gatehouse.kit.app import build_server
from gatehouse.kit.config import Settings
from gatehouse.kit.service_auth import ServiceCredentials, load_credentials, write_credentials
from gatehouse.testing.servers import settings_for
from gatehouse.testing.stack import free_port

DEFAULT_PASSWORD = "Tall-Lantern-Quietly-42"

__all__ = ["DEFAULT_PASSWORD", "IdentityHarness", "running_identity"]


def _addr(port: int) -> str:
    return f"127.0.0.1:{port}"


class IdentityHarness:
    """Handle on the running identity (and authz, when started)."""

    def __init__(self, identity, server, data_dir: pathlib.Path, authz_address: str, audit_address: str):
        from gatehouse.identity.v1 import identity_service_pb2_grpc

        self.identity = identity  # gatehouse_identity.server.Identity (service, store, keyring, database)
        self.server = server
        self.data_dir = data_dir
        self.address = _addr(server.port)
        self.authz_address = authz_address
        self.audit_address = audit_address
        self.authz_server = None
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = identity_service_pb2_grpc.IdentityServiceStub(self.channel)
        self._tokens: dict[str, str] = {}

    # ---- service accounts ---------------------------------------------------------
    async def credentials_for(self, service: str) -> ServiceCredentials:
        """Credentials of the service account ``service`` (created if it does not exist yet)."""
        existing = load_credentials(self.data_dir, service, environ={})
        client_id, secret = (existing.client_id, existing.client_secret) if existing else ("", "")
        created = await self.identity.service.ensure_service_account(service, client_id, secret)
        if created is not None:
            existing = ServiceCredentials(created.account.client_id, created.secret)
            write_credentials(self.data_dir, service, existing)
        return existing

    async def write_credentials(self, data_dir: pathlib.Path, service: str) -> pathlib.Path:
        """Write ``data_dir/credentials/<service>.json`` for a service process started elsewhere."""
        return write_credentials(data_dir, service, await self.credentials_for(service))

    async def service_token(self, service: str = "tenancy") -> str:
        """A real service access token (``IssueServiceToken``) for the account ``service``."""
        from gatehouse.identity.v1 import identity_service_pb2 as pb

        creds = await self.credentials_for(service)
        answer = await self.stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(client_id=creds.client_id, client_secret=creds.client_secret)
        )
        return answer.access_token

    async def service_metadata(self, service: str = "tenancy") -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {await self.service_token(service)}")]

    # ---- users -------------------------------------------------------------------------
    async def create_user(
        self, email: str | None = None, password: str = DEFAULT_PASSWORD, display_name: str | None = None
    ) -> str:
        """Create a user through ``CreateUser`` (as the ``tenancy`` service account); returns the id."""
        from gatehouse.identity.v1 import identity_service_pb2 as pb

        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        answer = await self.stub.CreateUser(
            pb.CreateUserRequest(
                email=email, display_name=display_name or email.split("@")[0], password=password
            ),
            metadata=await self.service_metadata("tenancy"),
        )
        return answer.user.id

    async def login_response(self, email: str, password: str = DEFAULT_PASSWORD, totp_code: str = ""):
        from gatehouse.identity.v1 import identity_service_pb2 as pb

        return await self.stub.Login(pb.LoginRequest(email=email, password=password, totp_code=totp_code))

    async def login(self, email: str, password: str = DEFAULT_PASSWORD, totp_code: str = "") -> str:
        """Log in; returns the access token."""
        return (await self.login_response(email, password, totp_code)).access_token

    async def user_token(self, email: str | None = None) -> tuple[str, str]:
        """Create a user and log in: ``(user_id, access_token)``."""
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        user_id = await self.create_user(email)
        return user_id, await self.login(email)

    # ---- authz -------------------------------------------------------------------------
    async def make_platform_admin(self, user_id: str) -> int:
        """Write ``platform:platform#platform_admin@user:<id>`` to authz; returns the revision."""
        if self.authz_server is None:
            raise RuntimeError("start with running_identity(..., with_authz=True)")
        from gatehouse.authz.v1 import authz_service_pb2, authz_service_pb2_grpc, relationship_pb2
        from gatehouse.type.v1 import refs_pb2

        update = relationship_pb2.RelationshipUpdate(
            operation=relationship_pb2.RelationshipUpdate.OPERATION_TOUCH,
            relationship=relationship_pb2.Relationship(
                resource=refs_pb2.ResourceRef(type="platform", id="platform"),
                relation="platform_admin",
                subject=refs_pb2.SubjectRef(type="user", id=user_id),
            ),
        )
        async with grpc.aio.insecure_channel(self.authz_address) as channel:
            answer = await authz_service_pb2_grpc.AuthzServiceStub(channel).WriteRelationships(
                authz_service_pb2.WriteRelationshipsRequest(updates=[update]),
                metadata=await self.service_metadata("tenancy"),
            )
        return answer.revision

    # ---- other services ---------------------------------------------------------------
    async def peer_settings(self, data_dir: pathlib.Path, service: str, **extra: str) -> Settings:
        """Settings for another service on 127.0.0.1:0 that uses this identity (and authz).

        Writes that service's credentials into ``data_dir`` so its token verifier
        can poll revocations and its calls can carry a service token.
        """
        data_dir = pathlib.Path(data_dir)
        await self.write_credentials(data_dir, service)
        values = {
            "identity_address": self.address,
            "authz_address": self.authz_address,
            "audit_address": self.audit_address,
        }
        values.update(extra)
        return settings_for(data_dir, service=service, **values)

    async def close(self) -> None:
        await self.channel.close()
        if self.authz_server is not None:
            await self.authz_server.stop(0)
        await self.server.stop(0)


@contextlib.asynccontextmanager
async def running_identity(
    tmp_path: pathlib.Path,
    database_url: str | None = None,
    *,
    with_authz: bool = False,
    authz_database_url: str | None = None,
    config=None,
    **config_overrides,
) -> AsyncIterator[IdentityHarness]:
    """Start identity (and optionally authz) in-process; stop them on exit.

    ``config`` is an ``IdentityConfig``; ``config_overrides`` change fields of the
    test default (e.g. ``access_token_ttl=2``, ``lockout_duration=1``).
    """
    from gatehouse_identity.config import IdentityConfig
    from gatehouse_identity.server import assemble

    data_dir = pathlib.Path(tmp_path) / "identity"
    config = config or IdentityConfig.for_tests(**config_overrides)
    authz_address, audit_address = _addr(free_port()), _addr(free_port())
    # A generous authz deadline: shared CI machines are slow; fail-closed tests use a closed port.
    extra = {"authz_address": authz_address, "audit_address": audit_address, "authz_timeout": "5"}
    if database_url:
        extra["database_url"] = database_url
    settings = settings_for(data_dir, service="identity", **extra)
    wired = []

    def builder(settings, runtime):
        wired.append(assemble(settings, runtime, config))
        return wired[0].spec

    server = build_server(settings, builder)
    await server.start()
    harness = None
    try:
        await server.wait_started()
        harness = IdentityHarness(wired[0], server, data_dir, authz_address, audit_address)
        if with_authz:
            from gatehouse_authz.server import build as build_authz

            authz_settings = settings_for(
                data_dir,
                service="authz",
                listen_address=authz_address,
                identity_address=harness.address,
                authz_address=authz_address,
                audit_address=audit_address,
                database_url=authz_database_url or f"sqlite+aiosqlite:///{data_dir / 'authz.db'}",
            )
            harness.authz_server = build_server(authz_settings, build_authz)
            await harness.authz_server.start()
            await harness.authz_server.wait_started()
        yield harness
    finally:
        if harness is not None:
            await harness.close()
        else:
            await server.stop(0)
