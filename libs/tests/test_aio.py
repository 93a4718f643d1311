"""The kit's small asyncio helpers."""

from __future__ import annotations

import asyncio
import itertools
import logging

from gatehouse.kit.aio import periodic


async def test_periodic_runs_every_interval_and_survives_a_failing_run(caplog):
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def housekeeping() -> None:
        runs.append(loop.time())
        if len(runs) == 2:
            raise RuntimeError("database is down")

    task = asyncio.create_task(
        periodic(housekeeping, 0.05, what="test housekeeping", logger=logging.getLogger("t"))()
    )
    started = loop.time()
    try:
        with caplog.at_level(logging.ERROR, logger="t"):
            for _ in range(1000):  # bounded: 10 s at most on a busy machine
                if len(runs) >= 4:
                    break
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(runs) >= 4  # the failing second run did not end the task
    assert runs[0] - started >= 0.04  # the first run waits one interval
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(runs))  # never spins
    failures = [r for r in caplog.records if "test housekeeping failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info[0] is RuntimeError
