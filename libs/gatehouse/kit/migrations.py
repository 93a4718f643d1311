"""Alembic migrations, one tree per service (``services/<svc>/migrations``).

``upgrade_to_head`` is what a service runs at start (through a sync engine of
the same database); ``python -m gatehouse.kit.migrations DIR URL`` runs it on
its own. A service's ``migrations/env.py`` is two lines: import its metadata and
call :func:`run_env`.

Replicas of a service start together, and each upgrades at start: the upgrade runs
under a database-wide lock (a PostgreSQL advisory lock; on SQLite an exclusive
``flock`` on a file beside the database), so one process migrates and the others
wait, then find the schema at head. Without it, concurrent upgrades of a fresh
PostgreSQL database failed at start in 3 of 4 trials (duplicate catalog entries).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import pathlib
import sys
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.pool import NullPool

from gatehouse.kit.db import sync_url

log = logging.getLogger("gatehouse.migrations")
MIGRATION_LOCK_KEY = 0x6761_7465_686F  # pg_advisory_lock key of schema upgrades ("gateho")


def alembic_config(script_location: pathlib.Path | str, database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", sync_url(database_url).replace("%", "%%"))
    return cfg


def upgrade_to_head(script_location: pathlib.Path | str, database_url: str) -> None:
    """Apply every pending migration (idempotent), one process at a time per database."""
    path = _sqlite_file(database_url)
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    with migration_lock(database_url):
        command.upgrade(alembic_config(script_location, database_url), "head")


def _sqlite_file(database_url: str) -> str | None:
    """The file of a SQLite database URL (None for other databases and in-memory SQLite)."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split(":///", 1)[1] if ":///" in database_url else ""
    return path if path and path != ":memory:" else None


@contextlib.contextmanager
def migration_lock(database_url: str) -> Iterator[None]:
    """Hold the database's schema-upgrade lock (blocking; a wait is logged once)."""
    if database_url.startswith("postgresql"):
        engine = sa.create_engine(sync_url(database_url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:  # a session-level lock: held until released or disconnected
                key = {"key": MIGRATION_LOCK_KEY}
                if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), key).scalar_one():
                    log.info("waiting for another process's schema upgrade of this database")
                    conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), key)
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), key)
        finally:
            engine.dispose()
        return
    path = _sqlite_file(database_url)
    if path is None:
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process's schema upgrade of %s", path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_env(target_metadata=None) -> None:
    """Body of a service's ``migrations/env.py`` (online mode only)."""
    from alembic import context

    url = context.config.get_main_option("sqlalchemy.url")
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gatehouse.kit.migrations",
        description="Apply a service's Alembic migrations up to head.",
    )
    parser.add_argument(
        "script_location", help="the service's migrations folder, e.g. services/authz/migrations"
    )
    parser.add_argument("database_url", help="sqlite+aiosqlite:///path or postgresql+psycopg://user@host/db")
    args = parser.parse_args(argv)
    print(f"migrating {args.database_url.split('@')[-1]} with {args.script_location} ...", flush=True)
    upgrade_to_head(args.script_location, args.database_url)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def migrate_on_start(script_location: pathlib.Path | str, database_url: str):
    """A start-up hook for :class:`~gatehouse.kit.server.ServiceSpec` that upgrades to head."""
    import asyncio

    async def migrate() -> None:
        await asyncio.to_thread(upgrade_to_head, script_location, database_url)

    return migrate
