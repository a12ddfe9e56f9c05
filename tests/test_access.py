"""Address rules (`--allow`, `--deny`): the matcher alone, then rat refusing a client.

The matcher is pure, so hypothesis checks it against the rule written out
the slow way, over IPv4, IPv6 and IPv4-mapped IPv6 addresses.  The
integration tests run rat and check that a denied client is closed before
it can send or receive anything, and that the refusal is counted.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import ServerProcess, assert_silent, read_until_eof, recv_lines, sync_clients
from rat.access import AddressRules, normalize, parse_network
from test_integration import run_cli

StartServer = Callable[..., ServerProcess]

# --------------------------------------------------------------------------- the matcher

ipv4 = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1))
ipv6 = st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1))
ipv4_net = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False), ipv4, st.integers(0, 32)
)
ipv6_net = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False), ipv6, st.integers(0, 128)
)
networks = st.lists(st.one_of(ipv4_net, ipv6_net), max_size=4)


def mapped(ip: ipaddress.IPv4Address) -> str:
    return f"::ffff:{ip}"


def expected(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    deny: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """The rule the slow way: deny wins; with any allow, only allowed ones pass."""
    same = [n for n in deny if n.version == address.version]
    if any(address in n for n in same):
        return False
    if not allow:
        return True
    return any(address in n for n in allow if n.version == address.version)


@given(address=st.one_of(ipv4, ipv6), allow=networks, deny=networks)
def test_admits_follows_the_rule(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    deny: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> None:
    rules = AddressRules.parse(map(str, allow), map(str, deny))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address_seen: ipaddress.IPv4Address | ipaddress.IPv6Address = address.ipv4_mapped
    else:
        address_seen = address
    assert rules.admits(str(address)) == expected(address_seen, allow, deny)


@given(address=ipv4, allow=networks, deny=networks)
def test_ipv4_mapped_addresses_are_judged_as_ipv4(
    address: ipaddress.IPv4Address,
    allow: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    deny: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> None:
    rules = AddressRules.parse(map(str, allow), map(str, deny))
    assert rules.admits(mapped(address)) == rules.admits(str(address))


@given(address=ipv4, net=ipv4_net)
def test_deny_wins_over_allow(address: ipaddress.IPv4Address, net: ipaddress.IPv4Network) -> None:
    rules = AddressRules.parse([str(net)], [str(net)])
    assert not rules.admits(str(address)) or address not in net
    assert not any(rules.admits(str(a)) for a in (net.network_address, net.broadcast_address))


def test_examples() -> None:
    rules = AddressRules.parse(["10.0.0.0/8", "2001:db8::/32"], ["10.0.0.7", "2001:db8::bad"])
    assert rules.admits("10.1.2.3")
    assert rules.admits("::ffff:10.1.2.3")
    assert not rules.admits("10.0.0.7")
    assert not rules.admits("::ffff:10.0.0.7")
    assert rules.admits("2001:db8::1")
    assert not rules.admits("2001:db8::bad")
    assert not rules.admits("192.0.2.1")
    assert not rules.admits("::1")
    assert rules.admits("fe80::1%lo") is False  # a zone id is no way around the rules


def test_only_deny_rules_admit_everyone_else() -> None:
    rules = AddressRules.parse(deny=["127.0.0.0/8"])
    assert not rules.admits("127.0.0.1")
    assert not rules.admits("::ffff:127.0.0.1")
    assert rules.admits("::1")
    assert rules.admits("192.0.2.1")


def test_ipv4_mapped_network_in_a_rule_is_ipv4() -> None:
    assert parse_network("::ffff:10.0.0.0/104") == ipaddress.IPv4Network("10.0.0.0/8")
    assert normalize("::ffff:10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")


@pytest.mark.parametrize("text", ["10.0.0.1/8", "banana", "10.0.0.0/33", "::/129", ""])
def test_bad_networks_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 network"):
        parse_network(text)


# --------------------------------------------------------------------------- rat


def start(rat_server: StartServer, *flags: str) -> ServerProcess:
    return rat_server("--log-level", "debug", *flags)


def test_denied_client_is_closed_before_it_can_send_or_receive(
    rat_server: StartServer,
) -> None:
    server = start(rat_server, "--deny", "127.0.0.2/32")
    a = server.connect()
    b = server.connect()
    try:
        sync_clients(server, [a, b])
        denied = socket.socket()
        denied.bind(("127.0.0.2", 0))  # the one source address that is denied
        denied.connect((server.host, server.port))
        try:
            denied.sendall(b"let me in\n")
        except OSError:
            pass  # closed already: fine
        a.sendall(b"broadcast while it knocks\n")
        assert recv_lines(b, 1) == [b"broadcast while it knocks\n"]
        assert read_until_eof(denied) == b""
        assert_silent(a)  # nothing of the denied client's was relayed
        assert_silent(b, wait=0.05)
        denied.close()
    finally:
        a.close()
        b.close()
    server.signal(15)
    assert server.wait() == 0
    assert re.search(r"rejected_denied=1\b", server.stderr), server.stderr
    assert "Traceback" not in server.stderr


def test_allow_list_admits_only_its_networks(rat_server: StartServer) -> None:
    server = start(rat_server, "--allow", "127.0.0.1/32")
    a = server.connect()
    outsider = socket.socket()
    outsider.bind(("127.0.0.3", 0))
    outsider.settimeout(5)
    try:
        outsider.connect((server.host, server.port))
        assert read_until_eof(outsider) == b""
        b = server.connect()
        sync_clients(server, [a, b])
        a.sendall(b"allowed\n")
        assert recv_lines(b, 1) == [b"allowed\n"]
        b.close()
    finally:
        a.close()
        outsider.close()
    server.wait_for_log(r"allow 127\.0\.0\.1/32")


def test_bad_cidr_is_a_usage_error() -> None:
    result = run_cli("serve", "--port", "0", "--deny", "10.0.0.1/8")
    assert result.returncode == 2
    assert "not an IPv4 or IPv6 network" in result.stderr
    assert "Traceback" not in result.stderr


def test_rules_from_the_environment_take_a_list(
    rat_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAT_DENY", "127.0.0.2/32, 127.0.0.3/32")
    server = start(rat_server)
    server.wait_for_log(r"deny 127\.0\.0\.2/32 127\.0\.0\.3/32")
    for source in ("127.0.0.2", "127.0.0.3"):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect((server.host, server.port))
        assert read_until_eof(sock) == b""
        sock.close()


def test_admin_endpoint_counts_denied_connections(rat_server: StartServer) -> None:
    server = start(rat_server, "--deny", "127.0.0.2/32", "--admin", "0")
    m = re.search(r"admin \S+:(\d+)", server.stderr)
    assert m, server.stderr
    denied = socket.socket()
    denied.bind(("127.0.0.2", 0))
    denied.settimeout(5)
    denied.connect((server.host, server.port))
    assert read_until_eof(denied) == b""
    denied.close()
    admin = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=10)
    try:
        admin.request("GET", "/metrics")
        body = admin.getresponse().read().decode()
    finally:
        admin.close()
    assert 'rat_connections_rejected_total{reason="denied"} 1' in body, body
