"""Calling a provider the way a run will, to say in plain words whether it works."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import openai

from agentmesh.outbound import (
    BlockedDestination,
    OutboundPolicy,
    ReplyTooLarge,
    guarded_http_client,
)

# Where each kind of provider answers the OpenAI API when no base_url is given.
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1/",
    "google": "https://generativelanguage.googleapis.com/v1beta/openai/",
    "huggingface": "https://router.huggingface.co/v1",
}
NEEDS_BASE_URL = {"azure_openai", "custom"}
# Each request, reply included, ends by then: a server trickling bytes holds
# TestProvider no longer than a silent one.
PROBE_SECONDS = 10.0
# A model list from an aggregator runs to a few MiB; more is no provider's answer.
MAX_REPLY_BYTES = 16 * 1024 * 1024


@dataclass
class ProbeResult:
    ok: bool
    message: str
    failure_reason: str = ""
    models: list[str] = field(default_factory=list)
    latency_seconds: float = 0.0


def openai_client(
    base_url: str,
    api_key: str,
    organization: str = "",
    timeout: float = PROBE_SECONDS,
    policy: OutboundPolicy | None = None,
) -> openai.AsyncOpenAI:
    """An openai client whose every connection, redirects included, the policy judges.

    Without a policy nothing internal is allowed.
    """
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "unused",
        organization=organization or None,
        timeout=timeout,
        max_retries=0,
        http_client=guarded_http_client(
            policy or OutboundPolicy(),
            timeout=timeout,
            deadline=timeout,
            max_reply_bytes=MAX_REPLY_BYTES,
        ),
    )


async def probe(
    base_url: str, api_key: str, organization: str, model: str, allow: list[str]
) -> ProbeResult:
    """Lists models; where a server has no model list, asks `model` for one token.

    Messages are ours, never the provider's text: providers echo parts of a
    rejected key back, and that must not reach a response or a log. Where
    the destination is judged is the client's connection (every redirect hop
    too), so what is checked is what is called.
    """
    started = time.perf_counter()
    policy = OutboundPolicy(allow)
    async with openai_client(
        base_url, api_key, organization, timeout=PROBE_SECONDS, policy=policy
    ) as client:
        try:
            try:
                models = [m.id async for m in client.models.list()]
                message = f"listed {len(models)} models at {base_url}"
            except openai.NotFoundError:
                if not model:
                    raise
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
                )
                models, message = [], f"{model} answered a one-token completion at {base_url}"
            if model and models and model not in models:
                return _failure(
                    "MODEL_NOT_FOUND", f"{base_url} does not list the model {model!r}", started
                )
        except openai.AuthenticationError:
            return _failure(
                "UNAUTHENTICATED", f"{base_url} rejected the API key (HTTP 401)", started
            )
        except openai.PermissionDeniedError:
            return _failure(
                "PERMISSION_DENIED", f"{base_url} refused this key access (HTTP 403)", started
            )
        except openai.NotFoundError:
            return _failure(
                "NOT_FOUND",
                f"{base_url} has no OpenAI-compatible API there (HTTP 404); check base_url",
                started,
            )
        except openai.APITimeoutError:
            return _failure(
                "TIMEOUT", f"{base_url} did not answer within {PROBE_SECONDS:g} s", started
            )
        except openai.APIConnectionError as error:
            # The openai client wraps what the guarded transport raised.
            refused = error.__cause__
            if isinstance(refused, BlockedDestination):
                return _failure("BLOCKED", str(refused), started)
            if isinstance(refused, ReplyTooLarge):
                return _failure(
                    "PROVIDER_ERROR",
                    f"{base_url} sent a reply over {MAX_REPLY_BYTES} bytes",
                    started,
                )
            return _failure("UNREACHABLE", _connection_problem(base_url, error), started)
        except openai.APIStatusError as error:
            return _failure(
                "PROVIDER_ERROR", f"{base_url} answered HTTP {error.status_code}", started
            )
    return ProbeResult(True, message, models=models, latency_seconds=_since(started))


def _connection_problem(base_url: str, error: openai.APIConnectionError) -> str:
    cause = type(error.__cause__).__name__ if error.__cause__ else "network error"
    if cause == "ConnectError":
        return f"could not connect to {base_url}: nothing answered (refused, or no route)"
    return f"could not connect to {base_url} ({cause})"


def _since(started: float) -> float:
    return time.perf_counter() - started


def _failure(reason: str, message: str, started: float) -> ProbeResult:
    return ProbeResult(False, message, reason, latency_seconds=_since(started))
