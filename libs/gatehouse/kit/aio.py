"""Small asyncio helpers the services share."""

from __future__ import annotations

import asyncio


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
