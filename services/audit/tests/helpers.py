"""Shared helpers of the audit tests: events built by the producers' own code, a migrated store."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib

from gatehouse.kit import audit_log
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse_audit.adapters.config import AuditConfig, generate_keys_env
from gatehouse_audit.adapters.store import AuditStore
from gatehouse_audit.domain.usecases import Audit
from gatehouse_audit.server import MIGRATIONS


def event(
    org: str = "",
    ws: str = "",
    action: str = "tenancy.workspace.update",
    actor: str = "u-1",
    outcome: str = "SUCCESS",
    details: dict | None = None,
    occur: dt.datetime | None = None,
):
    """An AuditEvent message exactly as a producer's ``audit_log.record`` would write it."""
    return audit_log.build_event(
        service=action.split(".")[0],
        action=action,
        actor=audit_log.Actor("user", actor, f"{actor}@example.com"),
        outcome=outcome,
        organization_id=org,
        workspace_id=ws,
        target=("workspace", ws or "none"),
        details=details if details is not None else {"name": {"old": "a", "new": "b"}},
        occur_time=occur,
    )


def domain_events(messages):
    from gatehouse.kit.errors import ErrorCollector
    from gatehouse_audit.api.convert import event_from_pb

    errs = ErrorCollector()
    out = [event_from_pb(m, f"events[{i}]", errs) for i, m in enumerate(messages)]
    errs.raise_if_any()
    return out


async def migrate(url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, url)


def make_audit(url: str, env: dict[str, str], data_dir: pathlib.Path) -> tuple[Audit, Database]:
    config = AuditConfig.load(data_dir, env)
    db = Database(url)
    store = AuditStore(db, config.chain_key)
    return Audit(store, config.chain_key, config.signer, config.default_retention_days), db


__all__ = ["domain_events", "event", "generate_keys_env", "make_audit", "migrate", "start_audit"]


async def start_audit(
    tmp_path, database_url: str, mint, keys: dict[str, str], *, authz_port: int = 1, port: int = 0
):
    """A real audit server (port 0 unless given) trusting ``mint``'s tokens, asking authz at ``authz_port``."""
    from gatehouse.kit.app import build_server
    from gatehouse.testing.servers import settings_for
    from gatehouse_audit.server import build

    settings = settings_for(
        tmp_path,
        service="audit",
        database_url=database_url,
        authz_address=f"127.0.0.1:{authz_port}",
        listen_address=f"127.0.0.1:{port}",
    )
    service_token = mint.service("audit")

    async def token() -> str:
        return service_token

    def with_test_tokens(settings, runtime):
        spec = build(settings, runtime, environ=keys, token_source=token)
        spec.verifier = mint.verifier  # tokens signed by the test's key (identity is not running here)
        spec.depends_on = ()
        return spec

    server = build_server(settings, with_test_tokens)
    bound = await server.start()
    await server.wait_started()
    return server, bound
