"""Web connections in-process, on a real loop and loopback sockets, with a clock the test turns.

The keepalive (ping after 25 s of silence, close after 60 s) and the HTTP
phase's timeout are timers: instead of waiting a minute, the test owns the
loop's clock and moves it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Message, Ping, Request

from rat.config import Config
from rat.poller import make_poller
from rat.server import Server
from rat.web import IDLE_TIMEOUT, PING_INTERVAL, WebConn, serve_web
from rat.web.layer import HTTP_TIMEOUT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A server with a web listener whose loop runs on `clock`; clients connect for real."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.server = Server([], make_poller("auto"), Config())
        self.server.loop.clock = self.clock  # the loop reads its clock on every use
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        serve_web(self.server, [self.listener], max_line=1000)
        self.sockets: list[socket.socket] = []

    def turn(self, until: Callable[[], bool] | None = None, turns: int = 200) -> None:
        """Run loop turns (each waits at most 10 ms) until `until()`, or `turns` of them."""
        for _ in range(turns):
            self.server.loop.run_once(0.01)
            if until is not None and until():
                return
        assert until is None, "the condition never came true"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.listener.getsockname())
        sock.setblocking(False)
        self.sockets.append(sock)
        return sock

    def web_conns(self) -> list[WebConn]:
        return [c for c in self.server.connections() if isinstance(c, WebConn)]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.server.close()


class Client:
    """A wsproto client on a non-blocking socket of the rig."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.sock = rig.connect()
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []
        self.eof = False
        self.sock.sendall(self.ws.send(Request(host="rat.test", target="/ws")))
        rig.turn(lambda: self.has(AcceptConnection))
        rig.turn(turns=2)

    def read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.ws.receive_data(data or None)
            self.events += self.ws.events()
            if not data:
                self.eof = True
                return

    def has(self, kind: type[Event]) -> bool:
        self.read()
        return any(isinstance(e, kind) for e in self.events)

    def count(self, kind: type[Event]) -> int:
        self.read()
        return sum(isinstance(e, kind) for e in self.events)

    def answer_pings(self) -> None:
        self.read()
        for event in self.events:
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
        self.events = [e for e in self.events if not isinstance(e, Ping)]


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig()
    yield made
    made.close()


def advance_to(rig: Rig, when: float) -> None:
    rig.clock.now = when
    rig.turn(turns=3)


def test_a_silent_websocket_is_pinged_every_25s_and_closed_at_60s(rig: Rig) -> None:
    client = Client(rig)
    (conn,) = rig.web_conns()
    start = conn.heard
    advance_to(rig, start + PING_INTERVAL - 0.5)
    assert client.count(Ping) == 0
    advance_to(rig, start + PING_INTERVAL)
    assert client.count(Ping) == 1
    advance_to(rig, start + 2 * PING_INTERVAL)
    assert client.count(Ping) == 2
    advance_to(rig, start + IDLE_TIMEOUT - 0.5)
    assert not client.has(CloseConnection)
    advance_to(rig, start + IDLE_TIMEOUT)
    rig.turn(lambda: client.has(CloseConnection))
    closes = [e for e in client.events if isinstance(e, CloseConnection)]
    assert closes[0].code == 1001  # (wsproto adds a 1006 of its own when the socket ends)
    assert conn.close_reason == "idle_timeout"


def test_anything_from_the_client_resets_the_silence(rig: Rig) -> None:
    client = Client(rig)
    (conn,) = rig.web_conns()
    start = conn.heard
    advance_to(rig, start + 20)
    client.sock.sendall(client.ws.send(Message(data="still here")))
    rig.turn(lambda: conn.heard == start + 20)
    advance_to(rig, start + PING_INTERVAL)
    assert client.count(Ping) == 0  # it spoke 5 s ago
    advance_to(rig, start + 20 + PING_INTERVAL)
    assert client.count(Ping) == 1
    # A client that answers every ping (as a browser does) is never closed.
    for step in range(1, 6):
        client.answer_pings()
        rig.turn(turns=3)
        advance_to(rig, start + 20 + PING_INTERVAL * (step + 1))
    assert not client.has(CloseConnection)
    assert conn.state == 0  # OPEN


def test_a_request_that_never_finishes_is_closed_after_the_http_timeout(rig: Rig) -> None:
    sock = rig.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: rat.test\r\n")  # ... and no blank line, ever
    rig.turn(lambda: len(rig.web_conns()) == 1)
    (conn,) = rig.web_conns()
    advance_to(rig, rig.clock.now + HTTP_TIMEOUT - 0.5)
    assert conn.state == 0  # still open
    advance_to(rig, rig.clock.now + 0.5)
    rig.turn(lambda: conn.state != 0)
    assert conn.close_reason == "handshake_timeout"
    sock.setblocking(True)
    sock.settimeout(5)
    assert sock.recv(100) == b""  # closed, nothing sent


def test_an_idle_websocket_is_small_objects_only(rig: Rig) -> None:
    """Slotted all the way down, and no parser or HTTP state once idle after the upgrade."""
    client = Client(rig)
    client.sock.sendall(client.ws.send(Message(data="hello")))
    rig.turn(turns=3)
    (conn,) = rig.web_conns()
    layer = conn.layer
    assert layer.websocket and not layer.holds_parser
    for thing in (conn, layer, layer._reader):
        assert not hasattr(thing, "__dict__"), thing
    assert layer._http is None
