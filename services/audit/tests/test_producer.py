"""A producer's real relay against a real audit server: audit down delays events, never loses them."""

from __future__ import annotations

import asyncio

import grpc
import sqlalchemy as sa

from gatehouse.kit import audit_log, outbox
from gatehouse.kit.db import Database
from gatehouse.testing.stack import free_port
from gatehouse.testing.tokens import TokenMint
from gatehouse_audit.adapters.tables import events as events_table
from services.audit.tests.helpers import generate_keys_env, start_audit

EVENTS = 60


async def producer_database(tmp_path) -> Database:
    """A producer's own database with its outbox table (SQLite, as in development)."""
    producer = Database(f"sqlite+aiosqlite:///{tmp_path / 'producer.db'}")
    meta = sa.MetaData()
    outbox.outbox_table(meta)
    async with producer.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    return producer


async def wait_until(predicate, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


async def test_relay_retries_while_audit_is_down_then_delivers_exactly_once(tmp_path, database_url):
    mint = TokenMint()
    producer = await producer_database(tmp_path)
    ids = []
    for i in range(EVENTS):  # each change commits its event in its own transaction
        async with producer.unit_of_work() as uow:
            ids.append(
                await audit_log.record(
                    uow.session,
                    service="tenancy",
                    action="tenancy.workspace.create",
                    actor=audit_log.Actor("user", "u-1", "u1@example.com"),
                    organization_id=f"org-{i % 3}",
                    workspace_id=f"ws-{i}",
                    target=("workspace", f"ws-{i}"),
                    details={"name": f"ws {i}", "password": "never stored"},
                )
            )
            await uow.commit()

    port = free_port()
    token = mint.service("tenancy")

    async def token_source() -> str:
        return token

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    relay = audit_log.audit_relay(
        producer,
        channel,
        token_source,
        timeout=2.0,
        batch_size=25,
        poll_interval=0.05,
        base_backoff=0.05,
        max_backoff=0.3,
    )
    runner = asyncio.create_task(relay.run())
    audit = None
    try:
        # audit is down: delivery fails and is retried, nothing is dropped
        async def attempted() -> bool:
            async with producer.unit_of_work() as uow:
                attempts = (await uow.session.execute(sa.select(sa.func.min(outbox._T.c.attempts)))).scalar()
            return attempts >= 2

        assert await wait_until(attempted, 15)
        assert await relay.pending_count() == EVENTS

        audit, _ = await start_audit(tmp_path / "audit", database_url, mint, generate_keys_env(), port=port)

        async def drained() -> bool:
            return await relay.pending_count() == 0

        assert await wait_until(drained, 30)
        # a lost acknowledgement: everything is delivered again; audit stores nothing twice
        async with producer.unit_of_work() as uow:
            await uow.session.execute(outbox._T.update().values(delivered_at=None, next_attempt_at=0))
            await uow.commit()
        relay.wake()
        assert await wait_until(drained, 30)

        stored_db = Database(database_url)
        try:
            async with stored_db.unit_of_work() as uow:
                rows = (
                    await uow.session.execute(
                        sa.select(events_table.c.id, events_table.c.details, events_table.c.organization_id)
                    )
                ).all()
        finally:
            await stored_db.dispose()
        assert sorted(r.id for r in rows) == sorted(ids)
        assert all("never stored" not in r.details and "[redacted]" in r.details for r in rows)
        assert {r.organization_id for r in rows} == {"org-0", "org-1", "org-2"}
    finally:
        relay.stop()
        await asyncio.wait_for(runner, 5)
        await channel.close()
        if audit is not None:
            await audit.stop(0)
        await producer.dispose()


async def test_one_rejected_event_does_not_hold_back_its_batch(tmp_path, database_url):
    mint = TokenMint()
    audit, port = await start_audit(tmp_path / "audit", database_url, mint, generate_keys_env())
    producer = await producer_database(tmp_path)
    good = []
    async with producer.unit_of_work() as uow:
        for i in range(9):
            good.append(await audit_log.record(uow.session, service="tenancy", action="tenancy.group.create"))
            if i == 4:  # an event audit rejects (action not dotted), in the middle of the batch
                bad = audit_log.build_event(service="tenancy", action="nodots")
                await outbox.add(uow.session, audit_log.TOPIC, bad.SerializeToString(), key=bad.id)
        await uow.commit()
    token = mint.service("tenancy")

    async def token_source() -> str:
        return token

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    relay = audit_log.audit_relay(producer, channel, token_source, batch_size=50)
    try:
        assert await relay.drain_once() == 0  # the batch as a whole failed and stays pending
        stored_db = Database(database_url)
        try:
            async with stored_db.unit_of_work() as uow:
                stored = set((await uow.session.execute(sa.select(events_table.c.id))).scalars())
        finally:
            await stored_db.dispose()
        assert stored == set(good)  # ... but every valid event of it arrived
        assert await relay.pending_count() == 10  # retried later: duplicates, and the bad one until fixed
    finally:
        await channel.close()
        await audit.stop(0)
        await producer.dispose()
