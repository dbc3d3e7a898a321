"""Refuse URLs that would make the downloader reach internal services (SSRF guard).

A crawl list is untrusted input: a row pointing at ``http://169.254.169.254/`` or
``http://localhost:6379/`` must never be fetched. By default only ``http``/``https`` URLs
whose host is, or resolves only to, public unicast addresses pass. Hosts and networks the
operator trusts (the demo's loopback file server) are allowed explicitly.

The check runs before img2dataset sees the list, so a refused row is never contacted.
Known limit: img2dataset follows HTTP redirects itself, so a public host that redirects to
a private address is not caught here (nor is DNS rebinding between check and fetch);
running the downloaders in a network namespace without routes to internal ranges is the
complete answer at scale (see README, "Download safety").
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]


def _system_resolver(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({info[4][0] for info in infos})


def _is_internal(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class UrlPolicy:
    """What the downloader may reach.

    allow_hosts: host names allowed whatever they resolve to (compared case-insensitively).
    allow_networks: CIDR blocks allowed even though they are internal (e.g. 127.0.0.1/32).
    """

    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    allow_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, entries: Iterable[str] = ()) -> "UrlPolicy":
        """Build a policy from strings: each is an IP, a CIDR block or a host name."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower())
        return cls(frozenset(hosts), tuple(networks))

    def describe(self) -> dict:
        return {
            "allowed_schemes": list(ALLOWED_SCHEMES),
            "allow_hosts": sorted(self.allow_hosts),
            "allow_networks": [str(n) for n in self.allow_networks],
        }

    def _address_allowed(self, address: IPAddress) -> bool:
        return any(address in net for net in self.allow_networks) or not _is_internal(address)

    def check(self, url: str, resolve: Resolver = _system_resolver) -> str | None:
        """Return None when the URL may be fetched, else a short reason (a rejection detail)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # raises ValueError on a malformed port
        except ValueError as err:
            return f"malformed url: {err}"
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return f"scheme not allowed: {parts.scheme or '(none)'}"
        if not host:
            return "no host in url"
        if host.lower() in self.allow_hosts:
            return None
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            return None if self._address_allowed(literal) else f"internal address: {literal}"
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host)]
        except (OSError, UnicodeError) as err:
            return f"host does not resolve: {host} ({err.__class__.__name__})"
        if not addresses:
            return f"host does not resolve: {host}"
        blocked = [a for a in addresses if not self._address_allowed(a)]
        if blocked:
            return f"host {host} resolves to internal address {blocked[0]}"
        return None


def cached_resolver(resolve: Resolver = _system_resolver, maxsize: int = 65536) -> Resolver:
    """A per-run DNS cache: crawl lists repeat hosts many times."""
    return lru_cache(maxsize=maxsize)(lambda host: list(resolve(host)))
