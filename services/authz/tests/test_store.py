"""The authz store and follower on SQLite and PostgreSQL: revisions, atomicity, idempotency,
the change log, snapshots, and following another writer (LISTEN/NOTIFY on PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import pytest

from gatehouse.kit import audit_log, errors, outbox
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse_authz.adapters.follower import Follower
from gatehouse_authz.adapters.store import ChangeLogCompacted, Filter, Store
from gatehouse_authz.adapters.tables import changelog
from gatehouse_authz.domain import model as m
from gatehouse_authz.domain.catalog import load_catalog
from gatehouse_authz.domain.index import Index
from gatehouse_authz.server import MIGRATIONS

CATALOG = load_catalog()


def t(rid: str, relation: str, user: str) -> m.Tuple:
    return m.Tuple("workspace", rid, relation, "user", user)


@pytest.fixture
async def store(database_url):
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, database_url)
    db = Database(database_url)
    yield Store(db)
    await db.dispose()


async def test_writes_get_consecutive_revisions_and_a_change_log(store):
    first = await store.write(
        [("touch", t("w", "admin", "a")), ("touch", m.State("membership", "o|a", m.ACTIVE))]
    )
    second = await store.write([("delete", t("w", "admin", "a")), ("touch", t("w", "viewer", "a"))])
    assert (first, second) == (1, 2) and await store.head() == 2
    log = await store.changes_since(0)
    assert [r for r, _ in log] == [1, 2]
    assert log[1][1] == [m.Change("delete", t("w", "admin", "a")), m.Change("put", t("w", "viewer", "a"))]
    revision, snapshot = await store.snapshot()
    assert revision == 2
    assert set(snapshot) == {
        m.Change("put", t("w", "viewer", "a")),
        m.Change("put", m.State("membership", "o|a", m.ACTIVE)),
    }


async def test_concurrent_writers_never_share_or_skip_a_revision(store):
    revisions = await asyncio.gather(
        *(store.write([("touch", t("w", "viewer", f"u{i}"))]) for i in range(12))
    )
    assert sorted(revisions) == list(range(1, 13))
    assert [r for r, _ in await store.changes_since(0)] == list(range(1, 13))


async def test_atomic_preconditions_and_create(store):
    await store.write([("touch", t("w", "owner", "o"))])
    with pytest.raises(errors.FailedPrecondition):
        await store.write(
            [("touch", t("w", "admin", "x")), ("delete", t("w", "owner", "o"))],
            preconditions=[(False, Filter(resource_type="workspace", relation="owner"))],
        )
    with pytest.raises(errors.FailedPrecondition):
        await store.write([("touch", t("w", "admin", "y")), ("create", t("w", "owner", "o"))])
    assert await store.head() == 1
    _, snapshot = await store.snapshot()
    assert snapshot == [m.Change("put", t("w", "owner", "o"))]
    assert (
        await store.write(
            [("touch", t("w", "admin", "x"))],
            preconditions=[(True, Filter(resource_id="w", relation="owner"))],
        )
        == 2
    )


async def test_idempotent_by_request_id(store):
    first = await store.write([("touch", t("w", "viewer", "a"))], request_id="k1")
    again = await store.write([("touch", t("w", "viewer", "b"))], request_id="k1")
    assert again == first and await store.head() == first
    _, snapshot = await store.snapshot()
    assert snapshot == [m.Change("put", t("w", "viewer", "a"))]


async def test_a_committed_write_wakes_the_audit_relay_and_nothing_else_does(store):
    """Audit events of a write go to the outbox in its transaction; the commit wakes the relay at
    once (its poll is only a fallback), a write that changed nothing (failed precondition,
    replayed request id) does not."""

    async def deliver(entries):
        pass

    relay = outbox.OutboxRelay(store.db, audit_log.TOPIC, deliver, poll_interval=30.0)

    async def record(session, revision):
        await outbox.add(session, audit_log.TOPIC, b"event")

    await store.write([("touch", t("w", "owner", "o"))], request_id="r1", after_write=record)
    assert relay._wake.is_set()
    relay._wake.clear()
    with pytest.raises(errors.FailedPrecondition):
        await store.write([("create", t("w", "owner", "o"))], after_write=record)
    replay = await store.write([("touch", t("w", "viewer", "v"))], request_id="r1", after_write=record)
    assert replay == 1 and not relay._wake.is_set()
    await store.write([("delete", t("w", "owner", "o"))], after_write=record)
    assert relay._wake.is_set()


async def test_a_follower_cancelled_right_after_a_wake_stops(store):
    """The server's stop cancels the follower; a wake in the same moment must not eat it."""
    follower = Follower(store, Index(CATALOG), poll_interval=30.0, fallback_interval=30.0)
    await follower.load()
    task = asyncio.create_task(follower.run())
    await asyncio.sleep(0.3)  # following, waiting for a wake
    follower.kick()
    task.cancel()  # in the same loop iteration as the wake
    done, _ = await asyncio.wait({task}, timeout=3)
    assert task in done and task.cancelled()


async def test_follower_applies_another_writers_changes(store, database_url):
    index = Index(CATALOG)
    follower = Follower(store, index)
    await follower.load()
    task = asyncio.create_task(follower.run())
    other = Database(database_url)  # a second writer: another replica's connection pool
    try:
        if store.db.is_postgres:
            for _ in range(100):  # LISTEN is up before we measure
                if follower.listening:
                    break
                await asyncio.sleep(0.02)
            assert follower.listening
        revision = await Store(other).write([("touch", t("w", "owner", "z"))])
        started = time.monotonic()
        await follower.wait_beyond(revision - 1, timeout=5)
        assert index.check(("user", "z"), ("workspace", "w"), "delete:workspace").allowed
        # on PostgreSQL the notification wakes the follower long before its 1 s fallback poll
        assert time.monotonic() - started < (0.8 if store.db.is_postgres else 2.0)
        with pytest.raises(errors.Unavailable):
            await follower.wait_for(revision + 1, timeout=0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await other.dispose()


async def test_a_new_parent_replaces_the_old_one(store):
    await store.write([("touch", m.Tuple("workspace", "w", "parent", "organization", "o1"))])
    await store.write([("touch", m.Tuple("workspace", "w", "parent", "organization", "o2"))])
    _, snapshot = await store.snapshot()
    assert snapshot == [m.Change("put", m.Tuple("workspace", "w", "parent", "organization", "o2"))]
    index = Index(CATALOG)
    for revision, changes in await store.changes_since(0):
        index.apply(changes, revision)
    assert index.parent[("workspace", "w")] == ("organization", "o2")
    assert ("workspace", "w") not in index.children.get(("organization", "o1"), ())


# ---- retention ----------------------------------------------------------------------------


async def _age_change_log(store: Store, up_to: int, seconds: float) -> None:
    """Backdate the change-log entries up to revision ``up_to`` by ``seconds``."""
    import sqlalchemy as sa

    async with store.db.unit_of_work() as uow:
        await uow.session.execute(
            changelog.update()
            .where(changelog.c.revision <= up_to)
            .values(created_at=changelog.c.created_at - sa.literal(seconds))
        )
        await uow.commit()


async def test_pruning_removes_the_oldest_entries_and_keeps_the_newest(store):
    for i in range(5):
        await store.write([("touch", t("w", "viewer", f"u{i}"))])
    await _age_change_log(store, 3, 3600)
    now = time.time()
    assert await store.prune(changes_before=now - 60, requests_before=now - 60) == (3, 0)
    assert [r for r, _ in await store.changes_since(3)] == [4, 5]  # the tail is still followable
    with pytest.raises(ChangeLogCompacted) as gone:
        await store.changes_since(2)  # revision 3 is gone: never a silent skip to 4
    assert (gone.value.since, gone.value.oldest) == (2, 4)
    # Everything is older than the cut: all but the newest entry go (the head stays followable).
    assert await store.prune(changes_before=time.time() + 60, requests_before=0) == (1, 0)
    assert [r for r, _ in await store.changes_since(4)] == [5]
    assert await store.changes_since(5) == []
    assert await store.prune(changes_before=time.time() + 60, requests_before=0) == (0, 0)
    # The data itself is untouched.
    revision, snapshot = await store.snapshot()
    assert revision == 5 and len(snapshot) == 5


async def test_pruned_request_ids_no_longer_deduplicate(store):
    first = await store.write([("touch", t("w", "viewer", "a"))], request_id="r1")
    assert await store.write([("touch", t("w", "viewer", "a"))], request_id="r1") == first
    assert await store.prune(changes_before=0, requests_before=time.time() - 60) == (0, 0)
    assert await store.write([("touch", t("w", "viewer", "a"))], request_id="r1") == first
    assert await store.prune(changes_before=0, requests_before=time.time() + 1) == (0, 1)
    assert await store.write([("touch", t("w", "viewer", "a"))], request_id="r1") == first + 1


async def test_a_follower_behind_the_retention_reloads_a_snapshot(store):
    index = Index(CATALOG)
    follower = Follower(store, index)
    await store.write([("touch", t("w", "admin", "a")), ("touch", t("w", "viewer", "c"))])
    await follower.load()
    assert index.revision == 1
    # While this replica is away: a revocation and a new binding, then the log is pruned past it.
    await store.write([("delete", t("w", "admin", "a"))])
    await store.write([("touch", t("w", "viewer", "b"))])
    await store.write([("touch", t("x", "viewer", "c"))])
    await store.prune(changes_before=time.time() + 60, requests_before=0)
    assert [r for r, _ in await store.changes_since(3)] == [4]

    served = index  # what the servicer holds: the same object must see the reload
    assert await follower.catch_up() == 4
    assert follower.reloads == 1
    assert not served.check(("user", "a"), ("workspace", "w"), "manage:members").allowed  # revoked
    assert served.check(("user", "b"), ("workspace", "w"), "chat").allowed
    assert served.check(("user", "c"), ("workspace", "x"), "chat").allowed
    fresh = Index(CATALOG)
    await store.load_into(fresh)
    assert (served.roles, served.bound, served.revision) == (fresh.roles, fresh.bound, fresh.revision)
    # Back within the log: plain following again, no further reload.
    await store.write([("touch", t("w", "viewer", "d"))])
    assert await follower.catch_up() == 5 and follower.reloads == 1
