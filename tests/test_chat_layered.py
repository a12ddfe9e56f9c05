"""Chat mode does not care about the transport: a layered client chats like a TCP one.

A `ChatServer` runs in this process, on loopback, with two listeners: plain
TCP, and one whose connections are `LayeredConn`s with a toy layer (each
line travels to the client as `[line]`).  The WebSocket layer plugs in the
same way; this test needs none of it.  Everything a chat session sends the
layered client, replies and room lines alike, must have gone through its
layer, and its input is chat input like a TCP client's lines.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from rat.chat.server import ChatServer
from rat.config import Config
from rat.layer import Layer
from rat.layered import LayeredConn
from rat.net import open_listeners
from rat.poller import make_poller
from rat.server import Server

pytestmark = pytest.mark.timeout(30)


class Brackets(Layer):
    """A toy protocol: lines in as they are; each line out as `[line]`."""

    name = "brackets"
    handshake_timeout = None

    def receive(self, data: bytes) -> bytes:
        return data

    def encode(self, data: bytes) -> bytes:
        assert data.endswith(b"\n")  # whole lines only
        return b"".join(b"[%s]\n" % line for line in data.split(b"\n")[:-1])


def layered(server: Server, sock: socket.socket, addr: str) -> LayeredConn:
    return LayeredConn(server, sock, addr, Brackets())


class Harness:
    """The server's loop, turned by the test while it waits for client bytes."""

    def __init__(self) -> None:
        config = Config(port=0, chat=True, history=2)
        self.server = ChatServer(open_listeners("127.0.0.1", 0), make_poller(), config)
        self.server.listen(open_listeners("127.0.0.1", 0), layered, kind="brackets")
        self.ports = [a.sock.getsockname()[1] for a in self.server.acceptors if a.sock]
        self.buffers: dict[socket.socket, bytearray] = {}

    def connect(self, which: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.ports[which]), timeout=5)
        sock.setblocking(False)
        self.buffers[sock] = bytearray()
        return sock

    def read(self, sock: socket.socket, count: int) -> list[bytes]:
        """The next `count` lines from `sock` (without newlines), turning the loop meanwhile."""
        buf = self.buffers[sock]
        deadline = time.monotonic() + 5
        while buf.count(b"\n") < count:
            assert time.monotonic() < deadline, f"only {bytes(buf)!r}"
            self.server.loop.run_once(0.01)
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                buf += b"<EOF>\n"
            buf += chunk
        lines = bytes(buf).split(b"\n")[:count]
        del buf[: sum(len(line) + 1 for line in lines)]
        return lines

    def close(self) -> None:
        for sock in self.buffers:
            sock.close()
        self.server.close()


@pytest.fixture
def harness() -> Iterator[Harness]:
    started = Harness()
    yield started
    started.close()


def test_a_layered_client_chats_with_a_tcp_client(harness: Harness) -> None:
    alice = harness.connect(0)  # TCP
    assert harness.read(alice, 2)[1] == b"* end of history"
    bob = harness.connect(1)  # through the layer
    greeting, end = harness.read(bob, 2)
    assert (
        greeting.startswith(b"[* welcome, you are guest2 in #lobby")
        and end == b"[* end of history]"
    )
    assert harness.read(alice, 1) == [b"* guest2 joined #lobby"]

    bob.sendall(b"/nick bob\nhello from the layer\n/WHO\n/bogus\n")
    assert harness.read(bob, 3) == [
        b"[* you are now bob]",
        b"[* 2 in #lobby: guest1 bob]",
        b"[ERR unknown command /bogus: /help lists the commands"
        b" (start a line with // to send it as a message)]",
    ]
    assert harness.read(alice, 2) == [b"* guest2 is now bob", b"<bob> hello from the layer"]

    alice.sendall(b"hi bob\n/me waves\n")
    assert harness.read(bob, 2) == [b"[<guest1> hi bob]", b"[* guest1 waves]"]

    late = harness.connect(1)  # history, encoded by the layer too
    assert harness.read(late, 4)[1:] == [
        b"[<guest1> hi bob]",
        b"[* guest1 waves]",
        b"[* end of history]",
    ]

    bob.sendall(b"/quit\n")
    assert harness.read(bob, 3) == [b"[* guest3 joined #lobby]", b"[* bye]", b"<EOF>"]
    assert harness.read(alice, 2) == [b"* guest3 joined #lobby", b"* bob left #lobby"]
