"""An in-process harness: a real `Server` on loopback, driven one turn at a time.

The subprocess tests see rat from outside; these see it from inside, without
threads.  `Harness` builds a `Server` on a loopback listener and the test
thread drives it: `turn()` runs one `server.loop.run_once()` and then lets
every client `Peer` send what it has and read what arrived, all non-blocking.
`run_until(condition)` repeats that until the condition holds (bounded), so
a test can say "until every receiver has 300 lines" and then look inside the
server (its connections, counters, poller calls) at that exact point.

Time is the loop's clock (`Loop.clock`), replaced by a `Clock` that runs
with real time plus an offset the test can jump: `advance(31)` makes a
30-second write timeout due at once, while everything else (lingering
closes, retries) keeps running at the real pace.

Transports
----------
How a client reaches the server is a `Transport`: it adds its listener to
the server and connects a client socket with a client-side `Codec` (what
turns the client's lines into wire bytes and back).  Plain TCP is the
identity.  A TLS or WebSocket transport adds its own listener (its own
connection factory, through `Server.listen`) and a codec that wraps an
`ssl.SSLObject` or a wsproto client; register it in `TRANSPORTS` and every
contract test runs over it too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Protocol

from rat.config import Config
from rat.connection import Conn
from rat.net import format_addr, open_listeners
from rat.poller import WRITABLE, Event, Poller, make_poller
from rat.server import Server


class Clock:
    """Real monotonic time plus an offset that `advance` moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class InterestChange:
    """One register/modify call: the fd, the new interest, and what its connection had queued."""

    __slots__ = ("fd", "interest", "pending")

    def __init__(self, fd: int, interest: int, pending: int | None) -> None:
        self.fd = fd
        self.interest = interest
        self.pending = pending  # None: not a connection (listener, wakeup socket)

    def __repr__(self) -> str:
        return f"<fd={self.fd} interest={self.interest} pending={self.pending}>"


class RecordingPoller(Poller):
    """Wraps a real poller; records every interest change with the queue size at that moment."""

    def __init__(self, inner: Poller) -> None:
        self.inner = inner
        self.name = inner.name
        self.edge_triggered = inner.edge_triggered
        self.changes: list[InterestChange] = []
        self.pending_of: Callable[[int], int | None] = lambda fd: None

    def register(self, fd: int, interest: int) -> None:
        self.inner.register(fd, interest)
        self.changes.append(InterestChange(fd, interest, self.pending_of(fd)))

    def modify(self, fd: int, interest: int) -> None:
        self.inner.modify(fd, interest)
        self.changes.append(InterestChange(fd, interest, self.pending_of(fd)))

    def unregister(self, fd: int) -> None:
        self.inner.unregister(fd)

    def poll(self, timeout: float | None) -> list[Event]:
        return self.inner.poll(timeout)

    def close(self) -> None:
        self.inner.close()


class Codec:
    """The client side of a transport's protocol; plain TCP is the identity."""

    ready = True  # the handshake (if any) is done

    def outgoing(self) -> bytes:
        """Wire bytes the protocol needs sent (a handshake), or b""."""
        return b""

    def encode(self, app: bytes) -> bytes:
        return app

    def decode(self, wire: bytes) -> bytes:
        return wire


class Peer:
    """A client: a non-blocking socket, its codec, what it sent and what it got."""

    def __init__(self, sock: socket.socket, codec: Codec) -> None:
        self.sock = sock
        self.codec = codec
        self.outbox = bytearray()  # wire bytes not yet taken by the kernel
        self.inbox = bytearray()  # application bytes received
        self.reading = True  # False: leave the bytes in the kernel (a slow consumer)
        self.eof = False  # the server closed (FIN or reset)
        self.closed = False

    @property
    def addr(self) -> str:
        """The address the server sees for this client."""
        return format_addr(self.sock.getsockname())

    def send(self, app: bytes) -> None:
        """Queue `app` bytes; they go out over the next turns."""
        self.outbox += self.codec.encode(app)
        self.pump()

    def pump(self) -> None:
        """Send what the kernel takes; read what arrived (if reading)."""
        if self.closed:
            return
        self.outbox += self.codec.outgoing()
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                break
            except OSError:  # the server is gone
                self.outbox.clear()
                break
            del self.outbox[:sent]
        while self.reading and not self.eof:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError:  # reset
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.inbox += self.codec.decode(data)

    def lines(self) -> list[bytes]:
        """The complete lines received so far."""
        end = self.inbox.rfind(b"\n") + 1
        return [line + b"\n" for line in bytes(self.inbox[:end]).split(b"\n")[:-1]]

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class Transport(Protocol):
    """How clients reach the server (see the module docstring)."""

    name: str

    def listen(self, server: Server) -> tuple[str, int]:
        """Add this transport's listener(s) to `server`; return where clients connect."""
        ...

    def connect(self, address: tuple[str, int], rcvbuf: int | None) -> Peer:
        """A connected client (its handshake may still be running)."""
        ...


class PlainTransport:
    """Line clients over plain TCP (`rat serve`'s own listener)."""

    name = "plain"

    def listen(self, server: Server) -> tuple[str, int]:
        socks = open_listeners("127.0.0.1", 0)
        server.listen(socks)
        host, port = socks[0].getsockname()[:2]
        return str(host), int(port)

    def connect(self, address: tuple[str, int], rcvbuf: int | None) -> Peer:
        return Peer(connect_socket(address, rcvbuf), Codec())


def connect_socket(address: tuple[str, int], rcvbuf: int | None) -> socket.socket:
    """A connected, non-blocking TCP socket (a small `rcvbuf` is set before connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        # The kernel completes a loopback handshake without the server's
        # accept(): this returns at once, and the loop accepts it later.
        sock.connect(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


TRANSPORTS: dict[str, Callable[[], Transport]] = {"plain": PlainTransport}


class Harness:
    """A `Server` on loopback, its clients, and the test thread turning its loop."""

    def __init__(self, backend: str, transport: Transport, config: Config | None = None) -> None:
        self.clock = Clock()
        self.poller = RecordingPoller(make_poller(backend))
        self.server = Server([], self.poller, config or Config())
        self.server.loop.clock = self.clock
        self.poller.pending_of = self._pending_of
        self.transport = transport
        self.address = transport.listen(self.server)
        self.peers: list[Peer] = []

    def _pending_of(self, fd: int) -> int | None:
        handler = self.server.loop.handlers.get(fd)
        return handler.pending if isinstance(handler, Conn) else None

    # ------------------------------------------------------------- clients

    def connect(self, rcvbuf: int | None = None) -> Peer:
        """A client, accepted and in the lobby once this returns."""
        peer = self.transport.connect(self.address, rcvbuf)
        self.peers.append(peer)
        self.run_until(
            lambda: peer.codec.ready and self.conn_of(peer).room is not None,
            what=f"{peer.addr} admitted",
        )
        return peer

    def find_conn(self, peer: Peer) -> Conn | None:
        """The server's connection for `peer` (None once closed)."""
        addr = peer.addr
        for conn in self.server.connections():
            if conn.addr == addr:
                return conn
        return None

    def conn_of(self, peer: Peer) -> Conn:
        conn = self.find_conn(peer)
        if conn is None:
            raise LookupError(f"no connection for {peer.addr}")
        return conn

    # ---------------------------------------------------------------- time

    def turn(self, timeout: float = 0.002) -> None:
        """One loop turn, then every client sends and reads."""
        for peer in self.peers:
            peer.pump()
        self.server.loop.run_once(timeout)
        for peer in self.peers:
            peer.pump()

    def run_until(
        self, condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """Turn until `condition()` holds; fail after `timeout` seconds of real time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except LookupError:  # not accepted yet
                pass
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.turn()

    def run_for(self, seconds: float) -> None:
        """Turn for `seconds` of real time (to show that something does not happen)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.turn()

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.server.close()


def writable_changes(poller: RecordingPoller, fd: int) -> list[InterestChange]:
    """The interest changes of `fd` that asked for WRITABLE."""
    return [c for c in poller.changes if c.fd == fd and c.interest & WRITABLE]
