"""Audit storage: idempotent chained ingest, keyset reads, chain walks, purge.

Concurrency of the chains: a transaction that appends to chains locks their
head rows (``SELECT … FOR UPDATE`` in organization order, so two batches never
deadlock; missing heads are created first with ``INSERT … ON CONFLICT DO
NOTHING``), assigns the next sequences and hashes, writes the events and the
new heads, and commits. On PostgreSQL the row lock serializes appenders of one
chain while other chains proceed, and a batch costs two statements besides
BEGIN/COMMIT: one locks the heads and finds the ids already stored, one
inserts the events (``unnest`` of binary array parameters) and moves the heads.
The duplicate check sees the snapshot of that statement's start; if a racing
call (another replica) stores one of the ids in between, the primary key
rejects the insert, the whole transaction rolls back (no gap) and
:meth:`AuditStore.ingest` retries, now seeing it as a duplicate.
On SQLite the first statement of the transaction is the head-row write, which
takes the database's write lock before anything is read, and the duplicate
check runs under it (the store's lock, taken by ingest and purge transactions,
avoids busy waits). Sequences are therefore gapless and assigned in the order
events are stored.

Group commit: a call of 100 events is bounded by its commit (the WAL flush),
so within one store the calls queue and one committer task stores them, one
transaction at a time. The calls queued while a transaction runs go together
into the next one (up to ``MAX_GROUP_EVENTS`` events) as one concatenated batch
— one head lock and duplicate check, one insert, one commit — and each caller
gets its own counts: an id in two queued batches is accepted for the earlier
and a duplicate for the later, and sequences follow the queue order. When a
group's transaction fails (other than by the race above, which is retried),
each of its batches is stored in its own transaction, so only the caller of a
failing batch gets an error. Replicas (other stores) still race only on the
head locks and ids as described above.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, fields

import sqlalchemy as sa
from psycopg.errors import UniqueViolation
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from gatehouse.kit.db import Database
from gatehouse_audit.adapters.tables import chains, events, retention
from gatehouse_audit.domain.chain import GENESIS, ChainKey, canonical_bytes
from gatehouse_audit.domain.model import ChainState, Event, EventFilter, IngestResult
from gatehouse_audit.domain.retention import retention_days_of

EVENT_FIELDS = [f.name for f in fields(Event)]
PAGE = 1000
ATTEMPTS = 5
MAX_GROUP_EVENTS = 5000  # events of queued calls stored in one transaction (a bigger call goes alone)


_COLUMNS = [events.c[name] for name in EVENT_FIELDS]


_CHAIN_STATE = "organization_id, head_sequence, head_hash, anchor_sequence, anchor_hash, anchor_mac"
# PostgreSQL ingest statements (one round trip each). The heads are locked in organization order
# (the sort runs below the row locks) so two batches never deadlock.
_LOCK_AND_FIND = (
    f"WITH heads AS (SELECT {_CHAIN_STATE} FROM {chains.name}"
    " WHERE organization_id = ANY(CAST(%(orgs)b AS text[])) ORDER BY organization_id FOR UPDATE)"
    f" SELECT {_CHAIN_STATE}, NULL AS id FROM heads"
    " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, id"
    f" FROM {events.name} WHERE id = ANY(CAST(%(ids)b AS text[]))"
)


def _array_type(column: sa.Column) -> str:
    if isinstance(column.type, sa.BigInteger):
        return "bigint[]"
    return "bytea[]" if isinstance(column.type, sa.LargeBinary) else "text[]"


_WRITE = (
    f"WITH stored AS (INSERT INTO {events.name} ({', '.join(EVENT_FIELDS)}) SELECT * FROM unnest("
    + ", ".join(f"CAST(%(c{i})b AS {_array_type(events.c[n])})" for i, n in enumerate(EVENT_FIELDS))
    + f")) UPDATE {chains.name} AS c SET head_sequence = h.seq, head_hash = h.hash"
    " FROM unnest(CAST(%(orgs)b AS text[]), CAST(%(seqs)b AS bigint[]),"
    " CAST(%(hashes)b AS bytea[])) AS h(org, seq, hash)"
    " WHERE c.organization_id = h.org"
)


def _event(row) -> Event:
    """An event from a row of ``sa.select(*_COLUMNS)`` (positional: the row is built once)."""
    return Event(*row)


def _state(row) -> ChainState:
    m = row._mapping
    return ChainState(
        m["organization_id"],
        m["head_sequence"],
        m["head_hash"],
        m["anchor_sequence"],
        m["anchor_hash"],
        m["anchor_mac"],
    )


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(eq=False)
class _Call:
    """A queued ingest call: its batch and the answer its caller awaits."""

    batch: Sequence[Event]
    answer: asyncio.Future[IngestResult]


def _split(combined: IngestResult, batches: list[Sequence[Event]]) -> Iterator[IngestResult]:
    """Each batch's own result from the result of the batches stored concatenated: an id stored by
    the group is accepted for the first batch holding it and a duplicate everywhere else."""
    fresh = set(combined.accepted_ids)
    for batch in batches:
        mine = [i for i in dict.fromkeys(e.id for e in batch) if i in fresh]
        fresh.difference_update(mine)
        yield IngestResult(len(mine), len(batch) - len(mine), mine)


def _settle(answer: asyncio.Future[IngestResult], outcome: IngestResult | Exception) -> None:
    if answer.done():  # its caller was cancelled
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)


class AuditStore:
    def __init__(self, db: Database, key: ChainKey):
        self.db = db
        self.key = key
        self._insert = postgresql.insert if db.is_postgres else sqlite.insert
        self._write_lock = asyncio.Lock() if not db.is_postgres else None
        self.retries = 0  # ingest transactions retried after losing a race on an event id
        self.transactions = 0  # ingest transactions committed (one per group of queued calls)
        self._queue: collections.deque[_Call] = collections.deque()
        self._committer: asyncio.Task | None = None

    # ---- appending ----------------------------------------------------------
    async def ingest(self, batch: Sequence[Event]) -> IngestResult:
        """Store the events not stored yet (by id), chained; idempotent under concurrency.

        Group commit: the call queues its batch; one task stores the queued batches a group per
        transaction and answers each caller with its own result. A caller cancelled while queued
        leaves the queue (nothing of it is stored); one cancelled while its group is being stored
        does not stop that transaction (the group runs in the committer task, not in the caller).
        """
        call = _Call(batch, asyncio.get_running_loop().create_future())
        self._queue.append(call)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued())
        try:
            return await call.answer
        except asyncio.CancelledError:
            if call in self._queue:
                self._queue.remove(call)
            raise

    async def _commit_queued(self) -> None:
        """The committer: store the queued calls, one group per transaction, until none is left."""
        group: list[_Call] = []
        try:
            while self._queue:
                group = [self._queue.popleft()]
                size = len(group[0].batch)
                while self._queue and size + len(self._queue[0].batch) <= MAX_GROUP_EVENTS:
                    size += len(self._queue[0].batch)
                    group.append(self._queue.popleft())
                await self._store_group(group)
        finally:
            self._committer = None
            for call in [*group, *self._queue]:  # only if the committer itself was cancelled
                call.answer.cancel()
            self._queue.clear()

    async def _store_group(self, group: list[_Call]) -> None:
        """Store a group's batches in one transaction and answer each caller. If that fails, store
        each batch in its own transaction, so only the caller of a failing batch gets an error."""
        batches = [call.batch for call in group]
        try:
            results = _split(await self._transaction([e for batch in batches for e in batch]), batches)
        except Exception as error:
            if len(group) == 1:
                _settle(group[0].answer, error)
                return
            for call in group:
                if not call.answer.done():  # a cancelled caller's batch is skipped
                    _settle(call.answer, await self._outcome(call.batch))
            return
        for call, result in zip(group, results, strict=True):
            _settle(call.answer, result)

    async def _outcome(self, batch: Sequence[Event]) -> IngestResult | Exception:
        try:
            return await self._transaction(batch)
        except Exception as error:
            return error

    async def _transaction(self, batch: Sequence[Event]) -> IngestResult:
        """Append ``batch`` in one transaction, retried when a racing replica stored one of its ids."""
        for attempt in range(ATTEMPTS):
            try:
                async with self._serialized(), self.db.unit_of_work() as uow:
                    result = await self._append(uow.session, batch)
                    await uow.commit()
                    self.transactions += 1
                    return result
            except (IntegrityError, UniqueViolation):
                # A racing call stored one of these ids first: the retry sees it as a duplicate.
                self.retries += 1
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _serialized(self):
        return self._write_lock if self._write_lock is not None else contextlib.nullcontext()

    async def _lock_heads(self, session, orgs: list[str]) -> dict[str, ChainState]:
        """Lock the head rows of ``orgs`` (creating missing ones) in organization order."""

        async def lock() -> dict[str, ChainState]:
            rows = await session.execute(
                sa.select(chains)
                .where(chains.c.organization_id.in_(orgs))
                .order_by(chains.c.organization_id)
                .with_for_update()
            )
            return {r.organization_id: _state(r) for r in rows}

        if self.db.is_postgres:  # common case: every head exists, one round trip
            heads = await lock()
            if len(heads) == len(orgs):
                return heads
        # SQLite: this write comes first so the transaction holds the write lock before it reads
        empty = [
            {
                "organization_id": org,
                "head_sequence": 0,
                "head_hash": GENESIS,
                "anchor_sequence": 0,
                "anchor_hash": b"",
                "anchor_mac": b"",
            }
            for org in orgs
        ]
        await session.execute(self._insert(chains).values(empty).on_conflict_do_nothing())
        return await lock()

    async def _lock_heads_and_find(
        self, session, orgs: list[str], ids: list[str]
    ) -> tuple[dict[str, ChainState] | None, set[str]]:
        """PostgreSQL, one statement: lock the heads of ``orgs`` (organization order) and return the
        ids of ``ids`` already stored. The heads are None when one of them does not exist yet."""
        heads: dict[str, ChainState] = {}
        existing: set[str] = set()
        async with await self._raw_cursor(session) as cursor:
            await cursor.execute(_LOCK_AND_FIND, {"orgs": orgs, "ids": ids}, binary=True)
            rows = await cursor.fetchall()
        for row in rows:
            if row[0] is None:
                existing.add(row[6])
            else:
                heads[row[0]] = ChainState(*row[:6])
        return (heads if len(heads) == len(orgs) else None), existing

    async def _write(self, session, fresh: list[Event], changed: list[tuple[str, int, bytes]]) -> None:
        """Store the chained events and move the heads: one statement on PostgreSQL."""
        if self.db.is_postgres:
            columns = [[getattr(e, n) for e in fresh] for n in EVENT_FIELDS]
            params = {f"c{i}": column for i, column in enumerate(columns)}
            params.update(orgs=[c[0] for c in changed], seqs=[c[1] for c in changed])
            params["hashes"] = [c[2] for c in changed]
            async with await self._raw_cursor(session) as cursor:
                await cursor.execute(_WRITE, params, binary=True)
            return
        await session.execute(events.insert(), [{n: getattr(e, n) for n in EVENT_FIELDS} for e in fresh])
        await session.execute(
            chains.update()
            .where(chains.c.organization_id == sa.bindparam("b_org"))
            .values(head_sequence=sa.bindparam("b_seq"), head_hash=sa.bindparam("b_hash")),
            [{"b_org": org, "b_seq": seq, "b_hash": h} for org, seq, h in changed],
        )

    @staticmethod
    async def _raw_cursor(session):
        """A psycopg cursor on the session's connection (same transaction); binary parameters skip
        the text quoting of every array element."""
        connection = await (await session.connection()).get_raw_connection()
        return connection.driver_connection.cursor()

    async def _unseen(self, session, candidates: list[Event]) -> list[Event]:
        """SQLite: the candidates whose id is not stored yet."""
        found = await session.execute(
            sa.select(events.c.id).where(events.c.id.in_([e.id for e in candidates]))
        )
        existing = set(found.scalars())
        return [e for e in candidates if e.id not in existing]

    async def _append(self, session, batch: Sequence[Event]) -> IngestResult:
        unique: dict[str, Event] = {}
        for event in batch:
            unique.setdefault(event.id, event)
        fresh = list(unique.values())
        stamp = now_us()
        for event in fresh:
            event.ingest_us = stamp
        messages = {e.id: canonical_bytes(e) for e in fresh}  # the expensive part, outside the lock
        orgs = sorted({e.organization_id for e in fresh})
        if self.db.is_postgres:
            # One round trip: lock the heads and find the ids already stored. An id a racing call
            # stores after this statement's snapshot fails the insert on the primary key, and ingest
            # retries (now seeing it as a duplicate).
            heads, existing = await self._lock_heads_and_find(session, orgs, list(unique))
            if heads is None:
                heads = await self._lock_heads(session, orgs)
            fresh = [e for e in fresh if e.id not in existing]
        else:  # SQLite: the head write takes the write lock first; nobody can race the check after it
            heads = await self._lock_heads(session, orgs)
            fresh = await self._unseen(session, fresh)
        if not fresh:
            return IngestResult(0, len(batch))
        tips = {org: (s.head_sequence, s.head_hash) for org, s in heads.items()}
        settings: dict[str, tuple[int, str]] = {}
        for event in fresh:
            sequence, prev = tips[event.organization_id]
            event.sequence = sequence + 1
            self.key.link(event, prev, messages[event.id])
            tips[event.organization_id] = (event.sequence, event.hash)
            days = retention_days_of(event)
            if days is not None:
                settings[event.organization_id] = (days, event.id)
        changed = [(org, seq, h) for org, (seq, h) in tips.items() if seq != heads[org].head_sequence]
        await self._write(session, fresh, changed)
        for org, (days, event_id) in settings.items():
            stmt = self._insert(retention).values(
                organization_id=org, retention_days=days, source_event_id=event_id
            )
            await session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[retention.c.organization_id],
                    set_={"retention_days": days, "source_event_id": event_id},
                )
            )
        return IngestResult(len(fresh), len(batch) - len(fresh), [e.id for e in fresh])

    # ---- reading ------------------------------------------------------------
    @staticmethod
    def _where(f: EventFilter) -> list:
        conds = []
        if f.organization_ids is not None:
            ids = list(f.organization_ids)
            conds.append(
                events.c.organization_id == ids[0] if len(ids) == 1 else events.c.organization_id.in_(ids)
            )
        if f.workspace_id:
            conds.append(events.c.workspace_id == f.workspace_id)
        if f.actor_id:
            conds.append(events.c.actor_id == f.actor_id)
        if f.action_prefix:
            conds.append(events.c.action.startswith(f.action_prefix, autoescape=True))
        if f.outcome:
            conds.append(events.c.outcome == f.outcome)
        if f.start_us is not None:
            conds.append(events.c.occur_us >= f.start_us)
        if f.end_us is not None:
            conds.append(events.c.occur_us < f.end_us)
        return conds

    async def list(
        self, f: EventFilter, limit: int, after: tuple[int, str] | None = None, *, newest_first: bool = True
    ) -> list[Event]:
        """Up to ``limit`` matching events after the keyset position ``after`` = (occur_us, id)."""
        conds = self._where(f)
        key = sa.tuple_(events.c.occur_us, events.c.id)
        if after is not None:
            conds.append(key < sa.tuple_(*after) if newest_first else key > sa.tuple_(*after))
        order = (
            [events.c.occur_us.desc(), events.c.id.desc()]
            if newest_first
            else [events.c.occur_us.asc(), events.c.id.asc()]
        )
        async with self.db.unit_of_work() as uow:
            rows = await uow.session.execute(sa.select(*_COLUMNS).where(*conds).order_by(*order).limit(limit))
            return [_event(r) for r in rows]

    async def stream(self, f: EventFilter, page: int = 500) -> AsyncIterator[list[Event]]:
        """Every matching event oldest first, one page (one query) at a time: constant memory."""
        after = None
        while True:
            batch = await self.list(f, page, after, newest_first=False)
            if batch:
                yield batch
            if len(batch) < page:
                return
            after = (batch[-1].occur_us, batch[-1].id)

    async def get(self, event_id: str) -> Event | None:
        async with self.db.unit_of_work() as uow:
            row = (await uow.session.execute(sa.select(*_COLUMNS).where(events.c.id == event_id))).first()
            return _event(row) if row else None

    async def chain_state(self, org: str) -> ChainState | None:
        async with self.db.unit_of_work() as uow:
            row = (
                await uow.session.execute(sa.select(chains).where(chains.c.organization_id == org))
            ).first()
            return _state(row) if row else None

    async def chain_ids(self) -> list[str]:
        async with self.db.unit_of_work() as uow:
            return list((await uow.session.execute(sa.select(chains.c.organization_id))).scalars())

    async def walk(self, org: str, first: int, last: int) -> AsyncIterator[Event]:
        """Events of one chain with first ≤ sequence ≤ last, in order, a page per query."""
        position = first
        while position <= last:
            async with self.db.unit_of_work() as uow:
                rows = (
                    await uow.session.execute(
                        sa.select(*_COLUMNS)
                        .where(
                            events.c.organization_id == org,
                            events.c.sequence >= position,
                            events.c.sequence <= last,
                        )
                        .order_by(events.c.sequence)
                        .limit(PAGE)
                    )
                ).all()
            for row in rows:
                yield _event(row)
            if len(rows) < PAGE:
                return
            position = rows[-1].sequence + 1

    async def max_sequence(self, org: str) -> int:
        async with self.db.unit_of_work() as uow:
            found = await uow.session.execute(
                sa.select(sa.func.max(events.c.sequence)).where(events.c.organization_id == org)
            )
            return found.scalar() or 0

    async def event_at(self, org: str, sequence: int) -> Event | None:
        async with self.db.unit_of_work() as uow:
            row = (
                await uow.session.execute(
                    sa.select(*_COLUMNS).where(events.c.organization_id == org, events.c.sequence == sequence)
                )
            ).first()
            return _event(row) if row else None

    async def retention_days(self) -> dict[str, int]:
        async with self.db.unit_of_work() as uow:
            rows = await uow.session.execute(
                sa.select(retention.c.organization_id, retention.c.retention_days)
            )
            return {r.organization_id: r.retention_days for r in rows}

    # ---- retention ----------------------------------------------------------
    async def purge(self, org: str, cutoff_us: int, record, max_events: int = 100_000) -> tuple[int, int]:
        """Remove the oldest events of ``org`` stored before ``cutoff_us``, keep an anchor.

        Removes a prefix of the chain (at most ``max_events``; the next run goes
        on), sets the anchor to the last removed event's sequence and hash (MACed
        with the chain key), and appends ``record(removed, through_sequence)`` —
        the purge's own event — in the same transaction. Returns (removed, through).
        """
        async with self._serialized(), self.db.unit_of_work() as uow:
            s = uow.session
            head = (await self._lock_heads(s, [org]))[org]
            keep_from = (
                await s.execute(
                    sa.select(sa.func.min(events.c.sequence)).where(
                        events.c.organization_id == org, events.c.ingest_us >= cutoff_us
                    )
                )
            ).scalar()
            limit = (keep_from - 1) if keep_from is not None else head.head_sequence
            through = min(limit, head.anchor_sequence + max_events)
            if through <= head.anchor_sequence:
                return 0, head.anchor_sequence
            last = (
                await s.execute(
                    sa.select(events.c.hash).where(
                        events.c.organization_id == org, events.c.sequence == through
                    )
                )
            ).scalar()
            if last is None:  # the chain is already broken there; never purge over a gap
                return 0, head.anchor_sequence
            removed = (
                await s.execute(
                    events.delete().where(events.c.organization_id == org, events.c.sequence <= through)
                )
            ).rowcount
            await s.execute(
                chains.update()
                .where(chains.c.organization_id == org)
                .values(
                    anchor_sequence=through,
                    anchor_hash=last,
                    anchor_mac=self.key.anchor_mac(org, through, last),
                )
            )
            await self._append(s, [record(removed, through)])
            await uow.commit()
            return removed, through
