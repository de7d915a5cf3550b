"""Where a webhook may be sent: the SSRF guard.

In production a partner's URL must not reach the service's own network: a URL naming (or
resolving to) a loopback, private, link-local, shared or otherwise non-public address is refused,
unless PARTNER_WEBHOOK_ALLOW_PRIVATE_TARGETS says the partner's back end lives there.

The check is made on the addresses the connection is actually opened to: the guarded resolver
sits inside aiohttp's connector, so a name that resolves to a public address when the endpoint
is added and to 127.0.0.1 later (DNS rebinding) is caught at the second resolution. An IP
literal never reaches a resolver, so it is checked on its own before the request is sent.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(OSError):
    """The target resolves only to addresses the guard refuses. An OSError, so that aiohttp
    reports it as a connection failure like any other (no request was sent)."""


def is_refused_address(address: IPAddress) -> bool:
    """True for every address that is not on the public internet: loopback, RFC 1918 private,
    link-local (cloud metadata at 169.254.169.254), CGNAT 100.64/10, unique-local fc00::/7,
    multicast, reserved and unspecified. An IPv4-mapped IPv6 address is judged as its IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def refused_literal(url: str) -> bool:
    """True when `url`'s host is an IP literal the guard refuses."""
    host = urlsplit(url).hostname or ""
    address = literal_address(host)
    return address is not None and is_refused_address(address)


def refused_name(url: str) -> bool:
    """Names that cannot be anything but this machine, refused when an endpoint is added
    (resolution itself is judged when sending)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return host == "localhost" or host.endswith(".localhost")


class GuardedResolver(AbstractResolver):
    """The default resolver, keeping only the addresses the guard allows."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if not is_refused_address(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise TargetRefused(
                f"{host} resolves only to private, loopback or link-local addresses"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()
