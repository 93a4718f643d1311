"""Audit storage and chain integrity on SQLite and PostgreSQL: ingest, tampering, keys, purge."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import secrets
import stat
import time

import pytest
import sqlalchemy as sa

from gatehouse_audit.adapters.config import CHAIN_KEY, CHECKPOINT_KEY, PREVIOUS_KEYS, AuditConfig
from gatehouse_audit.adapters.store import EVENT_FIELDS
from gatehouse_audit.adapters.tables import chains, events
from gatehouse_audit.domain.model import EventFilter
from gatehouse_audit.domain.retention import DAY_US
from gatehouse_audit.domain.usecases import PURGE_ACTION
from services.audit.tests.helpers import domain_events, event, generate_keys_env, make_audit, migrate


@pytest.fixture
async def env(database_url, tmp_path):
    await migrate(database_url)
    keys = generate_keys_env()
    audit, db = make_audit(database_url, keys, tmp_path)
    yield audit, db, keys
    await db.dispose()


async def sequences(db, org):
    async with db.unit_of_work() as uow:
        rows = await uow.session.execute(
            sa.select(events.c.sequence, events.c.id)
            .where(events.c.organization_id == org)
            .order_by(events.c.sequence)
        )
        return [tuple(r) for r in rows]


async def sql(db, *statements):
    async with db.unit_of_work() as uow:
        for statement in statements:
            await uow.session.execute(statement)
        await uow.commit()


def of(org):
    return events.c.organization_id == org


async def test_ingest_is_idempotent_and_gapless(env):
    audit, db, _ = env
    batch = [event("o1") for _ in range(10)] + [event("o2") for _ in range(5)] + [event("") for _ in range(3)]
    first = await audit.ingest(domain_events(batch))
    assert (first.accepted, first.duplicates) == (18, 0)
    again = await audit.ingest(domain_events(batch))
    assert (again.accepted, again.duplicates) == (0, 18)
    overlap = batch[5:12] + [event("o1") for _ in range(4)]
    third = await audit.ingest(domain_events(overlap + overlap[:2]))  # repeats inside one batch too
    assert (third.accepted, third.duplicates) == (4, 9)
    stored = await sequences(db, "o1")
    assert [s for s, _ in stored] == list(range(1, 15))
    assert [i for _, i in stored] == [e.id for e in batch[:10]] + [e.id for e in overlap[-4:]]
    for org, count in (("o1", 14), ("o2", 5), ("", 3)):
        verdict = await audit.verify(org)
        assert verdict.ok and verdict.checked == count


async def test_concurrent_replicas_store_each_event_once(env, database_url, tmp_path):
    """Two audit replicas (own engines) ingest the same and overlapping batches at once."""
    audit, db, keys = env
    other, other_db = make_audit(database_url, keys, tmp_path)
    try:
        batches = [[event(f"o{k % 3}") for k in range(40)] for _ in range(6)]
        calls = []
        for i, batch in enumerate(batches):
            calls.append(audit.ingest(domain_events(batch)))
            calls.append(other.ingest(domain_events(batch)))  # the same batch, racing
            calls.append(other.ingest(domain_events(batches[i - 1][10:30])))  # overlapping
        results = await asyncio.wait_for(asyncio.gather(*calls), 60)
        assert sum(r.accepted for r in results) == 240
        for org in ("o0", "o1", "o2"):
            expected = {e.id for b in batches for e in b if e.organization_id == org}
            stored = await sequences(db, org)
            assert [s for s, _ in stored] == list(range(1, len(expected) + 1))
            assert {i for _, i in stored} == expected
            assert (await audit.verify(org)).ok
    finally:
        await other_db.dispose()


async def test_id_stored_while_waiting_for_the_head_lock_is_a_duplicate(env, database_url, tmp_path):
    """Another replica stores one of the batch's ids while this call waits for the head lock: on
    PostgreSQL the insert hits the primary key and the call retries (the id is then a duplicate);
    on SQLite the call waits for the write lock before it checks. No gap, nothing stored twice."""
    audit, db, keys = env
    other, other_db = make_audit(database_url, keys, tmp_path)
    try:
        await audit.ingest(domain_events([event("race")]))  # the head row exists
        batch = [event("race") for _ in range(5)]
        async with other_db.unit_of_work() as holder:
            await other.store._append(holder.session, domain_events(batch[:1]))  # holds the head lock
            waiting = asyncio.create_task(audit.ingest(domain_events(batch)))
            if db.is_postgres:  # until the call is blocked on the lock (its snapshot taken)
                for _ in range(200):
                    async with other_db.engine.connect() as connection:
                        found = await connection.execute(
                            sa.text(
                                "SELECT count(*) FROM pg_stat_activity"
                                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                            )
                        )
                        if found.scalar():
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the ingest never waited for the head lock")
            else:
                await asyncio.sleep(0.3)
            assert not waiting.done()
            await holder.commit()
        result = await asyncio.wait_for(waiting, 30)
        assert (result.accepted, result.duplicates) == (4, 1)
        assert audit.store.retries == (1 if db.is_postgres else 0)
        stored = await sequences(db, "race")
        assert [s for s, _ in stored] == [1, 2, 3, 4, 5, 6]
        assert [i for _, i in stored][1:] == [m.id for m in batch]
        assert (await audit.verify("race")).ok
    finally:
        await other_db.dispose()


async def test_concurrent_calls_are_grouped_into_one_transaction_with_their_own_counts(env, monkeypatch):
    """Group commit: calls queued together share one transaction, each caller gets its own counts;
    an id in two concurrent batches is accepted for the first and a duplicate for the second."""
    audit, db, _ = env
    store = audit.store
    old = domain_events([event("g")])
    await audit.ingest(old)
    shared = event("g")
    a = [event("g"), event("g"), shared]
    b = [shared, event("g"), event("h")]
    c = [event("h")]
    before = store.transactions
    results = await asyncio.gather(
        audit.ingest(domain_events(a)),
        audit.ingest(domain_events(b + [a[0]])),
        audit.ingest(domain_events(c + c + [a[1]])),  # a repeat, an id of a
        audit.ingest(old),  # a redelivery
    )
    assert store.transactions - before == 1  # four calls, one transaction
    assert [(r.accepted, r.duplicates) for r in results] == [(3, 0), (2, 2), (1, 2), (0, 1)]
    assert results[0].accepted_ids == [m.id for m in a]
    assert results[1].accepted_ids == [b[1].id, b[2].id]
    assert results[2].accepted_ids == [c[0].id]
    stored = await sequences(db, "g")  # sequences follow the queue order
    assert stored == list(enumerate([old[0].id] + [m.id for m in a] + [b[1].id], start=1))
    assert [i for _, i in await sequences(db, "h")] == [b[2].id, c[0].id]
    assert (await audit.verify("g")).ok and (await audit.verify("h")).ok
    # a group is bounded: with room for 4 events, four queued calls of 2 make two transactions
    monkeypatch.setattr("gatehouse_audit.adapters.store.MAX_GROUP_EVENTS", 4)
    before = store.transactions
    await asyncio.gather(*(audit.ingest(domain_events([event("g"), event("g")])) for _ in range(4)))
    assert store.transactions - before == 2
    assert [s for s, _ in await sequences(db, "g")] == list(range(1, 14))
    assert (await audit.verify("g")).ok


async def test_a_failing_batch_fails_only_its_caller(env, monkeypatch):
    """One queued batch breaks the group's transaction: an event without a user agent, which the
    API's converter never produces (fault injection) and the NOT NULL constraint rejects. The group
    is then stored batch by batch: only that caller fails, nothing of its batch is stored."""
    audit, db, _ = env
    store = audit.store
    sizes = []
    append = store._append

    async def counted(session, batch):
        sizes.append(len(batch))
        return await append(session, batch)

    monkeypatch.setattr(store, "_append", counted)
    good, other = domain_events([event("f") for _ in range(3)]), domain_events([event("k"), event("k")])
    bad = domain_events([event("f"), event("f")])
    bad[1].user_agent = None
    before = store.transactions
    results = await asyncio.gather(
        audit.ingest(good), audit.ingest(bad), audit.ingest(other), return_exceptions=True
    )
    assert sizes[0] == 7 and sorted(set(sizes)) == [2, 3, 7]  # tried as one group, then one by one
    assert "user_agent" in str(results[1])  # NOT NULL constraint failed / violated
    assert (results[0].accepted, results[2].accepted) == (3, 2)
    assert store.transactions - before == 2
    assert [i for _, i in await sequences(db, "f")] == [e.id for e in good]
    assert [i for _, i in await sequences(db, "k")] == [e.id for e in other]
    after = await audit.ingest(domain_events([event("f")]))  # the committer goes on
    assert after.accepted == 1
    assert [s for s, _ in await sequences(db, "f")] == [1, 2, 3, 4]
    assert (await audit.verify("f")).ok and (await audit.verify("k")).ok


async def test_cancelled_callers_queued_and_in_flight(env, monkeypatch):
    """A caller cancelled while queued leaves the queue (its events are not stored); one cancelled
    while its group's transaction runs does not cancel that transaction for the others."""
    audit, db, _ = env
    store = audit.store
    entered, release = asyncio.Queue(), asyncio.Queue()
    append = store._append

    async def gated(session, batch):  # each transaction waits for the test's go
        entered.put_nowait(len(batch))
        await release.get()
        return await append(session, batch)

    monkeypatch.setattr(store, "_append", gated)
    first, queued, in_group, other = (domain_events([event("c") for _ in range(n)]) for n in (1, 2, 3, 4))
    started = asyncio.create_task(audit.ingest(first))
    assert await asyncio.wait_for(entered.get(), 10) == 1  # its transaction is in flight
    calls = [asyncio.create_task(audit.ingest(b)) for b in (queued, in_group, other)]
    await asyncio.sleep(0.05)
    calls[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[0]
    release.put_nowait(None)
    assert (await asyncio.wait_for(started, 10)).accepted == 1
    assert await asyncio.wait_for(entered.get(), 10) == 7  # the next group: both remaining calls
    calls[1].cancel()
    release.put_nowait(None)
    result = await asyncio.wait_for(calls[2], 10)
    assert (result.accepted, result.duplicates) == (4, 0)
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    stored = [i for _, i in await sequences(db, "c")]
    assert stored == [e.id for e in first + in_group + other]  # the cancelled queued call: nothing
    assert [s for s, _ in await sequences(db, "c")] == list(range(1, 9))
    assert (await audit.verify("c")).ok


async def seeded(audit, org="org-t", n=8):
    batch = domain_events([event(org) for _ in range(n)])
    await audit.ingest(batch)
    return [e.id for e in batch]


async def test_edited_event_is_named(env):
    audit, db, _ = env
    ids = await seeded(audit)
    await sql(db, events.update().where(events.c.id == ids[3]).values(details='{"name":"mallory"}'))
    verdict = await audit.verify("org-t")
    assert (verdict.ok, verdict.failure, verdict.failed_sequence, verdict.failed_event_id) == (
        False,
        "EDITED",
        4,
        ids[3],
    )
    assert verdict.checked == 3


async def test_edited_hash_too_is_still_detected(env):
    audit, db, _ = env
    ids = await seeded(audit)
    # recomputing a plain SHA-256 is all someone without the key could do
    await sql(
        db,
        events.update().where(events.c.id == ids[2]).values(actor_display="x", hash=secrets.token_bytes(32)),
    )
    verdict = await audit.verify("org-t")
    assert (verdict.failure, verdict.failed_event_id) == ("EDITED", ids[2])


async def test_an_event_appended_by_hand_is_detected(env):
    audit, db, _ = env
    ids = await seeded(audit)
    forged = domain_events([event("org-t")])[0]
    forged.sequence, forged.prev_hash, forged.hash, forged.key_id = 9, b"", secrets.token_bytes(32), "k"
    async with db.unit_of_work() as uow:
        last_hash = (
            await uow.session.execute(sa.select(events.c.hash).where(events.c.id == ids[-1]))
        ).scalar()
        forged.prev_hash, forged.key_id = last_hash, audit.key.key_id
        await uow.session.execute(events.insert().values(**{n: getattr(forged, n) for n in EVENT_FIELDS}))
        await uow.commit()
    verdict = await audit.verify("org-t")  # the head row still says 8
    assert (verdict.failure, verdict.failed_sequence, verdict.failed_event_id) == ("EDITED", 9, forged.id)


async def test_deleted_event_is_a_gap(env):
    audit, db, _ = env
    ids = await seeded(audit)
    await sql(db, events.delete().where(events.c.id == ids[4]))
    verdict = await audit.verify("org-t")
    assert (verdict.failure, verdict.failed_sequence, verdict.checked) == ("DELETED", 5, 4)


async def test_swapped_events_are_reordered(env):
    audit, db, _ = env
    ids = await seeded(audit)
    # swap the positions of events 3 and 6 (through a free sequence: the pair is unique)
    await sql(
        db,
        events.update().where(events.c.id == ids[2]).values(sequence=-1),
        events.update().where(events.c.id == ids[5]).values(sequence=3),
        events.update().where(events.c.id == ids[2]).values(sequence=6),
    )
    verdict = await audit.verify("org-t")
    assert (verdict.failure, verdict.failed_sequence, verdict.failed_event_id) == ("REORDERED", 3, ids[5])


async def test_truncated_tail_is_detected_with_and_without_rewound_head(env):
    audit, db, _ = env
    await seeded(audit)
    checkpoint = await audit.checkpoint("org-t")
    assert checkpoint.sequence == 8
    await sql(db, events.delete().where(of("org-t"), events.c.sequence > 6))
    verdict = await audit.verify("org-t")
    assert (verdict.failure, verdict.failed_sequence) == ("TRUNCATED", 7)
    # someone also rewinds the head row: only the checkpoint held elsewhere tells
    last = (await sequences(db, "org-t"))[-1]
    async with db.unit_of_work() as uow:
        head_hash = (
            await uow.session.execute(sa.select(events.c.hash).where(events.c.id == last[1]))
        ).scalar()
    await sql(
        db,
        chains.update()
        .where(chains.c.organization_id == "org-t")
        .values(head_sequence=6, head_hash=head_hash),
    )
    assert (await audit.verify("org-t")).ok
    verdict = await audit.verify("org-t", checkpoint=checkpoint)
    assert (verdict.ok, verdict.failure, verdict.failed_sequence) == (False, "TRUNCATED", 7)


async def test_checkpoint_signature_and_mismatch(env):
    audit, _, _ = env
    await seeded(audit)
    checkpoint = await audit.checkpoint("org-t")
    assert (await audit.verify("org-t", checkpoint=checkpoint)).ok
    await seeded(audit)  # the chain grows: an older checkpoint still verifies
    assert (await audit.verify("org-t", checkpoint=checkpoint)).ok
    from dataclasses import replace

    from gatehouse.kit import errors

    forged = replace(checkpoint, sequence=20)
    with pytest.raises(errors.InvalidArgument) as info:
        await audit.verify("org-t", checkpoint=forged)
    assert info.value.violations[0].field == "checkpoint.signature"


async def test_a_different_key_fails_and_a_previous_key_verifies(env, database_url, tmp_path):
    audit, _, keys = env
    ids = await seeded(audit)
    rotated = {**keys, CHAIN_KEY: base64.b64encode(secrets.token_bytes(32)).decode()}
    stranger, stranger_db = make_audit(database_url, rotated, tmp_path)
    try:
        verdict = await stranger.verify("org-t")
        assert (verdict.failure, verdict.failed_sequence, verdict.failed_event_id) == (
            "KEY_MISMATCH",
            1,
            ids[0],
        )
        # after a rotation the old key verifies the old part, the new key links the new part
        await stranger.ingest(domain_events([event("org-t")]))
        rotated[PREVIOUS_KEYS] = keys[CHAIN_KEY]
        keyring, keyring_db = make_audit(database_url, rotated, tmp_path)
        verdict = await keyring.verify("org-t")
        assert verdict.ok and verdict.checked == 9
        await keyring_db.dispose()
    finally:
        await stranger_db.dispose()


async def test_purge_keeps_an_anchor_and_records_itself(env):
    audit, db, _ = env
    old = await seeded(audit, "org-p", 6)
    before_purge = await audit.checkpoint("org-p")
    await asyncio.sleep(0.01)
    boundary = time.time_ns() // 1000
    await asyncio.sleep(0.01)
    kept = await seeded(audit, "org-p", 4)
    removed = await audit.purge_expired(now_us=boundary + 365 * DAY_US)
    assert removed == {"org-p": 6}
    stored = await sequences(db, "org-p")
    assert [s for s, _ in stored] == [7, 8, 9, 10, 11]
    assert [i for _, i in stored][:4] == kept and old[0] not in {i for _, i in stored}
    purge_event = await audit.store.get(stored[-1][1])
    assert purge_event.action == PURGE_ACTION and '"removed_count":6' in purge_event.details
    verdict = await audit.verify("org-p")
    assert verdict.ok and verdict.checked == 5
    assert (await audit.verify("org-p", checkpoint=before_purge)).ok
    # a forged anchor (events deleted by hand, anchor moved) is not a purge
    await sql(
        db,
        events.delete().where(of("org-p"), events.c.sequence <= 8),
        chains.update().where(chains.c.organization_id == "org-p").values(anchor_sequence=8),
    )
    verdict = await audit.verify("org-p")
    assert (verdict.ok, verdict.failure) == (False, "DELETED")


async def test_retention_comes_from_tenancy_events(env):
    audit, _, _ = env
    await seeded(audit, "org-r", 3)
    setting = event(
        "org-r",
        action="tenancy.organization.update",
        details={"changes": {"settings.audit_retention_days": {"old": 365, "new": 30}}},
    )
    await audit.ingest(domain_events([setting]))
    assert await audit.store.retention_days() == {"org-r": 30}
    soon = time.time_ns() // 1000 + 31 * DAY_US
    assert await audit.purge_expired(now_us=soon) == {"org-r": 4}  # other chains keep 365 days
    assert (await audit.verify("org-r")).ok


async def test_time_range_and_keyset(env):
    audit, _, _ = env
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    batch = [event("o1", occur=base + dt.timedelta(hours=h)) for h in range(10)]
    await audit.ingest(domain_events(batch))
    hour = 3_600_000_000
    start = int(base.timestamp() * 1_000_000)
    window = EventFilter(organization_ids=("o1",), start_us=start + 2 * hour, end_us=start + 5 * hour)
    assert [e.id for e in await audit.store.list(window, 100)] == [batch[4].id, batch[3].id, batch[2].id]
    first = await audit.store.list(EventFilter(organization_ids=("o1",)), 4)
    after = (first[-1].occur_us, first[-1].id)
    rest = await audit.store.list(EventFilter(organization_ids=("o1",)), 100, after)
    assert [e.id for e in first + rest] == [e.id for e in reversed(batch)]


async def test_list_filters_and_stream(env):
    audit, _, _ = env
    batch = (
        [event("o1", "w1", action="identity.login.failed", outcome="FAILURE") for _ in range(5)]
        + [event("o1", "w2", actor="u-2") for _ in range(7)]
        + [event("o2", "w3") for _ in range(4)]
    )
    await audit.ingest(domain_events(batch))
    store = audit.store
    assert len(await store.list(EventFilter(organization_ids=("o1",)), 100)) == 12
    assert len(await store.list(EventFilter(organization_ids=("o1",), workspace_id="w1"), 100)) == 5
    assert len(await store.list(EventFilter(organization_ids=("o2",), workspace_id="w1"), 100)) == 0
    assert len(await store.list(EventFilter(action_prefix="identity.login"), 100)) == 5
    assert len(await store.list(EventFilter(action_prefix="identity.login%"), 100)) == 0
    assert len(await store.list(EventFilter(outcome="FAILURE"), 100)) == 5
    assert len(await store.list(EventFilter(actor_id="u-2"), 100)) == 7
    pages = [page async for page in store.stream(EventFilter(), page=5)]
    assert [len(p) for p in pages] == [5, 5, 5, 1]
    streamed = [e.id for p in pages for e in p]
    assert sorted(streamed) == sorted(e.id for e in batch) and len(set(streamed)) == 16


def test_development_keys_are_generated_private_and_stable(tmp_path):
    first = AuditConfig.load(tmp_path, {})
    again = AuditConfig.load(tmp_path, {})
    key_file = tmp_path / "keys" / "audit-chain.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "audit-checkpoint.key").st_mode) == 0o600
    assert first.chain_key.key_id == again.chain_key.key_id
    assert first.signer.key_id == again.signer.key_id
    from gatehouse.kit.config import ConfigError

    with pytest.raises(ConfigError, match=CHAIN_KEY):
        AuditConfig.load(tmp_path, {CHAIN_KEY: base64.b64encode(b"short").decode()})
    # a shared (PostgreSQL) database: replicas must share the keys, nothing is generated
    with pytest.raises(ConfigError, match=CHAIN_KEY):
        AuditConfig.load(tmp_path / "other", {}, require_keys=True)
    with pytest.raises(ConfigError, match=CHECKPOINT_KEY):
        AuditConfig.load(tmp_path / "other", {CHAIN_KEY: generate_keys_env()[CHAIN_KEY]}, require_keys=True)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "a year"])
def test_retention_and_purge_settings_are_whole_positive_numbers(tmp_path, value):
    from gatehouse.kit.config import ConfigError
    from gatehouse_audit.adapters.config import PURGE_INTERVAL, RETENTION_DAYS

    for variable in (RETENTION_DAYS, PURGE_INTERVAL):
        with pytest.raises(ConfigError, match=variable):
            AuditConfig.load(tmp_path, {variable: value})
    config = AuditConfig.load(tmp_path, {RETENTION_DAYS: "30", PURGE_INTERVAL: "60"})
    assert (config.default_retention_days, config.purge_interval) == (30, 60.0)
    assert AuditConfig.load(tmp_path / "other", generate_keys_env(), require_keys=True).chain_key
