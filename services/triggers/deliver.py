"""Sends deliveries: signed POSTs through the outbound guard, retried with backoff.

Every replica claims due deliveries (webhooks_store) and sends them at once,
each over the guarded HTTP client every user-given URL goes through: a URL
that leads to a private, loopback or link-local address is refused when it
connects (and on every redirect hop, though a POST is never redirected here).
A 2xx answer delivers; anything else, or no answer, is tried again after a
backoff that doubles each time, until the last attempt leaves the delivery DEAD.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from datetime import timedelta

import anyio
import httpx2
from cryptography.exceptions import InvalidTag

from agentmesh.ids import utc_now
from agentmesh.outbound import OutboundError, OutboundPolicy, guarded_http_client
from agentmesh.tasks import cancel
from services.triggers.records import Attempt
from services.triggers.signatures import Sealer, sign
from services.triggers.webhooks_store import WebhookStore

log = logging.getLogger("agentmesh.triggers")

_BATCH = 32
# Past its timeout an attempt is over; the claim lasts a little longer, so it
# never runs out under an attempt still going.
_CLAIM_MARGIN = timedelta(seconds=5)


def subscription_owner(user_id: str, subscription_id: str) -> str:
    """What a subscription's sealed secret is bound to."""
    return f"users/{user_id}/subscriptions/{subscription_id}"


class Deliverer:
    def __init__(
        self,
        store: WebhookStore,
        sealer: Sealer,
        policy: OutboundPolicy,
        *,
        timeout: float,
        attempts: int,
        backoff: float,
        backoff_max: float,
        poll_seconds: float,
    ):
        self._store = store
        self._sealer = sealer
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._backoff_max = backoff_max
        self._poll_seconds = poll_seconds
        # Replies are not read: only their status counts.
        self._client = guarded_http_client(
            policy, timeout=timeout, deadline=timeout, follow_redirects=False
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="triggers: deliveries")

    def notify(self) -> None:
        """Deliveries were recorded: send them now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel([self._task])
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                while await self.deliver_due() == _BATCH:
                    pass
            except Exception:  # noqa: BLE001 - the database is away: tried next time
                log.warning("sending deliveries failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            self._wake.clear()

    async def deliver_due(self) -> int:
        """Claims the deliveries due now and makes one attempt of each; how many."""
        lease = timedelta(seconds=self._timeout) + _CLAIM_MARGIN
        claimed = await self._store.claim_attempts(utc_now(), lease, _BATCH)
        await asyncio.gather(*(self._attempt(attempt) for attempt in claimed))
        return len(claimed)

    async def _attempt(self, attempt: Attempt) -> None:
        status, error = await self._post(attempt)
        delivered = 200 <= status < 300
        now = utc_now()
        made = attempt.attempts + 1
        retry_at = None
        if not delivered and made < self._attempts:
            delay = min(self._backoff * 2 ** (made - 1), self._backoff_max)
            retry_at = now + timedelta(seconds=delay)
        await self._store.attempted(attempt, delivered, status, error, now, retry_at)

    async def _post(self, attempt: Attempt) -> tuple[int, str]:
        """The HTTP status the attempt got (0: none), and what went wrong, if anything."""
        try:
            secret = self._sealer.open(
                attempt.sealed_secret, subscription_owner(attempt.user_id, attempt.subscription_id)
            )
        except InvalidTag:
            return 0, "the signing secret cannot be opened: the service token changed"
        body = attempt.payload.encode()
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": attempt.id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(secret, attempt.id, stamp, body),
            "user-agent": "agentmesh-webhooks",
        }
        try:
            async with self._client.stream(
                "POST", attempt.url, content=body, headers=headers
            ) as response:
                status = response.status_code
        except OutboundError as refused:
            # Its message names only scheme://host:port, never the URL's path.
            return 0, str(refused)
        except httpx2.TimeoutException:
            return 0, f"no answer within {self._timeout:g} s"
        except (
            httpx2.HTTPError,
            ssl.SSLError,
            anyio.EndOfStream,
            anyio.BrokenResourceError,
        ) as failed:
            # Not quoted: protocol errors quote the server's header lines.
            return 0, f"could not reach the URL ({type(failed).__name__})"
        if 200 <= status < 300:
            return status, ""
        return status, f"HTTP {status}"
