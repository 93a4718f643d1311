"""Small asyncio helpers the services share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set.

    Unlike ``asyncio.wait_for(event.wait(), timeout)`` on Python 3.11, a cancellation that arrives
    just after the event was set is never swallowed (there ``wait_for`` returns the inner result
    instead of raising, so a background loop cancelled at shutdown right after a wake-up kept
    running and the server's stop waited for it forever).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def periodic(
    job: Callable[[], Awaitable[object]],
    interval: float,
    *,
    what: str,
    logger: logging.Logger,
    immediately: bool = False,
) -> Callable[[], Awaitable[None]]:
    """A background task (for ``ServiceSpec.background``) that awaits ``job()`` every ``interval``
    seconds: the first time at start with ``immediately``, else one interval after start. A failing
    run is logged and the next one comes at the next interval, so housekeeping never stops and
    never spins on a broken database."""

    async def run() -> None:
        if not immediately:
            await asyncio.sleep(interval)
        while True:
            try:
                await job()
            except Exception:
                logger.exception("%s failed; trying again in %.0f s", what, interval)
            await asyncio.sleep(interval)

    run.__name__ = run.__qualname__ = f"periodic_{getattr(job, '__name__', 'job')}"
    return run
