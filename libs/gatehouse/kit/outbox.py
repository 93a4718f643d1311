"""The transactional outbox: nothing a service promised another is ever lost.

A producer writes an entry with :func:`add` in the *same transaction* as its
domain change, so either both exist or neither does. An :class:`OutboxRelay`
delivers pending entries of one topic in id order and in batches, marking them
delivered only after the receiver acknowledged. On failure an entry stays
pending with exponential back-off (with jitter) — never dropped, never given up.

Delivery is at-least-once (an acknowledgement can be lost after the receiver
stored the entry), so receivers are idempotent by the entry id, which the relay
passes along as the idempotency key. Several relays (replicas) may drain the
same table: a short claim step takes entries with ``FOR UPDATE SKIP LOCKED``
(PostgreSQL) and leases them, so two relays never deliver the same entry at once.

Some topics need order, not just delivery: a later authz write must never
overtake an earlier one that is waiting for a retry (a "remove" would land
before the "add" it undoes). Producers of such a topic key their entries with
:func:`ordered_key` (sorts in creation order within the process, unlike a
UUIDv7 within one millisecond) and run the relay with ``ordered=True``: it
takes entries only from the head of the queue, and nothing while the head waits
for its retry.

A committed :func:`add` wakes this process's relays of its topic at once, so a
relay's poll only covers entries it cannot hear about: retries falling due and
entries written by another process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from gatehouse.kit.aio import wait_event
from gatehouse.kit.db import Database
from gatehouse.kit.ids import new_id

log = logging.getLogger("gatehouse.outbox")

TABLE = "outbox"


def _columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("topic", sa.String(100), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("claimed_until", sa.Float, nullable=True),
        sa.Column("delivered_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    ]


def outbox_table(metadata: sa.MetaData) -> sa.Table:
    """The ``outbox`` table in a service's metadata."""
    return sa.Table(
        TABLE,
        metadata,
        *_columns(),
        sa.Index("ix_outbox_pending", "topic", "delivered_at", "next_attempt_at"),
    )


def create_outbox_table(op) -> None:
    """For a service's initial Alembic migration: ``create_outbox_table(op)``."""
    op.create_table(TABLE, *_columns())
    op.create_index("ix_outbox_pending", TABLE, ["topic", "delivered_at", "next_attempt_at"])


_META = sa.MetaData()
_T = outbox_table(_META)


_key_lock = threading.Lock()
_last_key_ns = [0]
_key_counter = itertools.count()


def ordered_key() -> str:
    """A 36-character entry id that sorts in creation order within this process (ordered topics)."""
    with _key_lock:
        now = max(time.time_ns(), _last_key_ns[0] + 1)
        _last_key_ns[0] = now
    return f"{now:020d}-{next(_key_counter) % 10**6:06d}-{os.urandom(4).hex()}"


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    topic: str
    payload: bytes
    attempts: int


DELIVERED_KEEP = (
    7 * 86400
)  # seconds delivered entries stay for inspection before purge_delivered() drops them

# This process's relays by topic, woken when a transaction that added entries of their topic commits.
_local_relays: dict[str, weakref.WeakSet[OutboxRelay]] = {}


def _wake_after_commit(session: AsyncSession, topic: str) -> None:
    """Wake the local relays of ``topic`` when the session's transaction commits (once)."""
    pending: set[str] = session.info.setdefault("gatehouse_outbox_topics", set())
    if topic in pending:
        return
    pending.add(topic)

    def committed(_sync_session) -> None:
        pending.discard(topic)
        for relay in list(_local_relays.get(topic, ())):
            relay.wake()

    event.listen(session.sync_session, "after_commit", committed, once=True)


async def add(session: AsyncSession, topic: str, payload: bytes, *, key: str | None = None) -> str:
    """Write an entry in the caller's transaction; returns its id (the idempotency key). When the
    transaction commits, this process's relays of ``topic`` are woken."""
    _wake_after_commit(session, topic)
    now = time.time()
    entry_id = key or new_id()
    await session.execute(
        _T.insert().values(
            id=entry_id, topic=topic, payload=payload, created_at=now, attempts=0, next_attempt_at=now
        )
    )
    return entry_id


Deliver = Callable[[list[OutboxEntry]], Awaitable[None]]


class OutboxRelay:
    """Delivers one topic's pending entries to a receiver, with retries and back-off."""

    def __init__(
        self,
        database: Database,
        topic: str,
        deliver: Deliver,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.2,
        base_backoff: float = 0.2,
        max_backoff: float = 30.0,
        lease: float = 30.0,
        ordered: bool = False,
    ):
        self.db = database
        self.topic = topic
        self.deliver = deliver
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.lease = lease
        self.ordered = ordered
        self._wake = asyncio.Event()
        self._stopping = False
        _local_relays.setdefault(topic, weakref.WeakSet()).add(self)

    def wake(self) -> None:
        """Nudge the relay (e.g. right after a producer committed)."""
        self._wake.set()

    async def _claim(self) -> list[OutboxEntry]:
        if self.ordered:
            return await self._claim_head()
        now = time.time()
        async with self.db.unit_of_work() as uow:
            rows = (
                await uow.session.execute(
                    sa.select(_T.c.id, _T.c.topic, _T.c.payload, _T.c.attempts)
                    .where(
                        _T.c.topic == self.topic,
                        _T.c.delivered_at.is_(None),
                        _T.c.next_attempt_at <= now,
                        sa.or_(_T.c.claimed_until.is_(None), _T.c.claimed_until < now),
                    )
                    .order_by(_T.c.id)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            await uow.session.execute(
                _T.update().where(_T.c.id.in_(ids)).values(claimed_until=now + self.lease)
            )
            await uow.commit()
        return [OutboxEntry(r.id, r.topic, r.payload, r.attempts) for r in rows]

    async def _claim_head(self) -> list[OutboxEntry]:
        """Ordered topics: the oldest pending entries, or none while the oldest waits for its retry."""
        now = time.time()
        async with self.db.unit_of_work() as uow:
            rows = (
                await uow.session.execute(
                    sa.select(_T.c.id, _T.c.topic, _T.c.payload, _T.c.attempts, _T.c.next_attempt_at)
                    .where(_T.c.topic == self.topic, _T.c.delivered_at.is_(None))
                    .order_by(_T.c.id)
                    .limit(self.batch_size)
                )
            ).all()
        if not rows or rows[0].next_attempt_at > now:
            return []
        return [OutboxEntry(r.id, r.topic, r.payload, r.attempts) for r in rows]

    def _backoff(self, attempts: int) -> float:
        delay = min(self.max_backoff, self.base_backoff * (2 ** min(attempts, 20)))
        return delay * random.uniform(0.5, 1.0)

    async def drain_once(self) -> int:
        """Deliver one batch; returns how many entries were delivered (0 on failure or none)."""
        batch = await self._claim()
        if not batch:
            return 0
        ids = [e.id for e in batch]
        try:
            await self.deliver(batch)
        except Exception as exc:
            attempts = batch[0].attempts + 1
            retry_at = time.time() + self._backoff(attempts)
            log.warning(
                "outbox delivery failed (%s entries, attempt %s): %s",
                len(batch),
                attempts,
                exc,
                extra={"topic": self.topic},
            )
            async with self.db.unit_of_work() as uow:
                await uow.session.execute(
                    _T.update()
                    .where(_T.c.id.in_(ids))
                    .values(
                        attempts=_T.c.attempts + 1,
                        next_attempt_at=retry_at,
                        claimed_until=None,
                        last_error=str(exc)[:2000],
                    )
                )
                await uow.commit()
            return 0
        async with self.db.unit_of_work() as uow:
            await uow.session.execute(
                _T.update().where(_T.c.id.in_(ids)).values(delivered_at=time.time(), claimed_until=None)
            )
            await uow.commit()
        return len(batch)

    async def drain(self, max_batches: int = 1000) -> int:
        """Deliver until nothing is due (bounded); returns the count delivered."""
        total = 0
        for _ in range(max_batches):
            n = await self.drain_once()
            if n == 0:
                break
            total += n
        return total

    async def run(self) -> None:
        """Deliver forever (until :meth:`stop` or cancellation)."""
        while not self._stopping:
            # Cleared before the drain: a wake() while it runs (an entry committed after its query)
            # leaves the event set and the loop drains again at once instead of after a poll.
            self._wake.clear()
            try:
                delivered = await self.drain_once()
            except Exception:
                log.exception("outbox relay error", extra={"topic": self.topic})
                delivered = 0
            if delivered:
                continue
            await wait_event(self._wake, self.poll_interval)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def is_delivered(self, entry_id: str) -> bool:
        async with self.db.unit_of_work() as uow:
            row = (await uow.session.execute(sa.select(_T.c.delivered_at).where(_T.c.id == entry_id))).first()
        return bool(row and row.delivered_at)

    async def pending_count(self) -> int:
        async with self.db.unit_of_work() as uow:
            return (
                await uow.session.execute(
                    sa.select(sa.func.count()).where(_T.c.topic == self.topic, _T.c.delivered_at.is_(None))
                )
            ).scalar_one()

    async def purge_delivered(self, older_than: float = DELIVERED_KEEP) -> int:
        """Remove entries delivered more than ``older_than`` seconds ago."""
        async with self.db.unit_of_work() as uow:
            result = await uow.session.execute(
                _T.delete().where(
                    _T.c.delivered_at.is_not(None), _T.c.delivered_at < time.time() - older_than
                )
            )
            await uow.commit()
            return result.rowcount or 0
