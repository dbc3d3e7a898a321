"""Refuse URLs that would make the downloader reach internal services (SSRF guard).

A crawl list is untrusted input: a row pointing at ``http://169.254.169.254/`` or
``http://localhost:6379/`` must never be fetched. By default only ``http``/``https`` URLs
whose host is, or resolves only to, public unicast addresses pass. Hosts and networks the
operator trusts (the demo's loopback file server) are allowed explicitly.

The policy is applied twice: on the driver before img2dataset sees the list (a refused row is
never contacted), and again by :mod:`curation.fetch` on every connection it makes, every
redirect hop included, against the very address it then connects to (so neither a redirect
to an internal address nor DNS that changes between the check and the fetch gets through).

Memory: the policy is a few allowed entries; :func:`cached_resolver` keeps up to 65,536
host names per run.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable
from urllib.parse import urlsplit

from infra.contract import IngestReason

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
        """Return None when the URL may be fetched, else a short reason (a rejection detail).
        A host the operator allowed by name is not resolved here (the fetch resolves it)."""
        try:
            self.addresses(url, resolve, resolve_allowed_hosts=False)
        except Refused as refused:
            return str(refused)
        return None

    def addresses(self, url: str, resolve: Resolver = _system_resolver,
                  resolve_allowed_hosts: bool = True) -> list[IPAddress]:
        """The addresses the URL's host may be reached at (every one it resolves to passed the
        policy), in resolver order; raise :class:`Refused` with the reason otherwise."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # raises ValueError on a malformed port
        except ValueError as err:
            raise Refused(IngestReason.INVALID_URL, f"malformed url: {err}") from None
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise Refused(IngestReason.INVALID_URL, f"scheme not allowed: {parts.scheme or '(none)'}")
        if not host:
            raise Refused(IngestReason.INVALID_URL, "no host in url")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if host.lower() in self.allow_hosts and not resolve_allowed_hosts:
            return []
        if literal is not None:
            if host.lower() in self.allow_hosts or self._address_allowed(literal):
                return [literal]
            raise Refused(IngestReason.BLOCKED_ADDRESS, f"internal address: {literal}")
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host)]
        except (OSError, UnicodeError) as err:
            raise Refused(IngestReason.DNS_FAILURE, f"host does not resolve: {host} ({err.__class__.__name__})") from None
        if not addresses:
            raise Refused(IngestReason.DNS_FAILURE, f"host does not resolve: {host}")
        if host.lower() in self.allow_hosts:
            return addresses
        blocked = [a for a in addresses if not self._address_allowed(a)]
        if blocked:
            raise Refused(IngestReason.BLOCKED_ADDRESS, f"host {host} resolves to internal address {blocked[0]}")
        return addresses


class Refused(ValueError):
    """A URL the policy does not let through: ``reason`` (invalid_url, blocked_address or
    dns_failure) and the message, which is the rejection detail."""

    def __init__(self, reason: IngestReason, detail: str):
        super().__init__(detail)
        self.reason = reason


def cached_resolver(resolve: Resolver = _system_resolver, maxsize: int = 65536) -> Resolver:
    """A per-run DNS cache: crawl lists repeat hosts many times."""
    return lru_cache(maxsize=maxsize)(lambda host: list(resolve(host)))
