"""Runs across runner replicas: where each runs, who may run it, who follows it.

A run executes in exactly one replica at a time, its owner, which holds it by a
lease it renews. This module is what a replica does with runs besides executing
them:
- starts a run here (RunAgent, StreamRun) or queues it for any replica
  (SubmitRun; a run that waits for its conversation) and claims queued ones;
- follows a run's events wherever it runs (in memory here, else from the
  database, where its owner writes them as it goes);
- cancels a run wherever it runs: here, in the database (queued, paused, or its
  owner is gone), or by asking every replica (RunCancelRequested);
- resumes a paused run once its last approval is decided;
- renews its own leases, and takes over runs whose owner was lost: a run no tool
  has begun in since its last safe point (its start, or its resume from a pause)
  runs again from there; any other ends FAILED (RUNNER_LOST), as running a tool
  twice is worse than not finishing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from agentmesh.api import timestamp
from agentmesh.errors import ServiceError, Unavailable
from agentmesh.events import EventBus
from agentmesh.gen.registry.v1 import account_pb2
from agentmesh.gen.runner.v1 import events_pb2, runner_pb2
from agentmesh.ids import utc_now
from services.runner import records
from services.runner.credits import Credits, Hold
from services.runner.event_log import Execution
from services.runner.execute import (
    RUN,
    Executor,
    Resume,
    Start,
    changed_event,
    failure,
)
from services.runner.store import RunnerStore

log = logging.getLogger("agentmesh.runner")

Approval = runner_pb2.Approval
# A run replayed this many times (its runners kept dying) ends FAILED instead.
_MAX_ATTEMPTS = 3
# CancelRun asks again this often while it waits: core NATS may drop a message.
_CANCEL_REPEAT_SECONDS = 1.0
# A caller's stream that breaks this shortly before the replica stops was broken by
# the stop (gRPC cancels calls still open after its grace), not by the caller: the
# run is handed to another replica rather than cancelled.
_HANG_UP_SECONDS = 0.25
_STOPPED = (*records.ENDED, records.AWAITING_APPROVAL)


@dataclass(frozen=True)
class Timing:
    lease: timedelta
    watch_poll: float
    cancel_wait: float


class Dispatcher:
    def __init__(
        self,
        store: RunnerStore,
        executor: Executor,
        credits: Credits,
        events: EventBus,
        timing: Timing,
        on_saved=None,  # type: ignore[no-untyped-def]
    ):
        self._store = store
        self._executor = executor
        self._credits = credits
        self._events = events
        self._timing = timing
        self._on_saved = on_saved or (lambda: None)
        self._background: set[asyncio.Task] = set()

    @property
    def owner(self) -> str:
        return self._executor.owner

    # ---- starting ---------------------------------------------------------------

    async def start(
        self,
        run: records.Run,
        context: Awaitable[dict],
        new_conversation: bool,
        queued: bool,
        streamed: bool = True,
    ) -> tuple[records.Run, Execution | None]:
        """Stores the run and runs it here, or leaves it QUEUED: for any replica
        (`queued`), or behind its conversation's active run (its busy policy). Credits
        are checked first either way; a queued run holds them once it is claimed.
        `streamed`: see Start (a queued run is streamed: it may be watched)."""
        # Not enough credits is RESOURCE_EXHAUSTED now, before anything is stored;
        # reserved while the context is read.
        holding = asyncio.ensure_future(self._credits.hold(f"users/{run.user_id}", run.max_credits))
        try:
            run.start_context = await context
        except Exception:
            # Given back before the caller hears: a refused run changes nothing.
            with contextlib.suppress(Exception):
                await self._credits.settle(await holding, 0)
            raise
        except BaseException:  # cancelled: give it back without waiting
            self._give_back(holding)
            raise
        hold = await holding
        if queued:
            run.state = records.QUEUED
        else:
            run.state, run.owner, run.replayable = records.RUNNING, self.owner, True
            run.attempts = 1
            run.lease_expire_time = utc_now() + self._timing.lease
            run.reservations = [r.name for r in hold.reservations]
        try:
            started = await self._store.start_run(run, new_conversation)
        except BaseException:
            await self._credits.settle(hold, 0)
            raise
        stored = started.run
        if started.repeated or stored.state != records.RUNNING:
            await self._credits.settle(hold, 0)
        if started.repeated:
            return stored, self._executor.active.get(stored.id)
        if stored.state == records.QUEUED:
            self._on_saved()  # its RunQueued event, if it has its conversation
            if stored.interrupts:
                self.cancel_soon(stored.interrupts, f"users/{run.user_id}")
            return stored, None
        start = Start(run.start_context or {}, streamed, new_conversation)
        return stored, self._executor.launch(stored, start, hold)

    def _give_back(self, holding: asyncio.Future) -> None:
        """Releases a hold being reserved for a run that will not start."""

        def release(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                self._spawn(self._credits.settle(done.result(), 0))

        holding.add_done_callback(release)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("a runner background task failed", exc_info=error)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def claim(self, run_id: str) -> bool:
        """A queued run from the work queue: runs here if this replica claims it first.
        False when it had been claimed, cancelled, or is not queued any more."""
        run = await self._store.claim_queued(run_id, self.owner, self._timing.lease)
        if run is None:
            return False
        await self._launch_claimed(run, Start(run.start_context or {}))
        return True

    async def resume_if_decided(self, user_id: str, run_id: str) -> None:
        """Once no call of a paused run waits, the run goes on here: exactly one
        process wins the claim, whichever resolved the last approval."""
        approvals = await self._store.approvals_of(run_id)
        if any(a.state == Approval.STATE_PENDING for a in approvals):
            return
        run = await self._store.claim_paused(run_id, self.owner, self._timing.lease)
        if run is None:
            return
        await self._launch_claimed(run, Resume(run.paused_state or "", _decisions(approvals)))

    async def _launch_claimed(self, run: records.Run, start: Start | Resume) -> None:
        """Runs a run this replica just claimed. Should that fail half-way, the run is
        left to its lease, which is not renewed: a replica takes it over."""
        try:
            hold = await self._credits.hold(f"users/{run.user_id}", run.max_credits)
        except ServiceError as error:
            await self._fail(run, failure(error).SerializeToString())
            return
        run.reservations = [r.name for r in hold.reservations]
        await self._store.set_reservations(run.id, self.owner, run.reservations)
        base = await self._store.last_sequence(run.id)
        self._executor.launch(run, start, hold, base)

    async def _fail(
        self, run: records.Run, error: bytes | None, state: int = records.FAILED
    ) -> None:
        """Ends a run this replica owns but does not execute."""
        run.state, run.error, run.paused_state = state, error, None
        run.end_time = run.update_time = utc_now()
        run.lease_expire_time, run.reservations = None, []
        if await self._store.save_run(
            run, outbox=[changed_event(run)], release_conversation=True, owner=self.owner
        ):
            self._on_saved()

    # ---- following ----------------------------------------------------------------

    async def follow(self, run: records.Run, after: int) -> AsyncIterator[runner_pb2.RunEvent]:
        """The run's events after `after`, then each new one until it ends or pauses,
        wherever it runs: from memory while it runs here, else from the database."""
        while True:
            execution = self._executor.active.get(run.id)
            if execution is not None:
                if after < execution.base:
                    for payload in await self._store.events_after(run.id, after, execution.base):
                        event = runner_pb2.RunEvent.FromString(payload)
                        after = event.sequence
                        yield event
                async for event in execution.events(after):
                    after = event.sequence
                    yield event
                if not execution.lost:
                    return
                continue  # it runs elsewhere now
            payloads = await self._store.events_after(run.id, after)
            for payload in payloads:
                event = runner_pb2.RunEvent.FromString(payload)
                after = event.sequence
                yield event
            if payloads:
                continue
            current = await self._store.run_by_id(run.id)
            if current is None or current.state in _STOPPED:
                # Its last events are written with that state.
                if not await self._store.events_after(run.id, after):
                    return
                continue
            await asyncio.sleep(self._timing.watch_poll)

    async def wait(self, run: records.Run) -> records.Run:
        """The run once it ends or pauses, wherever it runs."""
        while True:
            execution = self._executor.active.get(run.id)
            if execution is not None:
                await execution.done.wait()
                if not execution.lost:
                    return execution.run
            current = await self._store.run_by_id(run.id)
            assert current is not None
            if current.state in _STOPPED:
                return current
            await asyncio.sleep(self._timing.watch_poll)

    # ---- cancelling -----------------------------------------------------------------

    async def cancel(self, user_id: str, run_id: str) -> records.Run:
        """Cancels the run wherever it is and returns it once it ended, or as it is
        after run_cancel_wait_seconds (its owner was asked, and is asked again)."""
        await self._store.get_run(user_id, run_id)  # NotFound for another user's
        return await self._cancel_until_ended(run_id, f"users/{user_id}")

    async def _cancel_until_ended(self, run_id: str, requester: str) -> records.Run:
        deadline = asyncio.get_running_loop().time() + self._timing.cancel_wait
        while True:
            run = await self._store.run_by_id(run_id)
            assert run is not None
            left = deadline - asyncio.get_running_loop().time()
            if run.state in records.ENDED or left <= 0:
                return run
            if not await self._cancel_once(run, requester):
                continue  # it changed state meanwhile: look again
            if execution := self._executor.active.get(run_id):
                try:
                    await asyncio.wait_for(execution.done.wait(), left)
                except TimeoutError:
                    pass
                if not execution.lost:
                    return execution.run
                continue
            if run.state == records.RUNNING:
                await self._wait_for_end(run_id, min(left, _CANCEL_REPEAT_SECONDS))

    def cancel_soon(self, run_id: str, requester: str = "") -> None:
        """Cancels the run wherever it is, in the background (asking its owner again
        until it ended, as CancelRun does)."""
        self._spawn(self._cancel_until_ended(run_id, requester))

    def hung_up(self, run_id: str) -> None:
        """The caller that started the run left: the run ends with it, unless this
        replica is stopping (then the stop broke the call, and the run is handed on)."""

        async def cancel() -> None:
            await asyncio.sleep(_HANG_UP_SECONDS)
            if not self._executor.stopping:
                await self._cancel_until_ended(run_id, "")

        self._spawn(cancel())

    async def _cancel_once(self, run: records.Run, requester: str) -> bool:
        """One attempt; False if the run changed state under it."""
        if self._executor.cancel(run.id):
            return True
        if run.id in self._executor.active:
            return True  # ending already
        if run.state in (records.QUEUED, records.AWAITING_APPROVAL):
            return await self._end_idle(run, records.CANCELLED)
        if run.state != records.RUNNING:
            return True
        if run.lease_expire_time is None or run.lease_expire_time < utc_now():
            # Its owner is gone: it ends here, rather than after a takeover.
            taken = await self._store.take_over(run.id, self.owner, self._timing.lease)
            if taken is None:
                return False
            await self._release_reservations(taken)
            await self._fail(taken, None, records.CANCELLED)
            return True
        await self._events.publish(
            events_pb2.RunCancelRequested(
                run=RUN.format(run.id),
                user=requester,
                time=timestamp(utc_now()),
            )
        )
        return True

    async def _end_idle(self, run: records.Run, state: int) -> bool:
        """Ends a run no replica executes (queued, waiting or paused), if it still is."""
        was = run.state
        run.state, run.paused_state, run.waiting = state, None, False
        run.end_time = run.update_time = utc_now()
        run.lease_expire_time = None
        saved = await self._store.save_run(
            run, outbox=[changed_event(run)], release_conversation=True, expect_state=was
        )
        if saved:
            self._on_saved()
        return saved

    async def _wait_for_end(self, run_id: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while loop.time() < until:
            await asyncio.sleep(min(self._timing.watch_poll, max(until - loop.time(), 0)))
            run = await self._store.run_by_id(run_id)
            if run is None or run.state in records.ENDED or run_id in self._executor.active:
                return

    async def on_cancel_requested(self, event: events_pb2.RunCancelRequested) -> None:
        self._executor.cancel(RUN.id(event.run))

    # ---- leases and takeovers -------------------------------------------------------

    async def renew_leases(self) -> None:
        """Renews the lease of every run live here (one UPDATE); a live run whose lease
        is gone was taken over, and stops here. A run this replica claimed but does
        not run (its start failed half-way) is not renewed: it is taken over."""
        live = [run_id for run_id, e in self._executor.active.items() if not e.finishing]
        held = await self._store.renew_leases(self.owner, live, self._timing.lease)
        for run_id in live:
            if run_id not in held:
                self._executor.lose(run_id)

    def lose_all(self) -> None:
        """This replica cannot renew its leases: others will take its runs over."""
        for run_id in list(self._executor.active):
            self._executor.lose(run_id)

    async def sweep(self) -> None:
        """Takes over runs whose owner was lost; gives free conversations to runs that
        wait for them; announces again queued runs whose message was lost."""
        for run_id in await self._store.expired_leases(utc_now()):
            if run_id not in self._executor.active:  # ours, renewed late: left alone
                await self.take_over(run_id)
        if await self._store.hand_over_free_conversations():
            self._on_saved()
        stalled_before = utc_now() - 4 * self._timing.lease
        if await self._store.requeue_stalled(stalled_before):
            self._on_saved()

    async def take_over(self, run_id: str) -> None:
        run = await self._store.take_over(run_id, self.owner, self._timing.lease)
        if run is None:
            return  # renewed meanwhile, or another replica was first
        await self._release_reservations(run)
        if run.replayable and run.attempts <= _MAX_ATTEMPTS:
            log.warning(
                "runs/%s lost its runner; running it again from its last safe point", run.id
            )
            await self._store.discard_replayed_items(run)
            if run.paused_state:
                decisions = _decisions(await self._store.approvals_of(run.id))
                await self._launch_claimed(run, Resume(run.paused_state, decisions))
            else:
                await self._launch_claimed(run, Start(run.start_context or {}))
            return
        log.warning("runs/%s lost its runner after a tool began; it ends FAILED", run.id)
        why = (
            "the runner running this run was lost, and the run cannot be resumed safely: "
            "a tool had begun since its last saved state"
            if not run.replayable
            else f"the run's runner was lost {run.attempts - 1} times"
        )
        await self._fail(
            run, Unavailable(why, reason="RUNNER_LOST").to_status().SerializeToString()
        )

    async def _release_reservations(self, run: records.Run) -> None:
        """Credits a lost runner held for the run go back now (else at their ttl)."""
        if not run.reservations:
            return
        hold = Hold(f"users/{run.user_id}", run.max_credits)
        hold.reservations = [_reservation(name) for name in run.reservations]
        try:
            await self._credits.settle(hold, 0)
        except ServiceError:
            pass  # settled by the lost runner after all, or expired
        run.reservations = []

    # ---- approvals --------------------------------------------------------------------

    async def expire_approvals(self) -> None:
        """Rejects calls no one decided in time, and lets their runs go on."""
        for approval in await self._store.expired_approvals(Approval.STATE_PENDING, utc_now()):
            await self.expire(approval)
            await self.resume_if_decided(approval.user_id, approval.run_id)

    async def expire(self, approval: records.Approval) -> None:
        reason = f"no one decided by {approval.expire_time.isoformat()}: the call expired"
        await self._store.decide_approval(
            approval, Approval.STATE_EXPIRED, Approval.STATE_PENDING, reason, ""
        )


def _decisions(approvals: list[records.Approval]) -> dict[str, tuple[bool, str]]:
    return {a.call_id: (a.state == Approval.STATE_APPROVED, a.reason) for a in approvals}


def _reservation(name: str) -> account_pb2.Reservation:
    return account_pb2.Reservation(name=name)
