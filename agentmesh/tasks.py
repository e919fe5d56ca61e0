"""Background jobs a service repeats while it runs (sweeps, retention, polls)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from agentmesh.db import unreachable


def every(
    seconds: float, what: str, job: Callable[[], Awaitable[object]], log: logging.Logger
) -> asyncio.Task:
    """Runs job every `seconds` until cancelled; a failure is logged and tried again
    next time. It waits first: the mesh may still be starting the services a job calls."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as error:  # noqa: BLE001 - tried again next time
                if unreachable(error):  # an outage, not a bug: one line a try
                    log.warning("%s failed: the database is unreachable", what)
                else:
                    log.exception("%s failed", what)

    return asyncio.create_task(loop(), name=f"{log.name}: {what}")


async def cancel(tasks: Iterable[asyncio.Task]) -> None:
    """Cancels the tasks and waits until each has ended."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
