"""Calling a provider the way a run will, to say in plain words whether it works."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import openai

from agentmesh.outbound import BlockedDestination, check_destination

# Where each kind of provider answers the OpenAI API when no base_url is given.
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com/v1/",
    "google": "https://generativelanguage.googleapis.com/v1beta/openai/",
    "huggingface": "https://router.huggingface.co/v1",
}
NEEDS_BASE_URL = {"azure_openai", "custom"}


@dataclass
class ProbeResult:
    ok: bool
    message: str
    failure_reason: str = ""
    models: list[str] = field(default_factory=list)
    latency_seconds: float = 0.0


def openai_client(
    base_url: str, api_key: str, organization: str = "", timeout: float = 10.0
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "unused",
        organization=organization or None,
        timeout=timeout,
        max_retries=0,
    )


async def probe(
    base_url: str, api_key: str, organization: str, model: str, allow: list[str]
) -> ProbeResult:
    """Lists models; where a server has no model list, asks `model` for one token.

    Messages are ours, never the provider's text: providers echo parts of a
    rejected key back, and that must not reach a response or a log.
    """
    started = time.perf_counter()
    try:
        await check_destination(base_url, allow)
    except BlockedDestination as blocked:
        return _failure("BLOCKED", str(blocked), started)
    async with openai_client(base_url, api_key, organization) as client:
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
            return _failure("TIMEOUT", f"{base_url} did not answer within 10 s", started)
        except openai.APIConnectionError as error:
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
