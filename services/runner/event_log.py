"""Live runs' events, written to the database as they happen.

A run's events are kept in memory for watchers in its own process (no added
latency: a watcher wakes as an event is appended). A watcher in any other process
reads them from the database, so they are written as the run goes: batched, at
most every FLUSH_SECONDS or every BATCH events, many runs' in one INSERT, off the
run's own path. A run's final save writes whatever is still unwritten; both skip
events already there, so neither can lose or double one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from agentmesh.gen.runner.v1 import runner_pb2
from agentmesh.tasks import cancel
from services.runner import records
from services.runner.store import RunnerStore

log = logging.getLogger("agentmesh.runner")

FLUSH_SECONDS = 0.05
BATCH = 256
# After a failed write (the database is away), the next try.
RETRY_SECONDS = 1.0


@dataclass
class Execution:
    """A run live in this process: its events so far, and who waits for more."""

    run: records.Run
    # Events up to this sequence belong to earlier legs of the run (before a pause,
    # or before its runner was lost), in the database.
    base: int = 0
    log: list[runner_pb2.RunEvent] = field(default_factory=list)
    # The database has every event up to this sequence.
    saved: int = 0
    task: asyncio.Task | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # No tool has begun since the run's safe point: it could be replayed elsewhere.
    replayable: bool = False
    # Another replica has the run (its lease ran out), or will (this one stops).
    lost: bool = False
    # Writing its end: too late to cancel.
    finishing: bool = False
    # Events from this position on (the run's end: approvals asked for, run_finished)
    # are shown only once the run is saved (`done`): no one may act on a pause or an
    # end, e.g. resolve an approval, before the database has it.
    held_from: int | None = None
    on_emit: Callable[[Execution], None] = field(default=lambda _: None, repr=False)

    def __post_init__(self) -> None:
        self.saved = max(self.saved, self.base)

    @property
    def last(self) -> int:
        return self.base + len(self.log)

    def emit(self, **event: Any) -> runner_pb2.RunEvent:
        message = runner_pb2.RunEvent(sequence=self.last + 1, **event)
        self.log.append(message)
        self.changed.set()
        self.on_emit(self)
        return message

    def hold(self) -> None:
        """Events emitted from now on wait for `done` (see held_from)."""
        self.held_from = len(self.log)

    def unsaved(self) -> list[tuple[int, bytes]]:
        """Events the database may not have yet, (sequence, RunEvent)."""
        return [(e.sequence, e.SerializeToString()) for e in self.log[self.saved - self.base :]]

    async def events(self, after: int = 0) -> AsyncIterator[runner_pb2.RunEvent]:
        """Every event of this leg after `after`, then each new one, until the run ends,
        pauses or is lost."""
        position = max(after - self.base, 0)
        while True:
            self.changed.clear()
            done = self.done.is_set()
            while position < self._shown():
                position += 1
                yield self.log[position - 1]
            if done:
                return
            await self.changed.wait()

    def _shown(self) -> int:
        """How many events of this leg watchers may see: held ones once saved; never,
        if the run was lost before it could be."""
        if self.held_from is None or (self.done.is_set() and not self.lost):
            return len(self.log)
        return self.held_from


class EventWriter:
    """Writes live runs' new events in batches, in the background."""

    def __init__(self, store: RunnerStore):
        self._store = store
        self._dirty: dict[str, Execution] = {}
        self._pending = 0
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="runner-event-writer")

    def note(self, execution: Execution) -> None:
        """An execution has a new event: written within FLUSH_SECONDS."""
        self._dirty[execution.run.id] = execution
        self._pending += 1
        if self._pending >= BATCH:
            self._wake.set()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._wake.set)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await self.flush()

    async def flush(self) -> None:
        dirty, self._dirty, self._pending = self._dirty, {}, 0
        rows: list[tuple[str, int, bytes]] = []
        written: list[tuple[Execution, int]] = []
        for execution in dirty.values():
            if events := execution.unsaved():
                rows.extend((execution.run.id, sequence, data) for sequence, data in events)
                written.append((execution, events[-1][0]))
        if not rows:
            return
        try:
            await self._store.append_events(rows)
        except Exception:  # noqa: BLE001 - tried again; a run's final save writes them too
            log.warning("writing %d run events failed; retrying", len(rows), exc_info=True)
            for run_id, execution in dirty.items():
                self._dirty.setdefault(run_id, execution)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(RETRY_SECONDS, self._wake.set)
            return
        for execution, last in written:
            execution.saved = max(execution.saved, last)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            await cancel([self._task])
        with contextlib.suppress(Exception):
            await self.flush()
