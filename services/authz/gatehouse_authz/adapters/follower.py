"""Keeps the in-memory index in step with the change log.

At start the index loads a consistent snapshot; afterwards the follower polls
the change log by revision (every ``poll_interval``; a read by revision, so no
change is ever missed) and applies changes in order. Checks that ask for
``at_least_revision`` wait on it; ``fully_consistent`` catches up first.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gatehouse.kit import errors
from gatehouse_authz.adapters.store import Store
from gatehouse_authz.domain.index import Index

log = logging.getLogger("gatehouse.authz.follower")


class Follower:
    def __init__(self, store: Store, index: Index, *, poll_interval: float = 0.05):
        self.store = store
        self.index = index
        self.poll_interval = poll_interval
        self._lock = asyncio.Lock()
        self._applied = asyncio.Condition()

    async def load(self) -> None:
        started = time.perf_counter()
        revision, changes = await self.store.snapshot()
        self.index.apply(changes, revision)
        log.info(
            "index loaded: %d items at revision %d in %.2fs",
            len(changes),
            revision,
            time.perf_counter() - started,
        )

    async def catch_up(self) -> int:
        async with self._lock:
            while True:
                batch = await self.store.changes_since(self.index.revision)
                if not batch:
                    break
                for revision, changes in batch:
                    self.index.apply(changes, revision)
        async with self._applied:
            self._applied.notify_all()
        return self.index.revision

    async def wait_for(self, revision: int, timeout: float) -> None:
        """Return once the index applied ``revision``; UNAVAILABLE at the deadline (fail closed)."""
        deadline = time.monotonic() + timeout
        while self.index.revision < revision:
            await self.catch_up()
            if self.index.revision >= revision:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Unavailable(
                    f"revision {revision} not reached (at {self.index.revision})",
                    reason="REVISION_NOT_REACHED",
                    metadata={"revision": str(revision)},
                )
            await asyncio.sleep(min(self.poll_interval, remaining))

    async def run(self) -> None:
        while True:
            try:
                await self.catch_up()
            except Exception:
                log.exception("change log poll failed")
            await asyncio.sleep(self.poll_interval)
