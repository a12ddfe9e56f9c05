"""IPv6: `--host ::1`, `--host ::` (dual-stack), `--host localhost`, with rules and TLS.

Every client connects over loopback (127.0.0.1 or ::1).  A dual-stack `::`
listener sees an IPv4 client as `::ffff:127.0.0.1`, which the address rules
must judge as 127.0.0.1.
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator

import pytest

from conftest import ServerProcess, assert_silent, read_until_eof, recv_lines
from test_fixes import has_ipv6_loopback
from transport import TLSMaterial

StartServer = Callable[..., ServerProcess]


pytestmark = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """rat on `host` (not conftest's fixed 127.0.0.1), stopped at the end."""
    started: list[ServerProcess] = []

    def start(host: str, *flags: str) -> ServerProcess:
        server = ServerProcess(["--host", host, "--port", "0", *flags])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def port_of(server: ServerProcess) -> int:
    m = re.search(r"listening on \S+:(\d+)", server.stderr)
    assert m is not None
    return int(m.group(1))


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10)


def sync(sender: socket.socket, others: list[socket.socket]) -> None:
    sender.sendall(b"__sync__\n")
    for sock in others:
        assert recv_lines(sock, 1) == [b"__sync__\n"]


def test_ipv6_loopback(serve: StartServer) -> None:
    server = serve("::1")
    port = port_of(server)
    assert f"listening on [::1]:{port} (" in server.stderr
    assert "anyone who can reach" not in server.stderr  # loopback: no warning
    a, b = connect("::1", port), connect("::1", port)
    try:
        probe = connect("::1", port)
        sync(probe, [a, b])
        probe.close()
        a.sendall(b"over ipv6\n")
        assert recv_lines(b, 1) == [b"over ipv6\n"]
    finally:
        a.close()
        b.close()


def test_dual_stack_listener_takes_ipv4_and_ipv6_clients(serve: StartServer) -> None:
    server = serve("::")
    port = port_of(server)
    warnings = re.findall(r"(?m)^.*anyone who can reach the port.*$", server.stderr)
    assert len(warnings) == 1 and f"[::]:{port}" in warnings[0]
    v4, v6 = connect("127.0.0.1", port), connect("::1", port)
    try:
        probe = connect("::1", port)
        sync(probe, [v4, v6])
        probe.close()
        v4.sendall(b"from ipv4\n")
        assert recv_lines(v6, 1) == [b"from ipv4\n"]
        v6.sendall(b"from ipv6\n")
        assert recv_lines(v4, 1) == [b"from ipv6\n"]
    finally:
        v4.close()
        v6.close()


def test_dual_stack_rules_judge_mapped_ipv4_as_ipv4(serve: StartServer) -> None:
    server = serve("::", "--deny", "127.0.0.1/32", "--log-level", "debug")
    port = port_of(server)
    v6 = connect("::1", port)
    denied = connect("127.0.0.1", port)  # seen as ::ffff:127.0.0.1
    try:
        assert read_until_eof(denied) == b""
        probe = connect("::1", port)
        sync(probe, [v6])
        probe.close()
        assert_silent(v6, wait=0.05)
    finally:
        v6.close()
        denied.close()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert "rejected_denied=1 " in server.stderr


def test_ipv6_rule_on_ipv6_client(serve: StartServer) -> None:
    server = serve("::1", "--deny", "::1/128")
    port = port_of(server)
    sock = connect("::1", port)
    try:
        assert read_until_eof(sock) == b""
    finally:
        sock.close()


def test_localhost_binds_both_families(serve: StartServer) -> None:
    infos = {info[0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    if infos != {socket.AF_INET, socket.AF_INET6}:
        pytest.skip("localhost does not resolve to both 127.0.0.1 and ::1 here")
    server = serve("localhost")
    port = port_of(server)
    assert re.search(
        rf"listening on (127\.0\.0\.1:{port}, \[::1\]|\[::1\]:{port}, 127\.0\.0\.1)", server.stderr
    ), server.stderr
    v4, v6 = connect("127.0.0.1", port), connect("::1", port)
    try:
        probe = connect("127.0.0.1", port)
        sync(probe, [v4, v6])
        probe.close()
    finally:
        v4.close()
        v6.close()


def test_tls_over_ipv6(serve: StartServer, tls_material: TLSMaterial) -> None:
    server = serve("::1", *tls_material.flags)
    port = port_of(server)
    a = tls_material.wrap(connect("::1", port))
    b = tls_material.wrap(connect("::1", port))
    try:
        probe = tls_material.wrap(connect("::1", port))
        sync(probe, [a, b])
        probe.close()
        a.sendall(b"encrypted over ipv6\n")
        assert recv_lines(b, 1) == [b"encrypted over ipv6\n"]
    finally:
        a.close()
        b.close()
