"""Keeps the in-memory index in step with the change log.

At start the index loads a consistent snapshot. Afterwards one background task
(:meth:`Follower.run`) reads the change log by revision and applies the
changes in order. What wakes it:

- on PostgreSQL, ``LISTEN authz_changes``: every write sends ``NOTIFY`` in its
  transaction (delivered at commit), so a replica applies another replica's
  write within milliseconds; a slow fallback poll (``fallback_interval``) makes
  a missed notification (dropped listener connection) a delay, never a missed
  change — the read is always "every revision after the one I have";
- on SQLite (one machine, development) polling every ``poll_interval``;
- a caller waiting for ``at_least_revision`` (it nudges the task at once).

A replica that falls behind the change log's retention (disconnected from the
database for longer than it keeps entries) cannot follow the log any more: it
loads a fresh snapshot into a new index and swaps it in, answering from the old
one until then (:meth:`Follower.catch_up`).

Waiting callers never touch the database themselves: they wait on a condition
the follower signals after each applied batch, so a cancelled or timed-out call
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

from gatehouse.kit import errors
from gatehouse.kit.aio import wait_event
from gatehouse_authz.adapters.store import NOTIFY_CHANNEL, ChangeLogCompacted, Store
from gatehouse_authz.domain.index import Index

log = logging.getLogger("gatehouse.authz.follower")
FREEZE_ABOVE = 50_000  # rows loaded at start from which the index is moved out of the GC's sight


async def shielded(coro):
    """Run a database read to completion even if the caller is cancelled.

    A query cancelled half-way makes SQLAlchemy invalidate its connection, and on
    aiosqlite that close can hang a closing event loop; a shielded read just
    finishes (milliseconds) and returns its connection to the pool.
    """
    task = asyncio.ensure_future(coro)
    return await asyncio.shield(task)


class Follower:
    def __init__(
        self,
        store: Store,
        index: Index,
        *,
        poll_interval: float = 0.05,
        fallback_interval: float = 1.0,
    ):
        self.store = store
        self.index = index
        self.poll_interval = poll_interval
        self.fallback_interval = fallback_interval
        self._lock = asyncio.Lock()
        self._applied = asyncio.Condition()
        self._wake = asyncio.Event()
        self._running = False
        self.listening = False  # True while a LISTEN connection is up (PostgreSQL)
        self.load_seconds = 0.0
        self.reloads = 0  # snapshot reloads after falling behind the change log's retention

    async def load(self, index: Index | None = None) -> None:
        """Load a consistent snapshot into ``index`` (default: the served index, at start)."""
        started = time.perf_counter()
        revision, count = await self.store.load_into(self.index if index is None else index)
        if count >= FREEZE_ABOVE:
            # A large index is millions of long-lived objects: keep the cyclic garbage collector
            # from walking them on every full collection (pauses of tens of ms at a million rows).
            gc.collect()
            gc.freeze()
        self.load_seconds = time.perf_counter() - started
        log.info("index loaded: %d items at revision %d in %.2fs", count, revision, self.load_seconds)

    async def _reload(self, compacted: ChangeLogCompacted) -> None:
        """The log no longer reaches back to the index's revision: load a snapshot into a new
        index, then swap it in (checks keep being answered from the old one meanwhile)."""
        log.warning(
            "index at revision %d is behind the change log's retention (it starts at %d): reloading",
            compacted.since,
            compacted.oldest,
            extra={"revision": compacted.since, "oldest_revision": compacted.oldest},
        )
        fresh = Index(self.index.catalog)
        await self.load(fresh)
        self.index.replace_with(fresh)
        self.reloads += 1

    async def catch_up(self) -> int:
        """Apply every committed change after the index's revision; returns the new revision."""
        async with self._lock:
            while True:
                try:
                    batch = await shielded(self.store.changes_since(self.index.revision))
                except ChangeLogCompacted as compacted:
                    await self._reload(compacted)
                    continue
                if not batch:
                    break
                for revision, changes in batch:
                    self.index.apply(changes, revision)
        async with self._applied:
            self._applied.notify_all()
        return self.index.revision

    def kick(self) -> None:
        """Ask the background task for a catch-up read now."""
        self._wake.set()

    async def wait_for(self, revision: int, timeout: float) -> None:
        """Return once the index applied ``revision``; UNAVAILABLE at the deadline (fail closed)."""
        if self.index.revision >= revision:
            return
        deadline = time.monotonic() + timeout
        if not self._running:
            # No background task (start-up not finished, or a test without one): read ourselves.
            await self.catch_up()
        while self.index.revision < revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Unavailable(
                    f"revision {revision} not reached (at {self.index.revision})",
                    reason="REVISION_NOT_REACHED",
                    metadata={"revision": str(revision), "current_revision": str(self.index.revision)},
                )
            self.kick()
            async with self._applied:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._applied.wait(), min(remaining, max(self.poll_interval, 0.01) * 4)
                    )

    async def wait_beyond(self, revision: int, timeout: float) -> bool:
        """Wait until the index is past ``revision`` (for Watch); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.index.revision <= revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            async with self._applied:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._applied.wait(), remaining)
        return True

    async def run(self) -> None:
        """Follow the change log until cancelled."""
        self._running = True
        listener = None
        if self.store.db.is_postgres:
            listener = asyncio.create_task(self._listen(), name="authz-listen")
        failures = 0
        try:
            while True:
                interval = self.fallback_interval if self.listening else self.poll_interval
                await wait_event(self._wake, interval)
                self._wake.clear()
                try:
                    await self.catch_up()
                    failures = 0
                except Exception as exc:
                    # Database unreachable: checks keep answering from the index (and callers who
                    # asked for a newer revision get UNAVAILABLE); retry with back-off up to 1 s.
                    failures += 1
                    if failures == 1:
                        log.exception("change log read failed")
                    else:
                        log.warning("change log read failed again (%d): %s", failures, exc)
                    await asyncio.sleep(min(1.0, self.poll_interval * 2**failures))
        finally:
            self._running = False
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener

    async def _listen(self) -> None:
        """Hold a ``LISTEN`` connection; each notification nudges the follower. Reconnects on failure."""
        import psycopg

        dsn = self.store.db.url.replace("postgresql+psycopg://", "postgresql://", 1)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.listening = True
                    self.kick()  # anything committed before LISTEN took effect
                    async for _ in conn.notifies():
                        self.kick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            finally:
                self.listening = False
            await asyncio.sleep(1.0)
