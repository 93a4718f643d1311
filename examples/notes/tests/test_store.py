"""Storage of the notes example on SQLite and PostgreSQL (one suite, both backends)."""

from __future__ import annotations

import datetime as dt

import pytest

from gatehouse.kit.db import Database
from gatehouse.kit.ids import new_id
from gatehouse.kit.migrations import upgrade_to_head
from gatehouse_notes import store
from gatehouse_notes.domain import Note
from gatehouse_notes.server import MIGRATIONS


@pytest.fixture
async def db(database_url):
    upgrade_to_head(MIGRATIONS, database_url)
    database = Database(database_url)
    yield database
    await database.dispose()


def _note(workspace="w", request_id=None, title="t") -> Note:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    return Note(new_id(), workspace, title, "body", "u1", when, when, request_id=request_id)


async def test_add_get_and_soft_delete(db):
    note = _note(request_id="u1:r1")
    async with db.unit_of_work() as uow:
        await store.add(uow.session, note)
        await uow.commit()
    async with db.unit_of_work() as uow:
        assert await store.get(uow.session, note.id) == note
        assert (await store.by_request_id(uow.session, "u1:r1")).id == note.id
        assert await store.soft_delete(uow.session, note.id, dt.datetime.now(dt.UTC))
        await uow.commit()
    async with db.unit_of_work() as uow:
        assert await store.get(uow.session, note.id) is None
        assert (await store.get(uow.session, note.id, include_deleted=True)).delete_time is not None
        assert not await store.soft_delete(uow.session, note.id, dt.datetime.now(dt.UTC))


async def test_uncommitted_work_is_rolled_back(db):
    note = _note()
    async with db.unit_of_work() as uow:
        await store.add(uow.session, note)
    async with db.unit_of_work() as uow:
        assert await store.get(uow.session, note.id) is None


async def test_update_checks_the_version(db):
    note = _note()
    async with db.unit_of_work() as uow:
        await store.add(uow.session, note)
        await uow.commit()
    when = dt.datetime.now(dt.UTC)
    async with db.unit_of_work() as uow:
        assert await store.update(uow.session, note.id, {"title": "new"}, expected_version=1, when=when)
        assert not await store.update(uow.session, note.id, {"title": "lost"}, expected_version=1, when=when)
        await uow.commit()
    async with db.unit_of_work() as uow:
        current = await store.get(uow.session, note.id)
    assert (current.title, current.version, current.etag) == ("new", 2, "v2")


async def test_list_is_keyset_paginated_per_workspace(db):
    notes = [_note("w") for _ in range(5)] + [_note("other")]
    async with db.unit_of_work() as uow:
        for note in notes:
            await store.add(uow.session, note)
        await uow.commit()
    seen, after = [], ""
    for _ in range(10):
        async with db.unit_of_work() as uow:
            page = await store.list_page(uow.session, "w", after=after, limit=2)
        if not page:
            break
        seen += [n.id for n in page]
        after = page[-1].id
    assert seen == sorted(n.id for n in notes[:5])


async def test_request_id_is_unique(db):
    from sqlalchemy.exc import IntegrityError

    async with db.unit_of_work() as uow:
        await store.add(uow.session, _note(request_id="u1:same"))
        await uow.commit()
    with pytest.raises(IntegrityError):
        async with db.unit_of_work() as uow:
            await store.add(uow.session, _note(request_id="u1:same"))
            await uow.commit()
