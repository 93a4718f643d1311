"""Database access shared by the services: async engines and a unit of work.

One :class:`Database` per service process. Use cases run inside
``async with db.unit_of_work() as uow:`` — one transaction, committed only when
the block calls ``await uow.commit()``; leaving the block without committing,
or with an exception, rolls everything back (nothing half-written).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator

from sqlalchemy import event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from gatehouse.kit import errors


def create_engine(url: str, **kwargs) -> AsyncEngine:
    """An AsyncEngine for ``sqlite+aiosqlite:///path`` or ``postgresql+psycopg://…``."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_async_engine(url, **kwargs)


def sync_url(url: str) -> str:
    """The synchronous driver URL of an async one (for Alembic)."""
    if url.startswith("sqlite+aiosqlite://"):
        return "sqlite://" + url[len("sqlite+aiosqlite://") :]
    return url


class UnitOfWork:
    """One transaction. ``session`` is the SQLAlchemy session; call :meth:`commit` to keep the work."""

    def __init__(self, session: AsyncSession):
        self.session = session
        self._commit_requested = False

    async def commit(self) -> None:
        """Commit now (the unit of work can go on in a new transaction afterwards)."""
        await self.session.commit()
        self._commit_requested = True

    async def rollback(self) -> None:
        await self.session.rollback()


class Database:
    """Engine plus session factory of one service."""

    def __init__(self, url: str, **engine_kwargs):
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    @contextlib.asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """A transaction that is rolled back unless the block called ``uow.commit()``."""
        try:
            async with self.sessions() as session:
                uow = UnitOfWork(session)
                try:
                    yield uow
                finally:
                    # Anything done after the last commit (or without one) is discarded.
                    await session.rollback()
        except (OperationalError, InterfaceError) as exc:
            if _is_connection_error(exc):
                raise errors.Unavailable("the database is not reachable", dependency="database") from exc
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()


def _is_connection_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in (
            "connection refused",
            "could not connect",
            "connection failed",
            "server closed",
            "timeout",
        )
    )
