"""`rat serve --web`: WebSocket clients (the `websockets` library) and TCP clients in one broadcast.

Every test runs rat as a subprocess and talks to it over loopback.  The
WebSocket side uses `websockets`, a client rat does not use itself, so a
mistake shared by rat's server code and its tests' client code cannot hide.
Where a test needs a client that misbehaves on purpose (one that stops
reading), it drives a raw socket and decodes what arrives with wsproto.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)
from wsproto.events import Message as WsMessage

from conftest import SRC, ServerProcess, assert_silent, recv_lines

pytestmark = pytest.mark.timeout(60)

StartServer = Callable[..., ServerProcess]
WEB = re.compile(r"web (\S+):(\d+)")


def web_port(server: ServerProcess) -> int:
    match = WEB.search(server.stderr)
    assert match, server.stderr
    return int(match.group(2))


@pytest.fixture
def opened() -> Iterator[ExitStack]:
    """Every client a test opens, closed at teardown."""
    with ExitStack() as stack:
        yield stack


class Web:
    """Open WebSocket (`websockets`) and TCP clients to one server; close them at the end."""

    def __init__(self, server: ServerProcess, opened: ExitStack):
        self.server = server
        self.port = web_port(server)
        self.opened = opened

    def ws(self, origin: str | None = None) -> ClientConnection:
        url = f"ws://127.0.0.1:{self.port}/ws"
        return self.opened.enter_context(
            connect(url, origin=origin, open_timeout=10, max_size=None)  # type: ignore[arg-type]
        )

    def tcp(self, rcvbuf: int | None = None) -> socket.socket:
        sock = self.opened.enter_context(socket.socket())
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect((self.server.host, self.server.port))
        return sock

    def raw(self, rcvbuf: int | None = None) -> RawWebSocket:
        raw = RawWebSocket(self.port, rcvbuf)
        self.opened.enter_context(raw.sock)
        return raw

    def sync(self, tcp: list[socket.socket], ws: list[ClientConnection]) -> None:
        """Every client is a member: a probe line from a new TCP client reaches them all."""
        probe = self.tcp()
        probe.sendall(b"__sync__\n")
        for sock in tcp:
            assert recv_lines(sock, 1) == [b"__sync__\n"]
        for conn in ws:
            assert conn.recv(timeout=10) == "__sync__"
        probe.close()


class RawWebSocket:
    """A WebSocket client on a bare socket (wsproto decodes): it reads only when told to."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
        self.events: list[Event] = []  # whole messages (wsproto may hand them out in pieces)
        self._partial: list[Any] = []  # the pieces of a message (all str or all bytes)
        while not any(isinstance(e, AcceptConnection) for e in self.events):
            self._read()

    def _read(self) -> bool:
        data = self.sock.recv(1 << 16)
        self.ws.receive_data(data or None)
        for event in self.ws.events():
            if not isinstance(event, TextMessage | BytesMessage):
                self.events.append(event)
                continue
            self._partial.append(event.data)
            if event.message_finished:
                parts, self._partial = self._partial, []
                if isinstance(event, TextMessage):
                    self.events.append(TextMessage(data="".join(parts)))
                else:
                    self.events.append(BytesMessage(data=b"".join(parts)))
        return bool(data)

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(WsMessage(data=text)))

    def read_to_end(self, timeout: float = 20.0) -> list[Event]:
        """Read until the server's close frame (or EOF); every event, in order."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if any(isinstance(e, CloseConnection) for e in self.events):
                    break
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not self._read():
                    break
        except ConnectionResetError:
            pass
        return [e for e in self.events if not isinstance(e, AcceptConnection)]


def closed_code(conn: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read until the server closes `conn`; the close code it sent."""
    try:
        while True:
            conn.recv(timeout=timeout)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


def messages(events: list[Event]) -> list[str | bytes]:
    return [
        bytes(e.data) if isinstance(e, BytesMessage) else e.data
        for e in events
        if isinstance(e, TextMessage | BytesMessage)
    ]


def assert_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr, server.stderr


# --------------------------------------------------------------------------------- tests


def test_listening_line_names_the_web_address(rat_server: StartServer) -> None:
    server = rat_server("--web", "0")
    line = server.wait_for_log(r"listening on .*").group(0)
    assert re.match(
        rf"listening on 127\.0\.0\.1:{server.port}, web 127\.0\.0\.1:\d+ \(pid \d+", line
    ), line


def test_websocket_and_tcp_clients_share_one_broadcast(
    rat_server: StartServer, opened: ExitStack
) -> None:
    web = Web(rat_server("--web", "0"), opened)
    tcp_a, tcp_b = web.tcp(), web.tcp()
    ws_a, ws_b = web.ws(), web.ws()
    web.sync([tcp_a, tcp_b], [ws_a, ws_b])

    # WebSocket -> everyone else: a message without a newline is a line.
    ws_a.send("hello from the web")
    assert recv_lines(tcp_a, 1) == [b"hello from the web\n"]
    assert recv_lines(tcp_b, 1) == [b"hello from the web\n"]
    assert ws_b.recv(timeout=10) == "hello from the web"

    # Several lines in one message, and a binary message.
    ws_b.send("one\ntwo\n")
    ws_b.send(b"\xff\xfe raw\n")
    assert recv_lines(tcp_a, 3) == [b"one\n", b"two\n", b"\xff\xfe raw\n"]
    assert recv_lines(tcp_b, 3) == [b"one\n", b"two\n", b"\xff\xfe raw\n"]
    assert [ws_a.recv(timeout=10) for _ in range(3)] == ["one", "two", b"\xff\xfe raw"]

    # TCP -> WebSocket: text when the line is UTF-8, binary otherwise; empty lines too.
    long_line = "é" * 30_000  # 60,000 bytes: several TCP segments, one message
    tcp_a.sendall(b"plain\n\n\x00\xc3\x28 invalid\n" + long_line.encode() + b"\n")
    expected = ["plain", "", b"\x00\xc3\x28 invalid", long_line]
    assert [ws_a.recv(timeout=10) for _ in range(4)] == expected
    assert [ws_b.recv(timeout=10) for _ in range(4)] == expected
    assert recv_lines(tcp_b, 4)[3] == long_line.encode() + b"\n"

    # The sender gets nothing back (no --echo), on either transport.
    ws_a.send("last")
    assert recv_lines(tcp_a, 1) == [b"last\n"]
    assert ws_b.recv(timeout=10) == "last"
    with pytest.raises(TimeoutError):
        ws_a.recv(timeout=0.3)
    assert_no_traceback(web.server)


def test_a_message_longer_than_max_line_is_closed_with_1009(
    rat_server: StartServer, opened: ExitStack
) -> None:
    web = Web(rat_server("--web", "0", "--max-line", "100"), opened)
    reader = web.tcp()
    talker = web.ws()
    web.sync([reader], [talker])
    talker.send("x" * 99)  # 100 bytes with the newline: allowed
    assert recv_lines(reader, 1) == [b"x" * 99 + b"\n"]
    talker.send("y" * 100)
    assert closed_code(talker) == 1009
    other = web.ws()  # the others are unaffected, and the server serves on
    web.sync([reader], [other])
    web.server.wait_for_log(r"disconnect 127\.0\.0\.1:\d+: message too big")
    assert_no_traceback(web.server)


def test_http_routes(rat_server: StartServer) -> None:
    server = rat_server("--web", "0")
    port = web_port(server)

    def get(path: str, method: str = "GET") -> tuple[int, bytes, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read(), response
        finally:
            conn.close()

    status, body, response = get("/")
    assert status == 200
    assert response.getheader("Content-Type") == "text/html; charset=utf-8"
    assert b"<title>rat</title>" in body
    assert get("/healthz")[:2] == (200, b"ok\n")
    assert get("/missing")[0] == 404
    assert get("/", "POST")[0] == 405
    assert get("/ws")[0] == 400  # not an upgrade

    # A malformed request line: 400, then the server closes.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert_no_traceback(server)


def test_origin_rule(rat_server: StartServer, opened: ExitStack) -> None:
    server = rat_server("--web", "0", "--web-origin", "https://chat.example.org")
    web = Web(server, opened)
    with pytest.raises(InvalidStatus) as refused:
        web.ws(origin="http://evil.example")
    assert refused.value.response.status_code == 403
    web.ws(origin=f"http://127.0.0.1:{web.port}")  # the page's own origin
    web.ws(origin="https://chat.example.org")  # listed
    web.ws()  # no Origin: not a browser
    server.wait_for_log(r"forbidden origin \(origin http://evil\.example is not allowed")


def test_websocket_client_authenticates_with_its_first_message(
    rat_server: StartServer, opened: ExitStack, tmp_path: Path
) -> None:
    """`--token-file` over plain ws:// (the WSS case is in test_tls_web): the first
    message is the AUTH line; a wrong or missing token gets `ERR auth failed` and a
    close, and nothing the refused client sent is relayed."""
    tokens = tmp_path / "tokens"
    tokens.write_text("web-token\n")
    web = Web(rat_server("--web", "0", "--token-file", str(tokens)), opened)
    member = web.tcp()
    member.sendall(b"AUTH web-token\n")
    assert recv_lines(member, 1) == [b"* ok\n"]

    browser = web.ws()
    browser.send("AUTH web-token")
    assert browser.recv(timeout=10) == "* ok"
    member.sendall(b"hello page\n")
    assert browser.recv(timeout=10) == "hello page"
    browser.send("hello line client")
    assert recv_lines(member, 1) == [b"hello line client\n"]

    intruder = web.ws()
    intruder.send("AUTH wrong")
    assert intruder.recv(timeout=10) == "ERR auth failed"
    assert closed_code(intruder) == 1000  # a graceful close, after the ERR message
    stranger = web.ws()
    stranger.send("hello without a token")
    assert stranger.recv(timeout=10) == "ERR auth failed"
    assert closed_code(stranger) == 1000
    assert_silent(member)  # neither refused client's message reached anyone
    with pytest.raises(TimeoutError):
        browser.recv(timeout=0.3)
    web.server.wait_for_log(r"disconnect 127\.0\.0\.1:\d+: auth failed \(wrong token\)")
    web.server.wait_for_log(r"disconnect 127\.0\.0\.1:\d+: auth failed \(no AUTH line\)")
    assert_no_traceback(web.server)


def test_web_clients_count_towards_max_clients(rat_server: StartServer) -> None:
    server = rat_server("--web", "0", "--max-clients", "2")
    port = web_port(server)
    with (
        socket.create_connection((server.host, server.port), timeout=10) as tcp,
        connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws,
    ):
        tcp.sendall(b"sync\n")
        assert ws.recv(timeout=10) == "sync"
        # The third is refused at accept, before it could send a request, and
        # told so in HTTP (a browser would show "server full", not garbage).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            answer = b""
            while chunk := third.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert answer.endswith(b"\r\n\r\nserver full\n")
    server.wait_for_log("refused .*: server full")


def test_slow_websocket_reader_is_dropped_and_the_others_get_everything(
    rat_server: StartServer, opened: ExitStack
) -> None:
    web = Web(rat_server("--web", "0", "--max-pending", "262144"), opened)
    slow = web.raw(rcvbuf=4096)  # never reads after the handshake
    tcp_reader, sender = web.tcp(), web.tcp()
    ws_reader = web.ws()
    web.sync([tcp_reader], [ws_reader])
    slow_addr = slow.sock.getsockname()
    dropped = rf"disconnect 127\.0\.0\.1:{slow_addr[1]}: slow consumer"

    batch = [b"%06d:" % i + b"z" * 1000 for i in range(64)]
    for _ in range(400):  # 400 x 64 KiB at most, in lock step with the readers
        sender.sendall(b"".join(line + b"\n" for line in batch))
        assert recv_lines(tcp_reader, 64) == [line + b"\n" for line in batch]
        assert [ws_reader.recv(timeout=10) for _ in batch] == [line.decode() for line in batch]
        if re.search(dropped, web.server.stderr):
            break
    else:
        raise AssertionError("no slow-consumer drop after 400 batches")

    # The dropped reader gets whole messages, then ERR and a close 1008.
    events = slow.read_to_end()
    sync, *lines, err, close = events
    assert isinstance(sync, TextMessage) and sync.data == "__sync__"
    bad = [e for e in lines if not (isinstance(e, TextMessage) and e.data.endswith("z" * 1000))]
    assert not bad, bad[:3]
    assert isinstance(err, TextMessage) and err.data == "ERR slow consumer"
    assert isinstance(close, CloseConnection) and close.code == 1008
    # The others still get every line.
    sender.sendall(b"after\n")
    assert recv_lines(tcp_reader, 1) == [b"after\n"]
    assert ws_reader.recv(timeout=10) == "after"
    assert_no_traceback(web.server)


def test_a_stuck_websocket_reader_meets_the_write_timeout(
    rat_server: StartServer, opened: ExitStack
) -> None:
    web = Web(rat_server("--web", "0", "--write-timeout", "1"), opened)
    stuck = web.raw(rcvbuf=4096)
    sender = web.tcp()
    reader = web.ws()
    web.sync([], [reader])
    lines = [f"{i:06d} ".ljust(1000, "w") for i in range(4000)]  # 4 MB: the kernel holds less
    sender.sendall("".join(line + "\n" for line in lines).encode())
    assert [reader.recv(timeout=10) for _ in lines] == lines  # a reader that reads is fine
    port = stuck.sock.getsockname()[1]
    web.server.wait_for_log(rf"disconnect 127\.0\.0\.1:{port}: write timeout")
    events = stuck.read_to_end()
    got = messages(events)
    assert got[0] == "__sync__" and got[1:-1] == lines[: len(got) - 2]  # whole messages ...
    assert got[-1] == "ERR slow consumer"  # ... then why, and the close
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1008


def test_shutdown_sends_1001_after_the_queued_messages(
    rat_server: StartServer, opened: ExitStack
) -> None:
    web = Web(rat_server("--web", "0"), opened)
    behind = web.raw(rcvbuf=4096)  # lets messages queue in the server
    fast = web.ws()
    sender = web.tcp()
    web.sync([], [fast])
    # 6 MB: more than the kernel buffers hold for a reader that does not
    # read, less than --max-pending (8 MiB): most of it waits in rat's queue.
    lines = [f"{i:06d} queued line ".ljust(500, ".") for i in range(12_000)]
    sender.sendall("".join(line + "\n" for line in lines).encode())
    assert [fast.recv(timeout=10) for _ in lines] == lines  # the server has them all
    web.server.signal(signal.SIGTERM)
    queued = web.server.wait_for_log(r"flushing (\d+) queued bytes")
    assert int(queued.group(1)) > 1_000_000
    assert closed_code(fast) == 1001
    events = behind.read_to_end()
    assert messages(events) == ["__sync__", *lines]  # every queued message first ...
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1001  # ... then 1001
    assert web.server.wait(15) == 0


def test_a_host_name_binds_every_address_it_resolves_to(rat_server: StartServer) -> None:
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    if not {"127.0.0.1", "::1"} <= addresses:
        pytest.skip(
            f"localhost resolves to {sorted(addresses)} here, not to both 127.0.0.1 and ::1"
        )
    server = rat_server("--web", "localhost:0")
    line = server.wait_for_log(r"listening on .*").group(0)
    ports = re.findall(r"web (?:127\.0\.0\.1|\[::1\]):(\d+)", line)
    assert len(ports) == 2 and ports[0] == ports[1], line
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as sock:
            sock.settimeout(10)
            sock.connect((host, int(ports[0])))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok\n")


def test_the_web_host_defaults_to_the_tcp_host(rat_server: StartServer) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as err:
        pytest.skip(f"no IPv6 loopback here: {err}")
    server = ServerProcess(["--host", "::1", "--port", "0", "--web", "0"])
    try:
        line = server.wait_for_log(r"listening on .*").group(0)
        match = re.search(r"web \[::1\]:(\d+)", line)
        assert match, line
        with connect(f"ws://[::1]:{match.group(1)}/ws", open_timeout=10) as ws:
            assert ws.protocol.state.name == "OPEN"
    finally:
        server.stop()


def test_a_web_port_in_use_is_a_bind_error(rat_server: StartServer) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "rat", "serve", "--port", "0", "--web", f"127.0.0.1:{port}"],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
    finally:
        taken.close()
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"rat: cannot listen on web 127.0.0.1:{port}: Address already in use"
    ]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "rat", *args],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--web", "nope"], {}, "--web: not a port number"),
        (["--web", "::1:8081"], {}, "--web: write an IPv6 address in brackets"),
        (["--web", "0", "--web-origin", "example.com"], {}, "--web-origin: not an origin"),
        (["--web", "0"], {"RAT_WEB_ORIGIN": "https://a.example,ftp://b"}, "RAT_WEB_ORIGIN: not"),
    ],
)
def test_bad_web_options_are_usage_errors(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli("serve", "--port", "0", *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_web_options_from_the_environment() -> None:
    code = (
        "import os, sys; from rat.cli import build_parser, apply_environment, config_from_args;"
        "p = build_parser(); apply_environment(p, dict(os.environ));"
        "c = config_from_args(p.parse_args(['serve']));"
        "print(c.web, c.web_origins)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env={
            **os.environ,
            "PYTHONPATH": str(SRC),
            "RAT_WEB": "[::1]:8081",
            "RAT_WEB_ORIGIN": "https://A.example, https://b.example:443",
        },
        timeout=30,
        check=True,
    )
    assert out.stdout.decode().strip() == "('::1', 8081) ('https://a.example', 'https://b.example')"


def test_the_plain_tcp_path_imports_neither_h11_nor_wsproto() -> None:
    code = (
        "import sys; from rat.cli import build_parser, config_from_args;"
        "import rat.server, rat.connection, rat.layered;"
        "config_from_args(build_parser().parse_args(['serve', '--port', '0']));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('h11', 'wsproto')"
        " or m.startswith('rat.web')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=30,
        check=True,
    )
    assert out.stdout.decode().strip() == "[]"
