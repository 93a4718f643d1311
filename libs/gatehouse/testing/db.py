"""Database fixtures: every database test runs on SQLite and on PostgreSQL.

``database_url`` gives a fresh, empty database per test: a file under tmp_path
for SQLite, a uniquely named database (dropped afterwards) on the PostgreSQL at
127.0.0.1:5432. Without PostgreSQL the PostgreSQL variant is skipped locally,
and fails when ``CI=true``.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

__all__ = ["database_url", "make_database_url", "pg_admin_dsn", "postgres_available"]

PG_HOST = os.environ.get("GATEHOUSE_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("GATEHOUSE_TEST_PG_USER", "postgres")


def pg_admin_dsn() -> str:
    return f"host={PG_HOST} port=5432 user={PG_USER} dbname=postgres connect_timeout=3"


def postgres_available() -> bool:
    try:
        with psycopg.connect(pg_admin_dsn()):
            return True
    except psycopg.Error:
        return False


def _require_postgres() -> None:
    if postgres_available():
        return
    if os.environ.get("CI") == "true":
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
    pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")


def create_pg_database() -> tuple[str, str]:
    """Create a fresh database; returns (name, async URL)."""
    name = f"gh_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://{PG_USER}@{PG_HOST}:5432/{name}"


def drop_pg_database(name: str) -> None:
    with psycopg.connect(pg_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_database_url(kind: str, tmp_path, label: str, cleanups: list) -> str:
    """A fresh database of ``kind`` (``sqlite`` or ``postgresql``); registers its cleanup."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / (label + '.db')}"
    _require_postgres()
    name, url = create_pg_database()
    cleanups.append(lambda: drop_pg_database(name))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    cleanups: list = []
    url = make_database_url(request.param, tmp_path, "test", cleanups)
    yield url
    for cleanup in cleanups:
        cleanup()
