"""The identity store on SQLite and PostgreSQL: the conditional updates races depend on, sequences, throttle."""

from __future__ import annotations

import asyncio
import time

import pytest

from gatehouse.kit import errors
from gatehouse.kit.db import Database
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse_identity.adapters.store import Store
from gatehouse_identity.domain import model as m
from gatehouse_identity.server import MIGRATIONS


@pytest.fixture
async def store(database_url):
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, database_url)
    db = Database(database_url)
    yield Store(db)
    await db.dispose()


def a_user(user_id: str, email: str) -> m.User:
    now = time.time()
    return m.User(user_id, email, "U", m.ACTIVE, False, 1, now, now, "hash")


async def seed_session(store: Store, user_id: str = "u1", session_id: str = "s1") -> None:
    now = time.time()
    async with store.transaction() as tx:
        if await tx.get_user(user_id) is None:
            await tx.insert_user(a_user(user_id, f"{user_id}@example.com"))
        await tx.insert_session(m.Session(session_id, user_id, ("pwd",), now, now + 3600))
        await tx.insert_refresh_token(f"h-{session_id}", session_id, now)
        await tx.commit()


async def test_revocation_sequences_are_dense_and_ordered_under_concurrency(store):
    async def revoke(i: int) -> int:
        async with store.transaction() as tx:
            seq = await tx.append_revocation(f"s{i}", "u", time.time(), time.time() + 60)
            await tx.commit()
            return seq

    sequences = await asyncio.gather(*(revoke(i) for i in range(20)))
    assert sorted(sequences) == list(range(1, 21))
    async with store.transaction() as tx:
        listed = await tx.list_revocations(0, 100, time.time())
        later = await tx.list_revocations(10, 100, time.time())
        gone = await tx.list_revocations(0, 100, time.time() + 120)  # all expired by then
    assert [r.sequence for r in listed] == list(range(1, 21))
    assert [r.sequence for r in later] == list(range(11, 21))
    assert gone == []


async def test_a_refresh_token_is_used_once_even_concurrently(store):
    await seed_session(store)

    async def use() -> bool:
        async with store.transaction() as tx:
            won = await tx.use_refresh_token("h-s1", time.time())
            await tx.commit()
            return won

    results = await asyncio.gather(*(use() for _ in range(5)))
    assert results.count(True) == 1


async def test_revoke_session_publishes_once(store):
    await seed_session(store)
    async with store.transaction() as tx:
        session = await tx.get_session("s1")
        assert await tx.revoke_session(session, m.LOGOUT, time.time(), 60)
        assert not await tx.revoke_session(session, m.LOGOUT, time.time(), 60)
        await tx.commit()
        assert [r.session_id for r in await tx.list_revocations(0, 10, time.time())] == ["s1"]
        assert (await tx.get_session("s1")).revoke_reason == m.LOGOUT


async def test_throttle_locks_at_threshold_and_clears(store):
    now = time.time()
    async with store.transaction() as tx:
        results = [
            await tx.record_failure("e", now + i, window=60, threshold=3, duration=30) for i in range(3)
        ]
        assert results[:2] == [None, None] and results[2] == pytest.approx(now + 2 + 30)
        assert await tx.locked_until("e", now + 10) == results[2]
        assert await tx.locked_until("e", now + 40) is None  # lock over
        # after the lock a failure starts a new window
        assert await tx.record_failure("e", now + 40, window=60, threshold=3, duration=30) is None
        await tx.clear_failures("e")
        assert await tx.locked_until("e", now) is None
        await tx.commit()


async def test_totp_steps_recovery_and_reset_tokens_are_single_use(store):
    await seed_session(store)
    now = time.time()
    async with store.transaction() as tx:
        await tx.put_pending_totp("u1", b"sealed", now)
        await tx.confirm_totp("u1", 10)
        assert (await tx.get_user("u1")).mfa_enabled
        assert [await tx.use_totp_step("u1", s) for s in (10, 9, 11, 11)] == [False, False, True, False]
        await tx.replace_recovery_codes("u1", ["c1", "c2"])
        assert [await tx.use_recovery_code("u1", "c1", now) for _ in range(2)] == [True, False]
        assert not await tx.use_recovery_code("u2", "c2", now)  # another user's code
        await tx.insert_reset_token("r1", "u1", now, now + 60)
        await tx.insert_reset_token("r2", "u1", now - 120, now - 60)
        assert await tx.use_reset_token("r1", now) == "u1"
        assert await tx.use_reset_token("r1", now) is None
        assert await tx.use_reset_token("r2", now) is None  # expired
        await tx.delete_totp("u1")
        assert not (await tx.get_user("u1")).mfa_enabled
        await tx.commit()


async def test_unique_violations_are_already_exists(store):
    async with store.transaction() as tx:
        await tx.insert_user(a_user("u1", "same@example.com"))
        await tx.commit()
    with pytest.raises(errors.AlreadyExists):
        async with store.transaction() as tx:
            await tx.insert_user(a_user("u2", "same@example.com"))


async def test_update_user_checks_the_version(store):
    async with store.transaction() as tx:
        await tx.insert_user(a_user("u1", "v@example.com"))
        assert await tx.update_user("u1", expected_version=1, display_name="A")
        assert not await tx.update_user("u1", expected_version=1, display_name="B")
        assert (await tx.get_user("u1")).display_name == "A"
        await tx.commit()
