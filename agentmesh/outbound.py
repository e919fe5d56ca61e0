"""Outbound calls to user-given URLs must not reach inside the network.

A user who can name a URL the platform calls (a provider's base_url, later
endpoint tools and guardrails) could otherwise make it talk to internal
services or a cloud metadata endpoint. Private, loopback, link-local and other
non-public addresses are refused unless the operator's allowlist names the
host or a network containing the address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit


class BlockedDestination(Exception):
    """The URL leads to an address the platform will not call; the message says why."""


def _networks(allow: Iterable[str]) -> tuple[set[str], list]:
    hosts, networks = set(), []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            hosts.add(entry.lower())
    return hosts, networks


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not address.is_global or address.is_multicast


def _check(host: str, address, hosts: set[str], networks: list) -> None:
    if host in hosts or any(address in network for network in networks):
        return
    if _internal(address):
        raise BlockedDestination(
            f"{host} is {address}, an internal address; an operator can allow it with "
            f"AGENTMESH_OUTBOUND_ALLOW"
        )


def check_url_literal(url: str, allow: Iterable[str]) -> None:
    """Refuses URLs whose host is an internal IP literal or localhost, without DNS."""
    host = (urlsplit(url).hostname or "").lower()
    hosts, networks = _networks(allow)
    if host == "localhost" or host.endswith(".localhost"):
        _check(host, ipaddress.ip_address("127.0.0.1"), hosts, networks)
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: resolved and checked when it is called
    _check(host, address, hosts, networks)


async def check_destination(url: str, allow: Iterable[str]) -> None:
    """Resolves the URL's host and refuses it if any address it has is internal.

    A name that does not resolve passes: the call itself then fails as unreachable.
    """
    check_url_literal(url, allow)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):
        return
    hosts, networks = _networks(allow)
    for *_, sockaddr in infos:
        # IPv6 link-local addresses come with a zone ("fe80::1%eth0").
        _check(host, ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), hosts, networks)
