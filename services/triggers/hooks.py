"""Inbound webhooks: `POST /hooks/{trigger}` starts a run with the request's body.

The sender holds no API key; it proves itself with the trigger's secret, the
Standard Webhooks way: a signature over the webhook-id, the timestamp and the
body. A timestamp off the clock by more than the tolerance is refused, and so
is a webhook-id the trigger accepted before, so a request someone recorded
cannot be sent again. The run is the trigger owner's, with the request id
"trigger:{trigger}:{webhook-id}".
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from cryptography.exceptions import InvalidTag
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmesh.http import BodyTooLarge, read_body
from agentmesh.ids import utc_now
from services.triggers.records import Trigger
from services.triggers.signatures import WEBHOOK_ID, Sealer, verify
from services.triggers.targets import StartFailed, Targets
from services.triggers.triggers_store import TriggerStore

log = logging.getLogger("agentmesh.triggers")


def trigger_owner(user_id: str, trigger_id: str) -> str:
    """What a trigger's sealed secret is bound to."""
    return f"users/{user_id}/triggers/{trigger_id}"


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class InboundHooks:
    def __init__(
        self,
        store: TriggerStore,
        targets: Targets,
        sealer: Sealer,
        *,
        tolerance_seconds: float,
        max_bytes: int,
    ):
        self._store = store
        self._targets = targets
        self._sealer = sealer
        self._tolerance = tolerance_seconds
        self._max_bytes = max_bytes
        self.routes = [Route("/hooks/{trigger}", self.receive, methods=["POST"])]

    async def receive(self, request: Request) -> JSONResponse:
        trigger_id = request.path_params["trigger"]
        trigger = await self._store.find_trigger(trigger_id) if len(trigger_id) <= 64 else None
        if trigger is None:
            return _refused(404, "no such trigger")
        try:
            body = await read_body(request, self._max_bytes)
        except BodyTooLarge:
            return _refused(413, f"the body is over {self._max_bytes} bytes")
        except ClientDisconnect:
            return _refused(400, "the request ended early")
        webhook_id = request.headers.get("webhook-id", "")
        if problem := self._unsigned(trigger, request, webhook_id, body):
            return _refused(401, problem)
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return _refused(400, "the body must be UTF-8 text")
        if not text:
            return _refused(400, "the body is the run's input: it cannot be empty")
        if not await self._store.remember(trigger.id, webhook_id, utc_now()):
            return _refused(409, "this webhook-id was received already")
        try:
            run = await self._targets.start(
                trigger.user_id, trigger.target, text, f"trigger:{trigger.id}:{webhook_id}"
            )
        except StartFailed as failed:
            await self._store.forget(trigger.id, webhook_id)  # the sender may try again
            if failed.transient:
                return _refused(503, "the run cannot be started now; try again")
            log.info("triggers/%s started no run: %s", trigger.id, failed.status.message)
            return _refused(422, failed.status.message)
        return JSONResponse({"run": run}, status_code=202)

    def _unsigned(self, trigger: Trigger, request: Request, webhook_id: str, body: bytes) -> str:
        """Why the request is not the trigger's secret's holder's, or "" if it is."""
        stamp = request.headers.get("webhook-timestamp", "")
        signature = request.headers.get("webhook-signature", "")
        if not (webhook_id and stamp and signature):
            return "send webhook-id, webhook-timestamp and webhook-signature"
        if not WEBHOOK_ID.fullmatch(webhook_id):
            return "webhook-id must be at most 64 of A-Z a-z 0-9 _ . : -"
        if (
            # isascii: str.isdigit takes "²", which int() refuses.
            not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12)
            or abs(time.time() - int(stamp)) > self._tolerance
        ):
            return f"webhook-timestamp is not within {self._tolerance:g} s of the server's clock"
        try:
            secret = self._sealer.open(
                trigger.sealed_secret, trigger_owner(trigger.user_id, trigger.id)
            )
        except InvalidTag:
            log.error(
                "the secret of triggers/%s cannot be opened: the service token changed?", trigger.id
            )
            return "the signature does not match"
        if not verify(secret, webhook_id, int(stamp), body, signature):
            return "the signature does not match"
        return ""

    async def forget_old_receipts(self) -> None:
        """Receipts past twice the tolerance: a replay of one would carry a timestamp
        refused anyway."""
        await self._store.forget_before(utc_now() - timedelta(seconds=2 * self._tolerance))
