"""The one outbound HTTP client for user-given URLs: what it refuses and the limits it keeps.

Each test starts its own aiohttp servers on loopback. 127.0.0.1 is reached
through the allowlist; 127.0.0.2 (also loopback on Linux) never is, so it
stands for the internal service an attacker wants to reach. DNS is stood in
for by replacing `agentmesh.outbound.lookup`, the one place names resolve.
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpcore2
import httpx2
import openai
import pytest
from aiohttp import web

from agentmesh import outbound
from agentmesh.outbound import (
    BadReply,
    BlockedDestination,
    DeadlineExceeded,
    OutboundPolicy,
    ReplyTooLarge,
    check_url_literal,
    guarded_http_client,
    is_internal,
    post_json,
)
from services.providers.probe import probe

Serve = Callable[..., Awaitable[str]]
MiB = 1024 * 1024

# IPv6 forms carrying an internal IPv4 address; each must be judged by what it carries.
INTERNAL_EMBEDDINGS = [
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",  # IPv4-mapped metadata
    "::ffff:10.0.0.1",  # IPv4-mapped private
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) loopback
    "::127.0.0.1",  # IPv4-compatible loopback
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix, 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 well-known prefix, 127.0.0.1
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64, /96 layout
    "64:ff9b:1:7f00:0:100::",  # local-use NAT64, /48 layout of 127.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
    "2002:c0a8:1::",  # 6to4 of 192.168.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1 (stored inverted)
]
PUBLIC = ["2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::", "1.1.1.1"]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts an aiohttp app on a free loopback port and returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: list[web.RouteDef], host: str = "127.0.0.1") -> str:
        app = web.Application()
        app.add_routes(routes)
        # Handlers of a test that gave up early must not hold teardown for a minute.
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        runners.append(runner)
        return f"http://{host}:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def dns(monkeypatch: pytest.MonkeyPatch, *answers: list[str]) -> list[str]:
    """Stands in for DNS: the n-th lookup gets the n-th answer (the last one thereafter).

    Returns the names looked up, in order.
    """
    asked: list[str] = []

    async def lookup(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        asked.append(host)
        answer = answers[min(len(asked), len(answers)) - 1]
        return [ipaddress.ip_address(address) for address in answer]

    monkeypatch.setattr(outbound, "lookup", lookup)
    return asked


def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the host of every TCP connection actually opened."""
    opened: list[str] = []
    original = httpcore2.AnyIOBackend.connect_tcp

    async def connect_tcp(self: Any, host: str, port: int, **kwargs: Any) -> Any:
        opened.append(host)
        return await original(self, host, port, **kwargs)

    monkeypatch.setattr(httpcore2.AnyIOBackend, "connect_tcp", connect_tcp)
    return opened


def recorder(hits: list[web.Request]) -> web.RouteDef:
    """A route that answers anything and notes it was reached."""

    async def handler(request: web.Request) -> web.Response:
        hits.append(request)
        return web.json_response({"reached": True})

    return web.route("*", "/{tail:.*}", handler)


# --- judging addresses ---------------------------------------------------------------


@pytest.mark.parametrize("address", INTERNAL_EMBEDDINGS)
def test_ipv6_forms_carrying_an_internal_ipv4_address_are_internal(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))
    with pytest.raises(BlockedDestination, match="internal address"):
        check_url_literal(f"http://[{address}]:8080/v1", [])


@pytest.mark.parametrize(
    "url",
    ["http://localhost/", "http://LocalHost./", "http://api.localhost:9/", "http://127.1/"]
    + ["http://0x7f000001/", "http://169.254.169.254/latest/meta-data/"],
)
def test_loopback_names_and_numeric_forms_are_internal(url: str) -> None:
    with pytest.raises(BlockedDestination, match="internal address"):
        check_url_literal(url, [])


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_in_any_form(address: str) -> None:
    assert not is_internal(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    check_url_literal(f"https://{host}/v1", [])


def test_the_allowlist_covers_names_networks_and_what_embeddings_carry() -> None:
    policy = OutboundPolicy(["ollama.internal", "10.0.0.0/8"])
    policy.check("ollama.internal", ipaddress.ip_address("192.168.1.5"))
    policy.check("x.example", ipaddress.ip_address("::ffff:10.1.2.3"))
    with pytest.raises(BlockedDestination):
        policy.check("x.example", ipaddress.ip_address("::ffff:192.168.1.5"))


async def test_every_address_a_name_has_is_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    # One internal address among public ones is enough: a client could be steered to it.
    dns(monkeypatch, ["1.1.1.1", "127.0.0.1"])
    with pytest.raises(BlockedDestination, match="127.0.0.1"):
        await OutboundPolicy().resolve("mixed.test", 80)


# --- the address connected is the address judged -----------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1"])
async def test_a_name_resolving_inside_is_refused_at_connect(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    hits: list[web.Request] = []
    port = (await serve([recorder(hits)])).rsplit(":", 1)[1]
    dns(monkeypatch, [address])
    opened = connections(monkeypatch)
    with pytest.raises(BlockedDestination, match="internal address"):
        await post_json(f"http://inside.test:{port}/", {}, policy=OutboundPolicy(), timeout=5)
    assert opened == [] and hits == []


async def test_dns_rebinding_gains_nothing(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first answer is the allowed one; any later lookup would lead to metadata.
    hits: list[web.Request] = []
    port = (await serve([recorder(hits)])).rsplit(":", 1)[1]
    asked = dns(monkeypatch, ["127.0.0.1"], ["169.254.169.254"])
    opened = connections(monkeypatch)
    reply = await post_json(
        f"http://rebind.test:{port}/hook",
        {"a": 1},
        policy=OutboundPolicy(["127.0.0.1"]),
        timeout=5,
    )
    assert reply == {"reached": True}
    assert asked == ["rebind.test"]  # resolved once
    assert opened == ["127.0.0.1"]  # and the judged address is the one connected
    # The server still sees the name: Host (and SNI, for https) are not the IP.
    assert hits[0].host == f"rebind.test:{port}"


# --- redirects -----------------------------------------------------------------------


async def redirecting_to(serve: Serve, target: str) -> str:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(target)

    return await serve([web.route("*", "/{tail:.*}", handler)])


async def test_a_redirect_to_an_internal_address_is_refused(serve: Serve) -> None:
    hits: list[web.Request] = []
    internal = await serve([recorder(hits)], host="127.0.0.2")
    allowed = await redirecting_to(serve, f"{internal}/latest/meta-data/")
    async with guarded_http_client(OutboundPolicy(["127.0.0.1"]), timeout=5) as client:
        with pytest.raises(BlockedDestination, match="127.0.0.2"):
            await client.get(f"{allowed}/start")
    assert hits == []


async def test_redirects_are_capped(serve: Serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/hop{int(request.path.removeprefix('/hop') or 0) + 1}")

    base = await serve([web.get("/{tail:.*}", handler)])
    async with guarded_http_client(OutboundPolicy(["127.0.0.1"]), timeout=5) as client:
        with pytest.raises(httpx2.TooManyRedirects):
            await client.get(f"{base}/hop0")


async def test_post_json_does_not_follow_redirects(serve: Serve) -> None:
    hits: list[web.Request] = []
    target = await serve([recorder(hits)])
    allowed = await redirecting_to(serve, f"{target}/elsewhere")
    with pytest.raises(BadReply, match="HTTP 302") as error:
        await post_json(allowed, {}, policy=OutboundPolicy(["127.0.0.1"]), timeout=5)
    assert error.value.status_code == 302 and hits == []


# --- size and time -------------------------------------------------------------------


async def test_an_oversized_reply_stops_at_the_cap(serve: Serve) -> None:
    sent = {"bytes": 0, "finished": False}

    async def five_mib(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse()  # chunked: no length announced
        await reply.prepare(request)
        chunk = b"x" * (64 * 1024)
        try:
            while sent["bytes"] < 5 * MiB:
                await reply.write(chunk)
                sent["bytes"] += len(chunk)
                await asyncio.sleep(0.002)  # paced, so kernel buffers cannot take it all at once
            sent["finished"] = True
        except ConnectionError:
            pass
        return reply

    base = await serve([web.post("/", five_mib)])
    with pytest.raises(ReplyTooLarge, match=f"over {MiB} bytes"):
        await post_json(base + "/", {}, policy=OutboundPolicy(["127.0.0.1"]), timeout=10)
    await asyncio.sleep(0.1)  # the server notices the closed connection on its next write
    assert not sent["finished"] and sent["bytes"] < 3 * MiB


async def test_an_announced_oversized_reply_is_refused_unread(serve: Serve) -> None:
    async def two_mib(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (2 * MiB))

    base = await serve([web.post("/", two_mib)])
    with pytest.raises(ReplyTooLarge, match="announced a reply of 2097152 bytes"):
        await post_json(base + "/", {}, policy=OutboundPolicy(["127.0.0.1"]), timeout=5)


async def test_a_compressed_reply_is_refused_where_replies_are_capped(serve: Serve) -> None:
    """256 KiB of gzip that would decode to 256 MiB: under the cap as it arrives, so
    the cap alone would let it through. Capped clients ask for no compression, and
    a server that compresses anyway is refused before its body is read."""
    bomb = gzip.compress(b"0" * (256 * MiB), compresslevel=9)
    asked: list[str] = []

    async def compressed(request: web.Request) -> web.Response:
        asked.append(request.headers.get("accept-encoding", ""))
        return web.Response(body=bomb, headers={"content-encoding": "gzip"})

    base = await serve([web.post("/", compressed), web.get("/models", compressed)])
    policy = OutboundPolicy(["127.0.0.1"])
    with pytest.raises(BadReply, match=r"compressed reply \(gzip\)"):
        await post_json(base + "/", {}, policy=policy, timeout=5)
    client = guarded_http_client(policy, timeout=5, max_reply_bytes=64 * MiB)
    async with client:
        with pytest.raises(BadReply, match="cannot be capped"):
            await client.get(base + "/models")
    assert asked == ["identity", "identity"]


async def trickle(request: web.Request) -> web.StreamResponse:
    """One byte every 0.2 s: every single read is quick, the reply never ends."""
    reply = web.StreamResponse()
    await reply.prepare(request)
    try:
        for _ in range(100):
            await reply.write(b" ")
            await asyncio.sleep(0.2)
    except ConnectionError:
        pass
    return reply


async def test_a_trickling_server_is_cut_off_at_the_deadline(serve: Serve) -> None:
    base = await serve([web.route("*", "/", trickle)])
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="within 1 s"):
        await post_json(base + "/", {}, policy=OutboundPolicy(["127.0.0.1"]), timeout=1)
    assert time.monotonic() - started < 2


async def test_the_client_deadline_covers_the_reply_too(serve: Serve) -> None:
    base = await serve([web.route("*", "/", trickle)])
    policy = OutboundPolicy(["127.0.0.1"])
    started = time.monotonic()
    async with guarded_http_client(policy, timeout=5, deadline=1) as client:
        with pytest.raises(DeadlineExceeded):
            await client.get(base + "/")
    assert time.monotonic() - started < 2


# --- post_json -----------------------------------------------------------------------


async def test_post_json_round_trip(serve: Serve) -> None:
    async def echo(request: web.Request) -> web.Response:
        assert request.headers["authorization"] == "Bearer tool-key"
        return web.json_response({"got": await request.json()})

    base = await serve([web.post("/tool", echo)])
    reply = await post_json(
        base + "/tool",
        {"city": "Oslo"},
        policy=OutboundPolicy(["127.0.0.1"]),
        timeout=5,
        headers={"authorization": "Bearer tool-key"},
    )
    assert reply == {"got": {"city": "Oslo"}}


@pytest.mark.parametrize("status", [200, 500])
async def test_bad_replies_never_quote_the_server(serve: Serve, status: int) -> None:
    async def leaky(request: web.Request) -> web.Response:
        return web.Response(
            status=status, text="not json: sk-secret-123", headers={"x-token": "sk-secret-456"}
        )

    base = await serve([web.post("/hook/sk-path-secret", leaky)])
    with pytest.raises(BadReply) as error:
        await post_json(
            base + "/hook/sk-path-secret?key=sk-q",
            {},
            policy=OutboundPolicy(["127.0.0.1"]),
            timeout=5,
        )
    assert "sk-" not in str(error.value) and error.value.__cause__ is None
    assert str(error.value).startswith(base)


# --- the openai client and TestProvider ----------------------------------------------


async def test_the_openai_client_is_refused_at_connect(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    hits: list[web.Request] = []
    port = (await serve([recorder(hits)])).rsplit(":", 1)[1]
    dns(monkeypatch, ["127.0.0.1"])
    async with openai.AsyncOpenAI(
        base_url=f"http://models.test:{port}/v1",
        api_key="unused",
        max_retries=0,
        http_client=guarded_http_client(OutboundPolicy(), timeout=5),
    ) as client:
        with pytest.raises(openai.APIConnectionError) as error:
            await client.models.list()
    assert isinstance(error.value.__cause__, BlockedDestination)
    assert hits == []


async def model_list(request: web.Request) -> web.Response:
    model = {"id": "stand-in", "object": "model", "created": 0, "owned_by": "tests"}
    return web.json_response({"object": "list", "data": [model]})


async def test_test_provider_works_through_the_guarded_client(serve: Serve) -> None:
    base = await serve([web.get("/v1/models", model_list)])
    result = await probe(f"{base}/v1", "key", "", "stand-in", ["127.0.0.1"])
    assert result.ok and result.models == ["stand-in"], result.message


async def test_test_provider_reports_a_redirect_inside_as_blocked(serve: Serve) -> None:
    internal = await serve([web.get("/v1/models", model_list)], host="127.0.0.2")
    allowed = await redirecting_to(serve, f"{internal}/v1/models")
    result = await probe(f"{allowed}/v1", "key", "", "", ["127.0.0.1"])
    assert not result.ok and result.failure_reason == "BLOCKED"
    assert "127.0.0.2 is 127.0.0.2, an internal address" in result.message


async def test_test_provider_reports_a_name_resolving_inside_as_blocked(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = (await serve([web.get("/v1/models", model_list)])).rsplit(":", 1)[1]
    dns(monkeypatch, ["::ffff:127.0.0.1"])
    result = await probe(f"http://models.test:{port}/v1", "key", "", "", [])
    assert not result.ok and result.failure_reason == "BLOCKED"
    assert "it carries 127.0.0.1" in result.message


async def test_test_provider_times_out_on_a_trickling_server(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.providers.probe.PROBE_SECONDS", 1.0)
    base = await serve([web.get("/v1/models", trickle)])
    started = time.monotonic()
    result = await probe(f"{base}/v1", "key", "", "", ["127.0.0.1"])
    assert result.failure_reason == "TIMEOUT", result.message
    assert time.monotonic() - started < 2
