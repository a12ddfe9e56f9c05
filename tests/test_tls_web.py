"""`--web` with `--tls-cert`: HTTPS and WSS, TLS stacked under HTTP/WebSocket.

The web connection's layer is `rat.layer.Stack(TLSLayer, WebLayer)`: the
page and `/healthz` come over HTTPS, the WebSocket is WSS (the `websockets`
client with an ssl context), and its clients share one broadcast with TLS
line clients.  With `--token-file` a WebSocket's first message is its AUTH.
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import ServerProcess, read_until_eof, recv_lines
from transport import TLSMaterial

pytestmark = pytest.mark.timeout(60)

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def opened() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def web_port(server: ServerProcess) -> int:
    match = re.search(r"web \S+:(\d+)", server.stderr)
    assert match, server.stderr
    return int(match.group(1))


def wss(port: int, material: TLSMaterial, opened: ExitStack) -> ClientConnection:
    conn = connect(
        f"wss://localhost:{port}/ws",
        ssl=material.client_context,
        open_timeout=10,
        proxy=None,
    )
    return opened.enter_context(conn)


def tls_line_client(server: ServerProcess, material: TLSMaterial) -> socket.socket:
    """A line client of the TCP port, which speaks TLS too."""
    return material.wrap(socket.create_connection((server.host, server.port), timeout=10))


def test_https_serves_the_page_and_healthz(
    rat_server: StartServer, tls_material: TLSMaterial
) -> None:
    server = rat_server("--web", "0", *tls_material.flags)
    port = web_port(server)
    https = http.client.HTTPSConnection(
        "localhost", port, timeout=10, context=tls_material.client_context
    )
    try:
        https.request("GET", "/healthz")
        response = https.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        https.request("GET", "/")
        page = https.getresponse()
        assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        https.close()


def test_plain_http_on_the_https_port_is_closed_quietly(
    rat_server: StartServer, tls_material: TLSMaterial
) -> None:
    server = rat_server("--web", "0", *tls_material.flags)
    sock = socket.create_connection(("127.0.0.1", web_port(server)), timeout=10)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = read_until_eof(sock)
        assert b"200" not in answer  # no HTTP answer in the clear
    finally:
        sock.close()
    server.wait_for_log(r"disconnect \S+: tls handshake")
    assert "Traceback" not in server.stderr


def test_wss_and_tls_line_clients_share_one_broadcast(
    rat_server: StartServer, tls_material: TLSMaterial, opened: ExitStack
) -> None:
    server = rat_server("--web", "0", *tls_material.flags)
    browser = wss(web_port(server), tls_material, opened)
    line = tls_line_client(server, tls_material)
    probe = tls_line_client(server, tls_material)
    try:
        probe.sendall(b"__sync__\n")
        assert recv_lines(line, 1) == [b"__sync__\n"]
        assert browser.recv(timeout=10) == "__sync__"
        line.sendall(b"from a TLS line client\n")
        assert browser.recv(timeout=10) == "from a TLS line client"
        browser.send("from a WSS page")
        assert recv_lines(line, 1) == [b"from a WSS page\n"]
        assert recv_lines(probe, 2) == [b"from a TLS line client\n", b"from a WSS page\n"]
    finally:
        line.close()
        probe.close()


def test_wss_client_authenticates_with_its_first_message(
    rat_server: StartServer, tls_material: TLSMaterial, opened: ExitStack, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("web-token\n")
    server = rat_server("--web", "0", *tls_material.flags, "--token-file", str(tokens))
    port = web_port(server)
    member = tls_line_client(server, tls_material)
    member.sendall(b"AUTH web-token\n")
    assert recv_lines(member, 1) == [b"* ok\n"]

    browser = wss(port, tls_material, opened)
    browser.send("AUTH web-token")
    assert browser.recv(timeout=10) == "* ok"
    member.sendall(b"hello page\n")
    assert browser.recv(timeout=10) == "hello page"

    intruder = wss(port, tls_material, opened)
    intruder.send("AUTH wrong")
    assert intruder.recv(timeout=10) == "ERR auth failed"
    with pytest.raises(ConnectionClosed):
        intruder.recv(timeout=10)
    member.close()
