"""Wiring of the identity service: configuration, database, keys, servicer, kit server.

Identity verifies tokens locally (its own keyring and revocations table) and
mints its own service token for authz and audit, so it never calls itself and
depends on no peer at start-up (authz and audit depend on identity for JWKS).
Background tasks: the revocation poller of its own verifier, the audit relay
and the authz relay (subject-state writes for DisableUser / EnableUser).
"""

from __future__ import annotations

import logging
import pathlib
import time
from dataclasses import dataclass

import grpc

from gatehouse.identity.v1 import identity_service_pb2_grpc
from gatehouse.kit.aio import periodic
from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.audit_log import audit_relay
from gatehouse.kit.config import ConfigError, Settings
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.server import ServiceSpec
from gatehouse_identity.adapters.authz import AuthzAccess, authz_relay, subject_state_message
from gatehouse_identity.adapters.keyring import Keyring, SecretBox, load_kek
from gatehouse_identity.adapters.local_auth import (
    local_revocation_poller,
    local_service_tokens,
    local_verifier,
)
from gatehouse_identity.adapters.provisioning import provision_service_accounts
from gatehouse_identity.adapters.store import Store
from gatehouse_identity.api.servicer import IdentityServicer
from gatehouse_identity.config import IdentityConfig
from gatehouse_identity.domain.service import IdentityService

log = logging.getLogger("gatehouse.identity")

SERVICE = "identity"
HOUSEKEEPING_INTERVAL = 600.0  # seconds between housekeeping runs
SERVICE_NAMES = ("gatehouse.identity.v1.IdentityService",)
PUBLIC_METHODS = frozenset(
    {
        "/gatehouse.identity.v1.IdentityService/Login",
        "/gatehouse.identity.v1.IdentityService/RefreshSession",
        "/gatehouse.identity.v1.IdentityService/Logout",
        "/gatehouse.identity.v1.IdentityService/GetJwks",
        "/gatehouse.identity.v1.IdentityService/IssueServiceToken",
        "/gatehouse.identity.v1.IdentityService/ResetPassword",
    }
)
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


@dataclass
class Identity:
    """Everything :func:`assemble` wired, for tests and tools that need more than the spec."""

    spec: ServiceSpec
    service: IdentityService
    store: Store
    keyring: Keyring
    database: Database


def assemble(settings: Settings, runtime: Runtime, config: IdentityConfig | None = None) -> Identity:
    config = config or IdentityConfig.from_env()
    try:
        kek = load_kek(config.kek, settings.data_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"GATEHOUSE_IDENTITY_KEK: {exc}") from None
    db = Database(settings.database_url)
    store = Store(db)
    keyring = Keyring(
        db,
        kek,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        refresh_interval=config.key_refresh_interval,
        activation_delay=config.key_activation_delay,
    )
    relays = []
    # ``service`` is assigned below; the token source only needs it when first called.
    tokens = local_service_tokens(lambda: service, store)
    access = AuthzAccess(runtime.channel("authz"), timeout=settings.authz_timeout, token_source=tokens)
    authz_out = authz_relay(db, runtime.channel("authz"), tokens)
    relays.append(authz_out)
    service = IdentityService(
        store,
        keyring,
        SecretBox(kek),
        access,
        config,
        subject_state_message=subject_state_message,
        on_outbox=authz_out.wake,
    )
    relays.append(audit_relay(db, runtime.channel("audit"), tokens))
    poller = local_revocation_poller(store, interval=config.revocation_poll_interval)
    verifier = local_verifier(keyring, poller, issuer=settings.token_issuer, audience=settings.token_audience)
    servicer = IdentityServicer(service)

    def register(server: grpc.aio.Server) -> None:
        identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(servicer, server)

    async def provision() -> None:
        if config.provision_service_accounts:
            await provision_service_accounts(service, settings.data_dir)

    async def housekeeping() -> None:
        """Drop expired revocations, throttles, tokens; delivered outbox entries after 7 days."""
        async with store.transaction() as tx:
            await tx.purge_expired(time.time(), throttle_window=config.lockout_window)
            await tx.commit()
        await relays[0].purge_delivered()

    spec = ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[
            migrate_on_start(MIGRATIONS, settings.database_url),
            keyring.load,
            provision,
            poller.poll_once,
        ],
        background=[
            poller.run,
            periodic(housekeeping, HOUSEKEEPING_INTERVAL, what="identity housekeeping", logger=log),
            *(relay.run for relay in relays),
        ],
        on_stop=[poller.stop, db.dispose],
        depends_on=(),  # never "authz": authz needs identity's JWKS to start
        verifier=verifier.verify,
    )
    return Identity(spec, service, store, keyring, db)


def build(settings: Settings, runtime: Runtime) -> ServiceSpec:
    return assemble(settings, runtime).spec


def main() -> None:
    run_service(SERVICE, build)
