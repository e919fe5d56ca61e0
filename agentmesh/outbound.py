"""Outbound calls to user-given URLs must not reach inside the network.

A user who can name a URL the platform calls (a provider's base_url, endpoint
tools and guardrails, webhooks) could otherwise make it talk to internal
services or a cloud metadata endpoint. Private, loopback, link-local and other
non-public addresses are refused unless the operator's allowlist names the
host or a network containing the address.

Every such call goes through one HTTP client (`guarded_http_client`, or
`post_json` on top of it). Its network backend resolves the host once, judges
every address the name has, and connects to the judged address itself, so a
name that answers differently the second time (DNS rebinding) gains nothing,
and each redirect hop is judged again when it connects. Replies have a size
cap and calls an overall deadline, so a hostile server can neither fill memory
nor hold a call past its promised time.

Exception messages name the destination as scheme://host:port and nothing
more: paths and queries of webhook URLs carry tokens, and response bodies and
headers may carry secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.cookiejar
import ipaddress
import json
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import httpcore2
import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# What an endpoint tool, guardrail or webhook may answer: tool results are text
# for a model, and a model's context is far smaller than this.
TOOL_REPLY_BYTES = 1024 * 1024
# Enough for an API that moved (http -> https, a trailing slash); a longer
# chain is a server playing games.
MAX_REDIRECTS = 3


class OutboundError(httpx2.TransportError):
    """A call to a user-given URL was refused or failed; the message says why.

    A transport error of httpx2, so clients built on it (the openai client)
    report it as a connection failure with this exception as the cause.
    """


class BlockedDestination(OutboundError):
    """The URL leads to an address the platform will not call; the message says why."""


class ReplyTooLarge(OutboundError):
    """The reply ran past its size cap; reading stopped there."""


class DeadlineExceeded(OutboundError, httpx2.TimeoutException):
    """The call, reply included, did not finish within its overall deadline."""


class Unreachable(OutboundError):
    """No connection could be made, or the server broke the HTTP exchange."""


class BadReply(OutboundError):
    """The server answered, but not with a 2xx JSON reply."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# IPv6 forms that carry an IPv4 address: traffic to them ends at that IPv4
# host (the kernel for mapped addresses, a NAT64 gateway, a 6to4 or Teredo
# relay), so they are judged by the IPv4 address, never by the IPv6 registry.
_LAST_32_BITS = tuple(
    ipaddress.IPv6Network(network)
    for network in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        "::/96",  # IPv4-compatible (deprecated, still routed by some stacks)
        "64:ff9b::/96",  # NAT64 well-known prefix
    )
)
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")

# Numeric host forms the C resolver accepts as IPv4 without DNS: 127.1, 0x7f.1, 2130706433.
_NUMERIC_HOST = re.compile(r"[0-9][0-9a-fx.]*")


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries; empty for every other address."""
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    value = int(address)
    if any(address in network for network in _LAST_32_BITS):
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if address in _NAT64_LOCAL:
        return _rfc6052_layouts(value)
    if address in _SIX_TO_FOUR and address.sixtofour is not None:
        return (address.sixtofour,)
    if address in _TEREDO and address.teredo is not None:
        return address.teredo  # (server, client)
    return ()


def _rfc6052_layouts(value: int) -> tuple[ipaddress.IPv4Address, ...]:
    # In the local-use NAT64 prefix the site picks the prefix length (48, 56,
    # 64 or 96 bits), and with it where the IPv4 bits sit; nothing in the
    # address says which, so every layout is decoded and each one judged.
    # Bits 64-71 (the "u" octet) never carry IPv4 bits: dropped first.
    stripped = (value >> 64) << 56 | (value & ((1 << 56) - 1))  # 120 bits
    layouts = [(stripped >> (120 - 32 - length)) & 0xFFFFFFFF for length in (48, 56, 64)]
    layouts.append(value & 0xFFFFFFFF)  # /96
    return tuple(ipaddress.IPv4Address(layout) for layout in layouts)


def is_internal(address: IPAddress) -> bool:
    """Whether the platform must not call this address unless the allowlist says so."""
    carried = embedded_ipv4(address)
    if carried:
        return any(is_internal(ipv4) for ipv4 in carried)
    return not address.is_global or address.is_multicast


def _normal_host(host: str) -> str:
    # "Localhost." is localhost: DNS names are case-blind and may end in the root dot.
    return host.lower().rstrip(".")


def _is_localhost(host: str) -> bool:
    # RFC 6761: these names are loopback; they are never sent to DNS, which
    # could be made to answer something else for them.
    return host == "localhost" or host.endswith(".localhost")


def _literal(host: str) -> IPAddress | None:
    """The address an IP-literal host names; None for a name DNS must resolve."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


async def lookup(host: str, port: int) -> list[IPAddress]:
    """Every address DNS gives the name, in its order.

    The one place names are resolved, so tests can stand in for DNS here.
    """
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        # IPv6 link-local addresses come with a zone ("fe80::1%eth0"), kept for connecting.
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


class OutboundPolicy:
    """Which destinations user-given URLs may reach.

    `allow` is the operator's list (setting `outbound_allow`): entries that
    parse as an address or CIDR network allow addresses inside it; any other
    entry is a host name allowed whatever it resolves to.
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._hosts: set[str] = set()
        self._networks: list[IPNetwork] = []
        for entry in allow:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hosts.add(_normal_host(entry))

    def check(self, host: str, address: IPAddress) -> None:
        """Refuses `address` (which `host` led to) if it is internal and not allowed."""
        host = _normal_host(host)
        if host in self._hosts or self._in_allowed_network(address):
            return
        for judged in embedded_ipv4(address) or (address,):
            if self._in_allowed_network(judged) or not is_internal(judged):
                continue
            carries = "" if judged == address else f" (it carries {judged})"
            raise BlockedDestination(
                f"{host} is {address}, an internal address{carries}; an operator can allow it "
                f"with AGENTMESH_OUTBOUND_ALLOW"
            )

    def check_url(self, url: str) -> None:
        """Refuses a URL whose host is an internal IP literal or localhost, without DNS.

        A URL that does not parse passes: calling it fails anyway.
        """
        try:
            host = _normal_host(httpx2.URL(url).host)
        except httpx2.InvalidURL:
            return
        if _is_localhost(host):
            self.check(host, ipaddress.IPv4Address("127.0.0.1"))
            return
        address = _literal(host)
        if address is not None:
            self.check(host, address)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` has, each judged; the caller connects only to these.

        Raises BlockedDestination if any is refused (a name with one internal
        address among public ones could be steered to it), OSError if the name
        does not resolve.
        """
        host = _normal_host(host)
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        elif _is_localhost(host):
            addresses = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
        else:
            addresses = await lookup(host, port)
        if not addresses:
            raise OSError(f"{host} has no address")
        for address in addresses:
            self.check(host, address)
        return addresses

    def _in_allowed_network(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)


def check_url_literal(url: str, allow: Iterable[str]) -> None:
    """Refuses, without DNS, URLs no request can be sent to (see url_problem) and
    those whose host is an internal IP literal or localhost: what a definition may
    not store."""
    if problem := url_problem(url):
        raise BlockedDestination(problem)
    OutboundPolicy(allow).check_url(url)


def url_problem(url: str) -> str | None:
    """Why no HTTP request could be sent to this URL, or None if one could."""
    if not url:
        return None
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        return "a URL cannot hold spaces or control characters"
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        return "not a valid URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "must be an http(s) URL with a host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return "the port must be between 1 and 65535"
    return None


async def check_destination(url: str, allow: Iterable[str]) -> None:
    """Resolves the URL's host and refuses it if any address it has is internal.

    A name that does not resolve passes: the call itself then fails as
    unreachable. This only answers "would it be refused now"; calls go through
    `guarded_http_client`, which judges the address it actually connects to.
    """
    policy = OutboundPolicy(allow)
    policy.check_url(url)
    try:
        parsed = httpx2.URL(url)
        await policy.resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (httpx2.InvalidURL, OSError, UnicodeError):
        return


def _origin(url: httpx2.URL | str) -> str:
    """scheme://host:port: what messages may say about a destination."""
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        return "the URL"
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}"


class GuardedNetworkBackend(httpcore2.AsyncNetworkBackend):
    """Connects only to addresses the policy judged, resolving each host once.

    httpcore hands connect_tcp the URL's host; TLS (SNI, certificate check)
    is started afterwards on the returned stream with that same name, so
    connecting to the IP here changes nothing but which address is reached.
    """

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._backend = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                addresses = await self._policy.resolve(host, port)
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"resolving {host} took over {timeout} s") from None
        except (OSError, UnicodeError) as error:
            raise httpcore2.ConnectError(f"{host} does not resolve") from error
        failure: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:
            try:
                return await self._backend.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as error:
                failure = error  # the next address may answer
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise BlockedDestination("a unix socket is no outbound destination")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class _ReplyStream(httpx2.AsyncByteStream):
    """A reply body that stops at a size cap and at the request's deadline."""

    def __init__(
        self,
        stream: httpx2.AsyncByteStream,
        *,
        origin: str,
        max_bytes: int | None,
        deadline: float | None,
        deadline_seconds: float | None,
    ) -> None:
        self._stream = stream
        self._origin = origin
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._deadline_seconds = deadline_seconds

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        chunks = aiter(self._stream)
        while True:
            scope = asyncio.timeout_at(self._deadline)
            try:
                async with scope:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if scope.expired():
                    raise DeadlineExceeded(
                        f"{self._origin} did not finish its reply within "
                        f"{self._deadline_seconds:g} s"
                    ) from None
                raise
            received += len(chunk)
            if self._max_bytes is not None and received > self._max_bytes:
                raise ReplyTooLarge(
                    f"{self._origin} sent a reply over {self._max_bytes} bytes, the limit"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes milliseconds; one context serves every connection.
    return httpx2.create_ssl_context()


class GuardedTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport on a pool whose connections are judged, with reply limits.

    `deadline` bounds each request (one redirect hop) from sending to the last
    byte of the reply; `max_reply_bytes` bounds each reply body as it arrives.
    Proxies are never used: a proxy resolves names itself, out of our sight.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        max_reply_bytes: int | None = None,
        deadline: float | None = None,
        limits: httpx2.Limits | None = None,
    ) -> None:
        limits = limits or httpx2.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=_ssl_context(), trust_env=False, limits=limits)
        # AsyncHTTPTransport takes no network backend: its pool is replaced by
        # one that has ours, keeping its request building and error mapping.
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(policy),
        )
        self._max_reply_bytes = max_reply_bytes
        self._deadline = deadline

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        origin = _origin(request.url)
        deadline = (
            None if self._deadline is None else asyncio.get_running_loop().time() + self._deadline
        )
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                response = await super().handle_async_request(request)
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded(
                    f"{origin} did not answer within {self._deadline:g} s"
                ) from None
            raise
        declared = response.headers.get("content-length", "")
        if self._max_reply_bytes is not None and declared.isascii() and declared.isdigit():
            if int(declared) > self._max_reply_bytes:
                # Refused before a byte of it is read.
                await response.aclose()
                raise ReplyTooLarge(
                    f"{origin} announced a reply of {declared} bytes, over the "
                    f"{self._max_reply_bytes} byte limit"
                )
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if self._max_reply_bytes is not None and encoding not in ("", "identity"):
            # Asked for none (guarded_http_client): a compressed reply's size is only
            # known after decoding it, and a small one can decode to gigabytes.
            await response.aclose()
            raise BadReply(
                f"{origin} sent a compressed reply ({encoding[:40]}) though none was asked "
                "for; its size cannot be capped",
                response.status_code,
            )
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReplyStream(
                response.stream,
                origin=origin,
                max_bytes=self._max_reply_bytes,
                deadline=deadline,
                deadline_seconds=self._deadline,
            ),
            extensions=response.extensions,
        )


def guarded_http_client(
    policy: OutboundPolicy,
    *,
    timeout: float,
    deadline: float | None = None,
    max_reply_bytes: int | None = None,
    follow_redirects: bool = True,
    max_redirects: int = MAX_REDIRECTS,
) -> httpx2.AsyncClient:
    """An httpx2 client for user-given URLs; pass it as `openai.AsyncOpenAI(http_client=...)`.

    `timeout` bounds each network step (connect, each read, each write);
    `deadline`, if given, each request as a whole, reply included: a model
    stream may rightly run long, so model callers choose it. Redirects are
    followed like the openai client does by default, at most `max_redirects`,
    and each hop is judged when it connects. Cookies a server sets are never kept:
    a client may be shared by many users' calls.
    """
    headers = {}
    if max_reply_bytes is not None:
        # The cap counts bytes as they arrive; uncompressed, that is the size
        # the caller ends up holding, not a small gzip bomb's.
        headers["accept-encoding"] = "identity"
    return httpx2.AsyncClient(
        transport=GuardedTransport(policy, max_reply_bytes=max_reply_bytes, deadline=deadline),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        headers=headers,
        # No proxies from the environment (they resolve names out of our
        # sight) and no .netrc credentials sent to a user's server.
        trust_env=False,
        cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
    )


def post_json_client(
    policy: OutboundPolicy, *, timeout: float, max_reply_bytes: int = TOOL_REPLY_BYTES
) -> httpx2.AsyncClient:
    """A client for `post_json` calls, its connections kept alive between them: for a
    caller that posts often (endpoint tools, endpoint guardrails), which closes it."""
    return guarded_http_client(
        policy, timeout=timeout, max_reply_bytes=max_reply_bytes, follow_redirects=False
    )


async def post_json(
    url: str,
    payload: Any,
    *,
    policy: OutboundPolicy,
    timeout: float,  # noqa: ASYNC109 (the call's deadline, enforced inside with asyncio.timeout)
    max_reply_bytes: int = TOOL_REPLY_BYTES,
    headers: dict[str, str] | None = None,
    client: httpx2.AsyncClient | None = None,
) -> Any:
    """POSTs `payload` as JSON and returns the parsed JSON reply.

    For endpoint tools, endpoint guardrails and webhooks. `timeout` is the
    deadline of the whole call, reply included. Redirects are not followed: a
    POST re-sent elsewhere is not what the user configured. A caller that posts
    often passes its `client` (`post_json_client`, with the same policy and
    `max_reply_bytes`); without one, the call makes its own. Raises only
    OutboundError kinds: BlockedDestination, Unreachable, DeadlineExceeded,
    ReplyTooLarge, BadReply (a non-2xx status, or a reply that is not JSON).
    An empty 2xx reply (a webhook's 204) is None.
    """
    origin = _origin(url)
    policy.check_url(url)  # an internal literal is refused before any connection
    body = bytearray()
    scope = asyncio.timeout(timeout)
    session = (
        post_json_client(policy, timeout=timeout, max_reply_bytes=max_reply_bytes)
        if client is None
        else contextlib.nullcontext(client)
    )
    try:
        async with (
            scope,
            session as http_client,
            http_client.stream(
                "POST", url, json=payload, headers=headers, timeout=timeout
            ) as response,
        ):
            if not 200 <= response.status_code < 300:
                redirect = " (redirects are not followed)" if response.is_redirect else ""
                raise BadReply(
                    f"{origin} answered HTTP {response.status_code}{redirect}",
                    response.status_code,
                )
            # The transport caps the body and refuses compressed ones.
            async for chunk in response.aiter_bytes():
                body += chunk
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded(f"{origin} did not answer within {timeout:g} s") from None
        raise
    except OutboundError:
        raise
    except httpx2.TimeoutException:
        # One step's timeout (equal to the deadline) fired a moment before the deadline.
        raise DeadlineExceeded(f"{origin} did not answer within {timeout:g} s") from None
    except (httpx2.HTTPError, ssl.SSLError, anyio.EndOfStream, anyio.BrokenResourceError) as error:
        # Not chained: protocol errors quote the server's malformed header lines.
        raise Unreachable(f"could not reach {origin} ({type(error).__name__})") from None
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        # Not chained: the decode error holds the body.
        raise BadReply(f"{origin} answered with something other than JSON") from None
