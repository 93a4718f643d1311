"""Identity's security events reach a real audit server through the outbox relay."""

from __future__ import annotations

import grpc
import sqlalchemy as sa

from gatehouse.audit.v1 import audit_event_pb2
from gatehouse.kit.app import build_server
from gatehouse.testing.identity import running_identity
from gatehouse_identity.adapters.tables import outbox
from services.identity.tests.helpers import eventually, fails


async def test_events_are_delivered_to_audit_once_it_runs(tmp_path, database_url):
    from gatehouse_audit.adapters.config import generate_keys_env
    from gatehouse_audit.server import build as build_audit

    async with running_identity(tmp_path, database_url) as identity:
        await identity.create_user("zoe@example.com")
        await fails(identity.login("zoe@example.com", "wrong-password-xyz"), grpc.StatusCode.UNAUTHENTICATED)
        await identity.login("zoe@example.com")
        settings = await identity.peer_settings(
            tmp_path / "audit",
            "audit",
            listen_address=identity.audit_address,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}",
        )
        keys = generate_keys_env()
        audit = build_server(settings, lambda s, r: build_audit(s, r, environ=keys))
        await audit.start()
        try:
            await audit.wait_started()

            async def delivered() -> list[str] | None:
                async with identity.identity.store.transaction() as tx:
                    rows = (
                        await tx.session.execute(
                            sa.select(outbox.c.payload, outbox.c.delivered_at).where(
                                outbox.c.topic == "audit"
                            )
                        )
                    ).all()
                if rows and all(r.delivered_at for r in rows):
                    return [audit_event_pb2.AuditEvent.FromString(r.payload).action for r in rows]
                return None

            actions = await eventually(delivered, timeout=40.0, interval=0.5)
        finally:
            await audit.stop(0)
    assert {"identity.user.created", "identity.login.failed", "identity.login.succeeded"} <= set(actions)
