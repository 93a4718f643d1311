"""Authz storage: the source the in-memory index is built from and follows.

Writes take the revision row's lock first (``UPDATE authz_meta``), so writers
are serialized and revisions commit in order: a follower reading the change
log by revision can never skip a change that commits later with a lower number.
Every committed revision has its change-log entry, so the log is gapless; pruning
(:meth:`Store.prune`) only ever removes its oldest entries, so what is left is
every revision after the horizon, and a reader that asks for older ones learns
so (:class:`ChangeLogCompacted`) instead of silently missing them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from gatehouse.kit import errors
from gatehouse.kit.db import Database
from gatehouse_authz.adapters.tables import changelog, meta, relationships, states, write_requests
from gatehouse_authz.domain import model as m

NOTIFY_CHANNEL = "authz_changes"  # PostgreSQL: every write notifies followers at commit
TUPLE_FIELDS = ("resource_type", "resource_id", "relation", "subject_type", "subject_id", "capability")


@dataclass(frozen=True)
class Filter:
    resource_type: str = ""
    resource_id: str = ""
    relation: str = ""
    subject_type: str = ""
    subject_id: str = ""

    def matches(self, t: m.Tuple) -> bool:
        return all(not want or getattr(t, name) == want for name, want in self.__dict__.items())

    def where(self):
        return [relationships.c[name] == want for name, want in self.__dict__.items() if want]


def encode_changes(changes: Iterable[m.Change]) -> str:
    out = []
    for c in changes:
        if isinstance(c.item, m.Tuple):
            out.append({"op": c.op, "t": [getattr(c.item, f) for f in TUPLE_FIELDS]})
        else:
            out.append({"op": c.op, "s": [c.item.kind, c.item.key, c.item.value]})
    return json.dumps(out, separators=(",", ":"))


def decode_changes(text: str) -> list[m.Change]:
    out = []
    for c in json.loads(text):
        item = m.Tuple(*c["t"]) if "t" in c else m.State(*c["s"])
        out.append(m.Change(c["op"], item))
    return out


class ChangeLogCompacted(Exception):
    """The change log no longer holds every revision after ``since``: entries up to
    ``oldest - 1`` were pruned (retention). The reader must start again from a snapshot."""

    def __init__(self, since: int, oldest: int):
        super().__init__(f"the change log starts at revision {oldest}; revisions after {since} are gone")
        self.since, self.oldest = since, oldest


async def _load_copy(copy, load, chunk: int = 5000) -> int:
    """Feed the rows of a ``COPY … TO STDOUT`` to ``load`` in chunks (psycopg parses the format)."""
    count, rows = 0, []
    async for row in copy.rows():
        rows.append(row)
        if len(rows) >= chunk:
            count += load(rows)
            rows = []
    return count + (load(rows) if rows else 0)


class Store:
    def __init__(self, db: Database):
        self.db = db

    async def snapshot(self) -> tuple[int, list[m.Change]]:
        """Current revision and every tuple and state, read consistently."""
        async with self.db.unit_of_work() as uow:
            s = uow.session
            if self.db.is_postgres:
                await s.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            revision = (await s.execute(sa.select(meta.c.revision).where(meta.c.id == 1))).scalar_one()
            changes = [
                m.Change("put", m.Tuple(*(row[f] for f in TUPLE_FIELDS)))
                for row in (await s.execute(sa.select(relationships))).mappings()
            ]
            changes += [
                m.Change("put", m.State(row.kind, row.key, row.value))
                for row in await s.execute(sa.select(states))
            ]
        return revision, changes

    async def load_into(self, index, chunk: int = 20_000) -> tuple[int, int]:
        """Stream every row into ``index`` from one consistent snapshot; returns (revision, rows).

        Rows go from a server-side cursor straight into the index in chunks, with no list
        of the whole data set in between (a million relationships load in seconds and
        the process keeps no transient copy of them).
        """
        async with self.db.unit_of_work() as uow:
            s = uow.session
            if self.db.is_postgres:
                await s.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            revision = (await s.execute(sa.select(meta.c.revision).where(meta.c.id == 1))).scalar_one()
            if self.db.is_postgres:
                count = await self._copy_into(s, index)
                index.revision = max(index.revision, revision)
                return revision, count
            count = 0
            options = {"yield_per": chunk}
            rows = await s.stream(
                sa.select(*(relationships.c[f] for f in TUPLE_FIELDS)), execution_options=options
            )
            async for part in rows.partitions(chunk):
                count += index.load_rows(part)
            state_rows = await s.stream(
                sa.select(states.c.kind, states.c.key, states.c.value), execution_options=options
            )
            async for part in state_rows.partitions(chunk):
                count += index.load_rows((), part)
        index.revision = max(index.revision, revision)
        return revision, count

    async def _copy_into(self, session, index) -> int:
        """PostgreSQL: ``COPY … TO STDOUT`` in the snapshot's transaction, rows parsed as they arrive."""
        connection = await session.connection()
        raw = (await connection.get_raw_connection()).driver_connection
        count = 0
        async with raw.cursor() as cursor:
            columns = ", ".join(TUPLE_FIELDS)
            async with cursor.copy(f"COPY relationships ({columns}) TO STDOUT") as copy:
                count += await _load_copy(copy, index.load_rows)
            async with cursor.copy("COPY states (kind, key, value) TO STDOUT") as copy:
                count += await _load_copy(copy, lambda rows: index.load_rows((), rows))
        return count

    async def head(self) -> int:
        async with self.db.unit_of_work() as uow:
            return (await uow.session.execute(sa.select(meta.c.revision).where(meta.c.id == 1))).scalar_one()

    async def changes_since(self, revision: int, limit: int = 1000) -> list[tuple[int, list[m.Change]]]:
        """The change-log entries after ``revision``, oldest first (at most ``limit``).

        Raises :class:`ChangeLogCompacted` when the entry right after ``revision`` was pruned:
        the log is gapless, so a first entry other than ``revision + 1`` means changes are gone.
        """
        async with self.db.unit_of_work() as uow:
            return await self.changes_in(uow.session, revision, limit)

    @staticmethod
    async def changes_in(
        session, revision: int, limit: int | None = None
    ) -> list[tuple[int, list[m.Change]]]:
        """:meth:`changes_since` through ``session`` (e.g. inside a write holding the revision lock)."""
        query = sa.select(changelog.c.revision, changelog.c.changes).where(changelog.c.revision > revision)
        query = query.order_by(changelog.c.revision)
        rows = (await session.execute(query if limit is None else query.limit(limit))).all()
        if rows and rows[0].revision != revision + 1:
            raise ChangeLogCompacted(revision, rows[0].revision)
        return [(r.revision, decode_changes(r.changes)) for r in rows]

    async def prune(self, *, changes_before: float, requests_before: float) -> tuple[int, int]:
        """Retention: remove change-log entries written before ``changes_before`` and idempotency
        keys recorded before ``requests_before`` (Unix times); returns how many of each.

        Change-log entries go oldest first, up to the newest one written before the cut, and
        the newest entry of all is always kept, so the log stays a gapless run of revisions
        ending at the head (and a replica or watcher one revision behind can always follow).
        """
        async with self.db.unit_of_work() as uow:
            s = uow.session
            newest, cut = (
                await s.execute(
                    sa.select(
                        sa.func.max(changelog.c.revision),
                        sa.select(sa.func.max(changelog.c.revision))
                        .where(changelog.c.created_at < changes_before)
                        .scalar_subquery(),
                    )
                )
            ).one()
            changes = 0
            if cut is not None and min(cut, newest - 1) > 0:
                deleted = await s.execute(
                    changelog.delete().where(changelog.c.revision <= min(cut, newest - 1))
                )
                changes = deleted.rowcount
            requests = (
                await s.execute(write_requests.delete().where(write_requests.c.created_at < requests_before))
            ).rowcount
            await uow.commit()
        return changes, requests

    async def write(
        self,
        updates: list[tuple[str, m.Tuple | m.State]],
        *,
        preconditions: list[tuple[bool, Filter]] = (),
        request_id: str = "",
        select_deletes=None,
        after_write=None,
    ) -> int:
        """Apply ``updates`` (``touch``/``create``/``delete``) atomically; returns the revision.

        ``select_deletes(session)`` may return more tuples to delete, computed
        while the revision lock is held (filtered bulk deletes). ``after_write(session,
        revision)`` runs in the same transaction (e.g. to add audit events to the outbox).
        """
        async with self.db.unit_of_work() as uow:
            s = uow.session
            await s.execute(meta.update().where(meta.c.id == 1).values(revision=meta.c.revision + 1))
            revision = (await s.execute(sa.select(meta.c.revision).where(meta.c.id == 1))).scalar_one()
            if request_id:
                earlier = (
                    await s.execute(
                        sa.select(write_requests.c.revision).where(write_requests.c.request_id == request_id)
                    )
                ).scalar_one_or_none()
                if earlier is not None:
                    return earlier  # rolled back: the revision bump is discarded
            for i, (must_exist, flt) in enumerate(preconditions):
                found = (
                    await s.execute(
                        sa.select(sa.literal(1)).select_from(relationships).where(*flt.where()).limit(1)
                    )
                ).first() is not None
                if found != must_exist:
                    raise errors.FailedPrecondition(
                        f"precondition {i} does not hold ({'must exist' if must_exist else 'must not exist'})",
                        reason="RELATIONSHIP_PRECONDITION_FAILED",
                        metadata={"precondition": str(i)},
                    )
            if select_deletes is not None:
                updates = list(updates) + [("delete", t) for t in await select_deletes(s)]
            applied: list[m.Change] = []
            for op, item in updates:
                if isinstance(item, m.Tuple) and item.relation == "parent" and op != "delete":
                    applied += await self._replace_parent(s, item)
                applied.append(await self._apply(s, op, item, revision))
            await s.execute(
                changelog.insert().values(
                    revision=revision, changes=encode_changes(applied), created_at=time.time()
                )
            )
            if request_id:
                await s.execute(
                    write_requests.insert().values(
                        request_id=request_id, revision=revision, created_at=time.time()
                    )
                )
            if after_write is not None:
                await after_write(s, revision)
            if self.db.is_postgres:
                # Delivered to every LISTENing replica when (and only if) this transaction commits.
                await s.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, str(revision))))
            await uow.commit()
            return revision

    async def _replace_parent(self, s, item: m.Tuple) -> list[m.Change]:
        """A resource has one parent: writing a new one removes the old one (in the change log too)."""
        rows = await s.execute(
            sa.select(*(relationships.c[f] for f in TUPLE_FIELDS)).where(
                relationships.c.resource_type == item.resource_type,
                relationships.c.resource_id == item.resource_id,
                relationships.c.relation == "parent",
            )
        )
        old = [m.Tuple(*row) for row in rows if m.Tuple(*row) != item]
        for t in old:
            await s.execute(
                relationships.delete().where(*(relationships.c[f] == getattr(t, f) for f in TUPLE_FIELDS))
            )
        return [m.Change("delete", t) for t in old]

    async def _apply(self, s, op: str, item, revision: int) -> m.Change:
        if isinstance(item, m.Tuple):
            key = [relationships.c[f] == getattr(item, f) for f in TUPLE_FIELDS]
            exists = (
                await s.execute(sa.select(sa.literal(1)).select_from(relationships).where(*key))
            ).first()
            if op == "delete":
                await s.execute(relationships.delete().where(*key))
                return m.Change("delete", item)
            if exists and op == "create":
                raise errors.FailedPrecondition(
                    f"relationship {item.text()} already exists", reason="RELATIONSHIP_PRECONDITION_FAILED"
                )
            if not exists:
                await s.execute(
                    relationships.insert().values(
                        **{f: getattr(item, f) for f in TUPLE_FIELDS}, revision=revision
                    )
                )
            return m.Change("put", item)
        key = [states.c.kind == item.kind, states.c.key == item.key]
        await s.execute(states.delete().where(*key))
        if op == "delete":
            return m.Change("delete", item)
        await s.execute(
            states.insert().values(kind=item.kind, key=item.key, value=item.value, revision=revision)
        )
        return m.Change("put", item)
