"""Address rules (`--allow CIDR`, `--deny CIDR`): who may connect at all.

Checked once per connection, at accept, before a byte is read or written:
a refused connection is closed at once and counted (`rejected_denied`).

The rule, in order:

1. an address inside any `--deny` network is refused (deny wins);
2. if any `--allow` is given, an address inside none of them is refused;
3. everything else is admitted.

IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack `::`
listener reports for an IPv4 client) are matched as the IPv4 address they
carry, so `--deny 192.0.2.0/24` means the same on every listener.  A rule
of one family never matches an address of the other.  Unix-socket clients
have no address: the socket file's permissions decide who may connect, and
these rules do not apply to them.

Pure: the `ipaddress` module and nothing else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> IPNetwork:
    """'10.0.0.0/8', '2001:db8::/32', or one address ('192.0.2.7': a /32).

    Host bits set ('10.0.0.1/8') are a mistake worth refusing: the user
    probably meant a different network.  Raises ValueError with the reason.
    """
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as err:
        raise ValueError(f"not an IPv4 or IPv6 network: {text!r} ({err})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            # ::ffff:10.0.0.0/104 is written for IPv4 clients: keep it as IPv4.
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def normalize(address: str) -> IPAddress:
    """An address as rules see it: IPv4-mapped IPv6 becomes IPv4; zone ids dropped."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class AddressRules:
    """The `--allow` and `--deny` networks, and the decision for one address."""

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> AddressRules:
        return cls(tuple(map(parse_network, allow)), tuple(map(parse_network, deny)))

    def __bool__(self) -> bool:
        """Are there any rules at all?"""
        return bool(self.allow or self.deny)

    def admits(self, address: str) -> bool:
        """May a client from `address` (an IP address, as accept() reports it) connect?"""
        try:
            ip = normalize(address)
        except ValueError:
            return not self.allow  # no IP address (cannot happen for TCP): only deny-lists pass
        # `ip in network` is False across families, so each rule sees its own.
        if any(ip in network for network in self.deny):
            return False
        return not self.allow or any(ip in network for network in self.allow)

    def describe(self) -> str:
        """'allow 10.0.0.0/8; deny 10.0.0.7/32' for the `listening on` line."""
        parts = []
        if self.allow:
            parts.append("allow " + " ".join(map(str, self.allow)))
        if self.deny:
            parts.append("deny " + " ".join(map(str, self.deny)))
        return "; ".join(parts)
