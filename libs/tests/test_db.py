"""Unit of work and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import pathlib

import pytest
import sqlalchemy as sa

from gatehouse.kit.db import Database
from gatehouse.kit.migrations import upgrade_to_head

ROOT = pathlib.Path(__file__).resolve().parents[2]
meta = sa.MetaData()
items = sa.Table(
    "items", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50))
)


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    yield database
    await database.dispose()


async def count(db: Database) -> int:
    async with db.unit_of_work() as uow:
        return (await uow.session.execute(sa.select(sa.func.count()).select_from(items))).scalar_one()


async def test_commit_keeps_the_work(db):
    async with db.unit_of_work() as uow:
        await uow.session.execute(items.insert().values(id=1, name="a"))
        await uow.commit()
    assert await count(db) == 1


async def test_no_commit_rolls_back(db):
    async with db.unit_of_work() as uow:
        await uow.session.execute(items.insert().values(id=1, name="a"))
    assert await count(db) == 0


async def test_exception_rolls_back(db):
    with pytest.raises(RuntimeError):
        async with db.unit_of_work() as uow:
            await uow.session.execute(items.insert().values(id=1, name="a"))
            raise RuntimeError("boom")
    assert await count(db) == 0


async def test_work_after_commit_without_second_commit_is_discarded(db):
    async with db.unit_of_work() as uow:
        await uow.session.execute(items.insert().values(id=1, name="a"))
        await uow.commit()
        await uow.session.execute(items.insert().values(id=2, name="b"))
    assert await count(db) == 1


@pytest.mark.parametrize("service", ["identity", "tenancy", "authz", "audit"])
async def test_service_migrations_create_tables_and_are_idempotent(database_url, service):
    script = ROOT / "services" / service / "migrations"
    upgrade_to_head(script, database_url)
    upgrade_to_head(script, database_url)
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        assert "outbox" in tables and "alembic_version" in tables
    finally:
        await db.dispose()
