"""Unit of work and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys

import pytest
import sqlalchemy as sa

from gatehouse.kit.db import Database
from gatehouse.kit.migrations import migration_lock, upgrade_to_head

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


def _upgrade_process(database_url: str) -> subprocess.Popen:
    """``python -m gatehouse.kit.migrations`` of authz's tree: a replica's start-up upgrade."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatehouse.kit.migrations",
            str(ROOT / "services/authz/migrations"),
            database_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _tables(database_url: str) -> list[str]:
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            return await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    finally:
        await db.dispose()


async def test_an_upgrade_waits_while_another_process_migrates(database_url):
    with migration_lock(database_url):  # "another replica" is migrating
        proc = _upgrade_process(database_url)
        await asyncio.sleep(1.5)
        assert proc.poll() is None, proc.communicate()[1]  # still waiting for the lock
        assert "changelog" not in await _tables(database_url)
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert "changelog" in await _tables(database_url)


async def test_replicas_starting_together_all_upgrade(database_url):
    """Four processes upgrading one fresh database at once (unlocked, 3 of 4 such trials failed on
    PostgreSQL with duplicate catalog entries): every one succeeds, the schema is at head once."""
    procs = [_upgrade_process(database_url) for _ in range(4)]
    for proc in procs:
        _, err = await asyncio.to_thread(proc.communicate, timeout=90)
        assert proc.returncode == 0, err
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    finally:
        await db.dispose()
    assert len(versions) == 1
