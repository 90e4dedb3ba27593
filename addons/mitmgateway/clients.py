"""Who the client is: the TCP peer, or what a configured trusted proxy says in X-Forwarded-For.

An X-Forwarded-For header from anyone but a trusted proxy is a claim the client makes about
itself, so it is ignored for identity and replaced (not extended) on the way upstream.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from mitmproxy import connection, http

from .config.errors import ConfigError, KeyPath
from .config.schema import check_type

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(value: Any, path: KeyPath) -> tuple[Network, ...]:
    networks = []
    for i, text in enumerate(check_type(tuple[str, ...], value, path)):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as e:
            raise ConfigError(path.index(i), f"not an IP address or CIDR: {e}") from e
    return tuple(networks)


def peer_ip(flow: http.HTTPFlow) -> str:
    return peer_host(flow.client_conn)


def peer_host(conn: connection.Connection) -> str:
    """The address at the other end of a client or upstream connection ('' if unknown)."""
    host = conn.peername[0] if conn.peername else ""
    # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
    return host[7:] if host.startswith("::ffff:") and "." in host else host


@dataclass(frozen=True)
class ClientIdentification:
    """The client's address and the X-Forwarded-For chain that may be passed on."""

    ip: str
    trusted_forwarded_for: str | None


@dataclass(frozen=True)
class ClientResolver:
    trusted_proxies: tuple[Network, ...] = ()

    def _trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def identify(self, flow: http.HTTPFlow) -> ClientIdentification:
        peer = peer_ip(flow)
        if not self.trusted_proxies or not self._trusted(peer):
            return ClientIdentification(peer, None)
        chain = ", ".join(flow.request.headers.get_all("x-forwarded-for"))
        client = peer
        # Walk from the nearest hop outwards: the first address that is not one of our trusted
        # proxies is the client; a hop that is not an address ends the walk at the last good one.
        for hop in reversed(chain.split(",")):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            client = hop
            if not self._trusted(hop):
                break
        return ClientIdentification(client, chain or None)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 in brackets or not) is this machine's loopback:
    localhost or a loopback address. Any other name may resolve anywhere."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
