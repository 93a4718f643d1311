"""Storage of notes (SQLAlchemy; SQLite or PostgreSQL) — the example's own database.

Every function takes the session of the caller's unit of work
(``gatehouse.kit.db.Database.unit_of_work``), so a change and its audit event
commit together.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from gatehouse.kit.outbox import outbox_table
from gatehouse_notes.domain import Note

metadata = sa.MetaData()
outbox_table(metadata)  # audit events wait here until the relay delivered them

notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("workspace_id", sa.String(128), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("creator_id", sa.String(128), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("request_id", sa.String(200), nullable=True, unique=True),
    sa.Index("ix_notes_workspace", "workspace_id", "id"),
)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite gives naive datetimes back; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _note(row) -> Note:
    return Note(
        id=row.id,
        workspace_id=row.workspace_id,
        title=row.title,
        body=row.body,
        creator_id=row.creator_id,
        create_time=_utc(row.create_time),
        update_time=_utc(row.update_time),
        version=row.version,
        request_id=row.request_id,
        delete_time=_utc(row.delete_time),
    )


async def add(session: AsyncSession, note: Note) -> None:
    await session.execute(
        notes.insert().values(
            id=note.id,
            workspace_id=note.workspace_id,
            title=note.title,
            body=note.body,
            creator_id=note.creator_id,
            create_time=note.create_time,
            update_time=note.update_time,
            version=note.version,
            request_id=note.request_id,
        )
    )


async def get(session: AsyncSession, note_id: str, *, include_deleted: bool = False) -> Note | None:
    query = sa.select(notes).where(notes.c.id == note_id)
    if not include_deleted:
        query = query.where(notes.c.delete_time.is_(None))
    row = (await session.execute(query)).first()
    return _note(row) if row else None


async def by_request_id(session: AsyncSession, request_id: str) -> Note | None:
    row = (await session.execute(sa.select(notes).where(notes.c.request_id == request_id))).first()
    return _note(row) if row else None


async def list_page(session: AsyncSession, workspace_id: str, *, after: str, limit: int) -> list[Note]:
    """Live notes of a workspace with id > ``after``, by id (UUIDv7: creation order)."""
    query = (
        sa.select(notes)
        .where(notes.c.workspace_id == workspace_id, notes.c.delete_time.is_(None), notes.c.id > after)
        .order_by(notes.c.id)
        .limit(limit)
    )
    return [_note(row) for row in (await session.execute(query)).all()]


async def update(
    session: AsyncSession, note_id: str, changes: dict, *, expected_version: int | None, when: dt.datetime
) -> bool:
    """Apply ``changes`` and bump the version; False if the note is gone or the version moved on."""
    query = notes.update().where(notes.c.id == note_id, notes.c.delete_time.is_(None))
    if expected_version is not None:
        query = query.where(notes.c.version == expected_version)
    result = await session.execute(query.values(**changes, update_time=when, version=notes.c.version + 1))
    return result.rowcount == 1


async def soft_delete(session: AsyncSession, note_id: str, when: dt.datetime) -> bool:
    result = await session.execute(
        notes.update()
        .where(notes.c.id == note_id, notes.c.delete_time.is_(None))
        .values(delete_time=when, update_time=when)
    )
    return result.rowcount == 1
