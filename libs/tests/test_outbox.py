"""The transactional outbox against a real receiver, on SQLite and PostgreSQL.

The receiver is a real grpc.aio server on loopback with a generic JSON method
that stores events idempotently by id; it stands in for audit's IngestEvents
(the audit issue builds the real one).
"""

from __future__ import annotations

import asyncio
import collections
import json

import grpc
import pytest

from gatehouse.kit import outbox
from gatehouse.kit.db import Database
from gatehouse.testing.stack import free_port

METHOD = "/gatehouse.test.v1.Receiver/Ingest"


class Receiver:
    """An idempotent receiver: stores each id once, counts every call per id."""

    def __init__(self):
        self.stored: dict[str, dict] = {}
        self.calls = collections.Counter()
        self.lose_ack_once = False
        self.server: grpc.aio.Server | None = None

    async def ingest(self, request: bytes, context) -> bytes:
        batch = json.loads(request)
        for entry in batch:
            self.calls[entry["id"]] += 1
            self.stored.setdefault(entry["id"], entry["payload"])
        if self.lose_ack_once:
            self.lose_ack_once = False
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stored, but the ack is lost")
        return b"ok"

    async def start(self, port: int) -> None:
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self.ingest)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("gatehouse.test.v1.Receiver", {"Ingest": handler}),)
        )
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(0)


def grpc_deliver(port: int):
    async def deliver(entries: list[outbox.OutboxEntry]) -> None:
        body = json.dumps([{"id": e.id, "payload": json.loads(e.payload)} for e in entries]).encode()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary(METHOD)(body, timeout=1.0)

    return deliver


@pytest.fixture
async def db(database_url):
    import sqlalchemy as sa

    database = Database(database_url)
    meta = sa.MetaData()
    outbox.outbox_table(meta)
    async with database.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    yield database
    await database.dispose()


async def write(db: Database, n: int, commit: bool = True, start: int = 0) -> list[str]:
    ids = []
    async with db.unit_of_work() as uow:
        for i in range(start, start + n):
            ids.append(await outbox.add(uow.session, "audit.events", json.dumps({"n": i}).encode()))
        if commit:
            await uow.commit()
    return ids


@pytest.fixture
async def receiver():
    r = Receiver()
    port = free_port()
    await r.start(port)
    r.port = port
    yield r
    await r.stop()


async def test_rolled_back_entries_are_never_delivered(db, receiver):
    await write(db, 3, commit=False)
    relay = outbox.OutboxRelay(db, "audit.events", grpc_deliver(receiver.port))
    assert await relay.drain() == 0
    assert receiver.stored == {}


async def test_delivers_in_order_and_in_batches(db, receiver):
    ids = await write(db, 25)
    batches = []
    deliver = grpc_deliver(receiver.port)

    async def recording(entries):
        batches.append([e.id for e in entries])
        await deliver(entries)

    relay = outbox.OutboxRelay(db, "audit.events", recording, batch_size=10)
    assert await relay.drain() == 25
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [i for b in batches for i in b] == sorted(ids)
    assert await relay.pending_count() == 0


async def test_receiver_down_then_up_delivers_everything_exactly_once(db, receiver):
    port = receiver.port
    await receiver.stop()
    ids = await write(db, 5)
    relay = outbox.OutboxRelay(db, "audit.events", grpc_deliver(port), base_backoff=0.05, max_backoff=0.2)
    for _ in range(3):
        assert await relay.drain_once() == 0
        await asyncio.sleep(0.25)
    assert await relay.pending_count() == 5
    async with db.unit_of_work() as uow:
        import sqlalchemy as sa

        attempts = (await uow.session.execute(sa.text("SELECT max(attempts) FROM outbox"))).scalar_one()
    assert attempts >= 2
    await receiver.start(port)
    task = asyncio.create_task(relay.run())
    for _ in range(100):
        if await relay.pending_count() == 0:
            break
        await asyncio.sleep(0.05)
    relay.stop()
    await task
    assert set(receiver.stored) == set(ids)
    assert all(receiver.calls[i] == 1 for i in ids)


async def test_lost_ack_is_redelivered_and_stored_once(db, receiver):
    ids = await write(db, 3)
    receiver.lose_ack_once = True
    relay = outbox.OutboxRelay(
        db, "audit.events", grpc_deliver(receiver.port), base_backoff=0.01, max_backoff=0.02
    )
    assert await relay.drain_once() == 0
    await asyncio.sleep(0.05)
    assert await relay.drain() == 3
    assert set(receiver.stored) == set(ids) and len(receiver.stored) == 3
    assert all(receiver.calls[i] == 2 for i in ids)  # at-least-once: delivered twice, stored once


# Concurrent relays are a multi-replica (PostgreSQL) concern; SQLite runs one process.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_relays_never_deliver_the_same_entry(db, receiver, database_url):
    ids = await write(db, 200)
    seen = collections.Counter()
    deliver = grpc_deliver(receiver.port)

    async def counting(entries):
        for e in entries:
            seen[e.id] += 1
        await asyncio.sleep(0.01)
        await deliver(entries)

    other = Database(database_url)
    try:
        relays = [
            outbox.OutboxRelay(db, "audit.events", counting, batch_size=7),
            outbox.OutboxRelay(other, "audit.events", counting, batch_size=7),
        ]
        await asyncio.gather(*(r.drain() for r in relays))
    finally:
        await other.dispose()
    assert set(seen) == set(ids)
    assert max(seen.values()) == 1


async def test_purge_removes_only_old_delivered_entries(db, receiver):
    await write(db, 2)
    relay = outbox.OutboxRelay(db, "audit.events", grpc_deliver(receiver.port))
    await relay.drain()
    await write(db, 1, start=2)
    assert await relay.purge_delivered(older_than=3600) == 0
    assert await relay.purge_delivered(older_than=-1) == 2
    assert await relay.pending_count() == 1


@pytest.mark.parametrize("ordered", [False, True])
async def test_an_ordered_topic_holds_later_entries_behind_one_waiting_for_its_retry(db, ordered):
    delivered: list[str] = []
    failing = {"on": True}

    async def deliver(entries):
        if failing["on"]:
            raise RuntimeError("receiver down")
        delivered.extend(e.id for e in entries)

    relay = outbox.OutboxRelay(db, "authz", deliver, base_backoff=5.0, max_backoff=5.0, ordered=ordered)
    async with db.unit_of_work() as uow:
        first = await outbox.add(uow.session, "authz", b"add", key=outbox.ordered_key())
        await uow.commit()
    assert await relay.drain_once() == 0  # fails: the first entry now waits seconds for its retry
    failing["on"] = False
    async with db.unit_of_work() as uow:
        second = await outbox.add(uow.session, "authz", b"remove", key=outbox.ordered_key())
        await uow.commit()
    await relay.drain()
    # an unordered topic lets the later entry overtake; an ordered one never does
    assert delivered == ([] if ordered else [second])
    assert first < second
    keys = [outbox.ordered_key() for _ in range(1000)]
    assert keys == sorted(keys) and len(set(keys)) == 1000 and all(len(k) == 36 for k in keys)


async def test_a_wake_while_the_relay_drains_is_not_lost(db):
    """An entry committed (and the relay woken) while a drain's query runs is delivered at once,
    not a poll interval later: the wake is kept for the next round."""
    delivered: list[str] = []

    async def deliver(entries):
        delivered.extend(e.id for e in entries)

    relay = outbox.OutboxRelay(db, "audit.events", deliver, poll_interval=30.0)
    claim, raced = relay._claim, []

    async def claim_racing_a_commit():
        found = await claim()
        if not raced:  # the first (empty) query: a producer commits and wakes the relay meanwhile
            raced.extend(await write(db, 1))
            relay.wake()
        return found

    relay._claim = claim_racing_a_commit  # fault injection: the interleaving, made deterministic
    runner = asyncio.create_task(relay.run())
    try:
        for _ in range(100):  # 5 s at most, against a 30 s poll
            if delivered:
                break
            await asyncio.sleep(0.05)
        assert delivered == raced
    finally:
        relay.stop()
        await asyncio.wait_for(runner, 5)


async def test_a_relay_cancelled_right_after_a_wake_stops(db):
    """Server stop cancels the relay's task; a wake just before (a write committed as the server
    stopped) must not eat the cancellation. (asyncio.wait_for on Python 3.11 returned the woken
    wait instead of raising, and the relay ran on while the stop waited for it.)"""

    async def deliver(entries):
        pass

    relay = outbox.OutboxRelay(db, "audit.events", deliver, poll_interval=30.0)
    runner = asyncio.create_task(relay.run())
    await asyncio.sleep(0.3)  # the relay has drained (nothing) and waits for a wake
    relay.wake()
    runner.cancel()  # in the same loop iteration as the wake
    done, _ = await asyncio.wait({runner}, timeout=3)
    assert runner in done and runner.cancelled()


async def test_a_committed_add_wakes_the_local_relays_of_its_topic(db):
    async def deliver(entries):
        pass

    relay = outbox.OutboxRelay(db, "audit.events", deliver, poll_interval=30.0)
    other = outbox.OutboxRelay(db, "authz", deliver, poll_interval=30.0)
    await write(db, 2, commit=False)  # rolled back: nobody is woken
    assert not relay._wake.is_set()
    async with db.unit_of_work() as uow:
        await outbox.add(uow.session, "audit.events", b"one")
        await uow.commit()
        assert relay._wake.is_set() and not other._wake.is_set()
        relay._wake.clear()
        await outbox.add(uow.session, "audit.events", b"two")  # the next transaction of the same unit
        await uow.commit()
    assert relay._wake.is_set() and not other._wake.is_set()
