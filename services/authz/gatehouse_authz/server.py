"""Wiring of the authz service: configuration, database, servicers, kit server.

Checks are answered from the in-memory index (loaded at start, then following
the change log); writes go through the store and return a revision.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from dataclasses import dataclass

import grpc

from gatehouse.authz.v1 import authz_service_pb2_grpc
from gatehouse.kit import audit_log
from gatehouse.kit.aio import periodic
from gatehouse.kit.app import Runtime, run_service
from gatehouse.kit.config import ConfigError, Settings, positive_number
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import migrate_on_start
from gatehouse.kit.peers import identity_token_verifier
from gatehouse.kit.server import ServiceSpec
from gatehouse_authz.adapters.follower import Follower
from gatehouse_authz.adapters.store import Store
from gatehouse_authz.api.servicer import AuthzServicer
from gatehouse_authz.domain.catalog import CatalogError, load_catalog
from gatehouse_authz.domain.index import Index

SERVICE = "authz"
SERVICE_NAMES = ("gatehouse.authz.v1.AuthzService",)
PUBLIC_METHODS = frozenset()
MIGRATIONS = pathlib.Path(__file__).resolve().parent.parent / "migrations"


CATALOG_VARIABLE = "GATEHOUSE_AUTHZ_CATALOG"
CHANGELOG_RETENTION_VARIABLE = "GATEHOUSE_AUTHZ_CHANGELOG_RETENTION_HOURS"
REQUEST_ID_RETENTION_VARIABLE = "GATEHOUSE_AUTHZ_REQUEST_ID_RETENTION_HOURS"
PRUNE_INTERVAL_VARIABLE = "GATEHOUSE_AUTHZ_PRUNE_INTERVAL"

log = logging.getLogger("gatehouse.authz")


@dataclass(frozen=True)
class Retention:
    """How long authz keeps what only serves the recent past (see docs/authz.md, Retention).

    - ``changelog_hours``: change-log entries (what replicas follow and ``Watch`` streams); a
      replica further behind reloads a snapshot, a watcher gets ``REVISION_COMPACTED``.
    - ``request_id_hours``: idempotency keys of writes; a retry with the same ``request_id``
      later than this is applied again.
    - ``interval``: seconds between pruning runs (which also drop audit events delivered more
      than a week ago from the outbox).
    """

    changelog_hours: float = 168.0
    request_id_hours: float = 24.0
    interval: float = 3600.0

    @classmethod
    def from_env(cls, environ=os.environ) -> Retention:
        def number(var: str, default: float, unit: str) -> float:
            value = environ.get(var)
            return default if not value else positive_number(var, value, unit)

        return cls(
            changelog_hours=number(CHANGELOG_RETENTION_VARIABLE, cls.changelog_hours, "hours"),
            request_id_hours=number(REQUEST_ID_RETENTION_VARIABLE, cls.request_id_hours, "hours"),
            interval=number(PRUNE_INTERVAL_VARIABLE, cls.interval, "seconds"),
        )


def load_configured_catalog(environ=os.environ):
    """The catalog file from GATEHOUSE_AUTHZ_CATALOG (or the shipped default), validated."""
    path = environ.get(CATALOG_VARIABLE) or None
    try:
        return load_catalog(path)
    except CatalogError as exc:
        raise ConfigError(f"{CATALOG_VARIABLE}: {exc}") from None


class CachedVerifier:
    """Remembers verified tokens for ``ttl`` seconds (never past their expiry).

    Authz is asked on every request of every backend, mostly by the same few
    service accounts: verifying the same ES256 token again on each call cost more
    than the check itself (~130 µs). Keyed by the whole token (signature included),
    so nothing unverified is ever served; failures are not cached. A revoked session
    is refused at most ``ttl`` later than by an uncached verifier — of the order of
    the revocation poller's own 1 s interval.
    """

    def __init__(self, verify, *, ttl: float = 1.0, max_entries: int = 10_000):
        self._verify = verify
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, object]] = {}

    def cached(self, token: str):
        """The principal of ``token`` if it was verified less than ``ttl`` ago, else None (no
        coroutine: the kit asks this first and awaits the verifier only on a miss)."""
        hit = self._cache.get(token)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def __call__(self, token: str):
        principal = self.cached(token)
        if principal is not None:
            return principal
        now = time.monotonic()
        principal = await self._verify(token)
        until = now + self.ttl
        if principal.expires_at is not None:
            until = min(until, now + principal.expires_at - time.time())
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[token] = (until, principal)
        return principal


AUDIT_RELAY_POLL = 1.0  # seconds; writes wake the relay at once


def build(settings: Settings, runtime: Runtime) -> ServiceSpec:
    catalog = load_configured_catalog()
    retention = Retention.from_env()
    db = Database(settings.database_url)
    store = Store(db)
    index = Index(catalog)
    follower = Follower(store, index)
    servicer = AuthzServicer(index, store, follower)
    # Audit events of every authz write sit in the outbox (same transaction as the write); this relay
    # delivers them to AuditService/IngestEvents, retrying with back-off while audit is down. Every
    # committed write wakes it (the outbox wakes local relays on commit), so its poll is only the
    # fallback (retries, another replica's entries): once a second instead of five times, which
    # keeps an idle replica's database queries and CPU (≈ 1.6 % of a core before) off the check path.
    relay = audit_log.audit_relay(
        db, runtime.channel("audit"), runtime.service_tokens(), poll_interval=AUDIT_RELAY_POLL
    )

    def register(server: grpc.aio.Server) -> None:
        authz_service_pb2_grpc.add_AuthzServiceServicer_to_server(servicer, server)

    async def prune() -> None:
        now = time.time()
        changes, requests = await store.prune(
            changes_before=now - retention.changelog_hours * 3600,
            requests_before=now - retention.request_id_hours * 3600,
        )
        delivered = await relay.purge_delivered()
        if changes or requests or delivered:
            log.info(
                "pruned %d change-log entries, %d request ids, %d delivered audit events",
                changes,
                requests,
                delivered,
                extra={"changelog": changes, "request_ids": requests, "outbox": delivered},
            )

    return ServiceSpec(
        name=SERVICE,
        service_names=SERVICE_NAMES,
        register=register,
        public_methods=PUBLIC_METHODS,
        on_start=[migrate_on_start(MIGRATIONS, settings.database_url), follower.load],
        background=[
            follower.run,
            relay.run,
            periodic(prune, retention.interval, what="authz retention pruning", logger=log),
        ],
        on_stop=[db.dispose],
        depends_on=("identity",),
        verifier=CachedVerifier(identity_token_verifier(settings, runtime.channel("identity"))),
    )


def main() -> None:
    run_service(SERVICE, build)
