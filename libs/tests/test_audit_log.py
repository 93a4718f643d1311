"""Audit events written by producers: same transaction as the change, context filled in, no secrets."""

from __future__ import annotations

import sqlalchemy as sa

from gatehouse.audit.v1 import audit_event_pb2
from gatehouse.kit import audit_log, outbox
from gatehouse.kit.context import Principal, current_request_id
from gatehouse.kit.db import Database
from gatehouse.testing.servers import call, make_server, raw_service


async def _db(url: str) -> Database:
    database = Database(url)
    meta = sa.MetaData()
    outbox.outbox_table(meta)
    async with database.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    return database


async def _stored(db: Database) -> list[audit_event_pb2.AuditEvent]:
    table = outbox.outbox_table(sa.MetaData())
    async with db.unit_of_work() as uow:
        rows = (
            await uow.session.execute(sa.select(table.c.payload, table.c.topic).order_by(table.c.id))
        ).all()
    assert all(r.topic == audit_log.TOPIC for r in rows)
    return [audit_event_pb2.AuditEvent.FromString(r.payload) for r in rows]


async def test_event_is_written_only_with_its_transaction(database_url):
    db = await _db(database_url)
    try:
        async with db.unit_of_work() as uow:
            await audit_log.record(uow.session, service="tenancy", action="tenancy.workspace.create")
            # no commit: the change and its event vanish together
        assert await _stored(db) == []
        async with db.unit_of_work() as uow:
            event_id = await audit_log.record(
                uow.session,
                service="tenancy",
                action="tenancy.workspace.create",
                actor=Principal("user", "u1"),
                organization_id="o1",
                workspace_id="w1",
                target=("workspace", "w1"),
                details={"name": {"old": "a", "new": "b"}},
            )
            await uow.commit()
        (event,) = await _stored(db)
        assert event.id == event_id
        assert (event.service, event.action, event.organization_id, event.workspace_id) == (
            "tenancy",
            "tenancy.workspace.create",
            "o1",
            "w1",
        )
        assert (event.actor.type, event.actor.id) == ("user", "u1")
        assert (event.target.type, event.target.id) == ("workspace", "w1")
        assert event.outcome == audit_event_pb2.OUTCOME_SUCCESS
        assert event.details["name"]["new"] == "b"
        assert event.occur_time.seconds > 0
    finally:
        await db.dispose()


def test_secrets_are_redacted_from_details():
    event = audit_log.build_event(
        service="identity",
        action="identity.user.create",
        outcome="FAILURE",
        reason="INVALID_ARGUMENT",
        details={
            "password": "hunter2hunter2",
            "nested": {"refresh_token": "abc", "client_secret": "s", "session_id": "keep"},
            "email": "a@example.com",
        },
    )
    assert event.details["password"] == audit_log.REDACTED
    assert event.details["nested"]["refresh_token"] == audit_log.REDACTED
    assert event.details["nested"]["client_secret"] == audit_log.REDACTED
    assert event.details["nested"]["session_id"] == "keep"
    assert event.details["email"] == "a@example.com"
    assert event.actor.type == "anonymous"
    assert event.outcome == audit_event_pb2.OUTCOME_FAILURE


async def test_request_context_reaches_the_event(tmp_path):
    """Through a real server: request id, gateway-forwarded address and user agent, the caller."""
    seen = {}

    async def handler(request: bytes, context) -> bytes:
        event = audit_log.build_event(service="identity", action="identity.login.succeeded")
        seen["event"] = event
        seen["request_id"] = current_request_id()
        return b""

    async def verifier(token: str) -> Principal:
        return Principal("user", "u42")

    server = make_server(tmp_path, raw_service({"Do": handler}), verifier=verifier)
    port = await server.start()
    await server.wait_started()
    try:
        await call(
            port,
            "Do",
            metadata=(
                ("authorization", "Bearer t"),
                ("x-request-id", "req-123"),
                ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
                ("x-gatehouse-user-agent", "curl/8.5"),
            ),
        )
    finally:
        await server.stop(0)
    event = seen["event"]
    assert event.request_id == "req-123" == seen["request_id"]
    assert event.source_address == "203.0.113.9"
    assert event.user_agent == "curl/8.5"
    assert (event.actor.type, event.actor.id) == ("user", "u42")


async def test_a_relay_that_died_mid_delivery_releases_its_batch_within_seconds(database_url):
    """The claim of a relay killed mid-delivery lapses after the delivery deadline + 5 s, not 30 s."""
    import asyncio
    import time

    import grpc

    db = await _db(database_url)
    channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never called: only claims are exercised
    try:
        async with db.unit_of_work() as uow:
            event_id = await audit_log.record(
                uow.session, service="tenancy", action="tenancy.workspace.create"
            )
            await uow.commit()

        async def no_token():
            return None

        dead = audit_log.audit_relay(db, channel, no_token, timeout=0.5)
        survivor = audit_log.audit_relay(db, channel, no_token, timeout=0.5)
        assert dead.lease == 5.5
        claimed_at = time.monotonic()
        assert [e.id for e in await dead._claim()] == [event_id]  # ... and the process dies here
        assert await survivor._claim() == []  # still leased to the dead relay
        taken = []
        while not taken and time.monotonic() - claimed_at < 10:
            await asyncio.sleep(0.25)
            taken = await survivor._claim()
        assert [e.id for e in taken] == [event_id]
        assert time.monotonic() - claimed_at < 7
    finally:
        await channel.close()
        await db.dispose()
