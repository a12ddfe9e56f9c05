"""Connecting a worker's share of clients, and the handshake that proves them registered.

A `connect()` returns once the kernel finished the TCP handshake, possibly
before the server called `accept()`, and the protocol has no history: a line
relayed before the server registered a client never reaches it.  So no
measured line is sent before every receiver proved it is registered:

1. `Connector.connect_all` opens every connection of the plan, at most
   `MAX_CONNECTING` in flight at once (so a listen backlog never overflows
   into SYN retries), each non-blocking with TCP_NODELAY.
2. Redis: every subscriber sends SUBSCRIBE and waits for the
   acknowledgement (phase SUBSCRIBED).  WebSocket: every connection sends
   its upgrade request and waits for the `101` (phase SUBSCRIBED).
3. The coordinator's probe sends a sync line (a nonce, never a valid data
   line); `Connector.wait_handshake` reads until every receiver got it
   (phase RUNNING).  Whatever follows the sync line is measured data.

A server may refuse a connection (rat: `ERR server full` and a close) or
close it right after accepting; that is reported as a refusal with the
connection's number, not as the error a later read or write would give.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable

from ratbench import ws
from ratbench.check import LatencyHistogram
from ratbench.errors import BenchError, refusal
from ratbench.pipe import CoordinatorLink
from ratbench.plan import WorkerPlan
from ratbench.poller import WOULD_BLOCK, Poller, client_tls, now_us
from ratbench.publish import Publisher
from ratbench.receive import RUNNING, SUBSCRIBED, Receiver
from ratbench.wire import RespReader, Wire, sync_line

MAX_CONNECTING = 128  # connects in flight at once (stays under listen backlogs)


class Connections:
    """Every socket of one worker, by role and by file descriptor."""

    def __init__(self) -> None:
        self.receivers: list[Receiver] = []
        self.publishers: list[Publisher] = []
        self.by_fd: dict[int, tuple[Receiver | None, Publisher | None]] = {}
        self.drains: set[int] = set()  # publish-only fds: input is read and dropped
        self.sockets: list[socket.socket] = []

    def close(self) -> None:
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


def server_address(plan: WorkerPlan) -> tuple[int, tuple[object, ...]]:
    """`(family, sockaddr)` to connect to: the coordinator's choice, or host:port as IPv4."""
    if plan.address is not None:
        family, sockaddr = plan.address
        return family, tuple(sockaddr)
    return socket.AF_INET, (plan.host, plan.port)


def show_address(host: str, port: int) -> str:
    """host:port, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Connector:
    """Opens one worker's connections and runs the handshake (see the module notes)."""

    def __init__(
        self,
        plan: WorkerPlan,
        wire: Wire,
        poller: Poller,
        link: CoordinatorLink,
        conns: Connections,
        *,
        rbuf: memoryview,
        ws_wire: Wire | None = None,
    ) -> None:
        self.plan = plan
        self.wire = wire
        self.ws_wire = ws_wire  # --ws-fraction: the clients marked in plan.ws_clients
        self.poller = poller
        self.link = link
        self.conns = conns
        self.rview = rbuf
        self.where = show_address(plan.host, plan.port)
        self.number: dict[int, int] = {}  # fd -> connection number (1-based, this worker)
        self.total = 0
        self.upgrading: dict[int, tuple[bytes, bytearray]] = {}  # WebSocket: fd -> key, reply

    def connect_all(self) -> None:
        """Open every connection of the plan (the reference subscriber first)."""
        plan = self.plan
        # (pubid, role, wire) role: "both", "pub", "sub", "ref"
        wanted: list[tuple[int, str, Wire]] = []
        # The reference is a silent subscriber: the first one of the plan if there
        # is one (fanout), else a connection of its own (chat); one per wire.
        refs: dict[int, bool] = {}
        ws_clients = plan.ws_clients or [False] * len(plan.clients)
        for (pubid, publishes, receives), on_ws in zip(plan.clients, ws_clients, strict=True):
            wire = self.ws_wire if on_ws and self.ws_wire is not None else self.wire
            if plan.reference and receives and not publishes and id(wire) not in refs:
                wanted.insert(0, (pubid, "ref", wire))
                refs[id(wire)] = True
            elif publishes and receives and wire.split_connections:
                wanted += [(pubid, "pub", wire), (pubid, "sub", wire)]
            elif publishes and receives:
                wanted.append((pubid, "both", wire))
            elif publishes:
                wanted.append((pubid, "pub", wire))
            else:
                wanted.append((pubid, "sub", wire))
        if plan.reference:  # chat: a silent reference of its own for each wire in use
            receiving = {id(w): w for _, role, w in wanted if role != "pub"}
            for key, wire in receiving.items():
                if key not in refs:
                    wanted.insert(0, (0, "ref", wire))
        self.total = len(wanted)
        addresses = {id(self.wire): server_address(plan)}
        if self.ws_wire is not None and plan.ws_address is not None:
            family, sockaddr = plan.ws_address
            addresses[id(self.ws_wire)] = (family, tuple(sockaddr))
        deadline = time.monotonic() + plan.connect_timeout
        tls = client_tls(plan.tls_ca) if plan.tls else None
        connecting: dict[int, tuple[socket.socket, int, str, Wire]] = {}
        shaking: set[int] = set()  # TLS handshakes under way
        todo = deque(wanted)
        sampled = 0
        while todo or connecting:
            while todo and len(connecting) < MAX_CONNECTING:
                pubid, role, wire = todo.popleft()
                family, sockaddr = addresses[id(wire)]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns.sockets.append(sock)
                self.number[sock.fileno()] = len(self.conns.sockets)
                err = sock.connect_ex(sockaddr)
                if err not in (0, errno.EINPROGRESS):
                    raise BenchError(self._cannot_connect(err))
                connecting[sock.fileno()] = (sock, pubid, role, wire)
                self.poller.register(sock.fileno(), self.poller.OUT)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"timed out after {plan.connect_timeout:g} s (--setup-timeout) connecting:"
                    f" {len(connecting) + len(todo)} of {len(wanted)} connections to"
                    f" {self.where} not established"
                )
            for fd, _ in self.poller.poll(min(left, 0.5)):
                if fd not in connecting:  # already connected (and has data): later
                    continue
                sock, pubid, role, wire = connecting.pop(fd)
                if fd not in shaking:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(self._cannot_connect(err))
                    if tls is not None:
                        sock = self._wrap(sock, tls)
                        shaking.add(fd)
                if fd in shaking:
                    if not self._tls_handshake(sock):
                        connecting[fd] = (sock, pubid, role, wire)
                        continue
                    shaking.discard(fd)
                timed = plan.latency_receivers < 0 or sampled < plan.latency_receivers
                self._add(sock, pubid, role, timed, wire)
                if role != "pub" and timed:
                    sampled += 1

    def _wrap(self, sock: socket.socket, tls: ssl.SSLContext) -> ssl.SSLSocket:
        """`--tls`: the TLS socket over `sock` (same descriptor; the handshake is to come)."""
        wrapped = tls.wrap_socket(
            sock, server_hostname=self.plan.host, do_handshake_on_connect=False
        )
        conns = self.conns
        conns.sockets[conns.sockets.index(sock)] = wrapped  # `sock` is detached now
        return wrapped

    def _tls_handshake(self, sock: socket.socket) -> bool:
        """One step of a non-blocking TLS handshake: True when done, else what to wait for."""
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.poller.modify(sock.fileno(), self.poller.IN)
            return False
        except ssl.SSLWantWriteError:
            self.poller.modify(sock.fileno(), self.poller.OUT)
            return False
        except (ssl.SSLError, OSError) as err:
            raise BenchError(
                f"the TLS handshake with {self.where} failed: {err}; is it a TLS port"
                " (and, with --tls-ca, a certificate that file vouches for)?"
            ) from None
        return True

    def _cannot_connect(self, err: int) -> str:
        hint = " (is the server running on that port?)" if err == errno.ECONNREFUSED else ""
        return f"cannot connect to {self.where}: {os.strerror(err)}{hint}"

    def _add(self, sock: socket.socket, pubid: int, role: str, timed: bool, wire: Wire) -> None:
        conns = self.conns
        fd = sock.fileno()
        rx: Receiver | None = None
        pub: Publisher | None = None
        if role in ("ref", "both", "sub"):
            rx = Receiver(sock, pubid, LatencyHistogram() if timed else None, wire)
            if not wire.handshake:
                rx.phase = SUBSCRIBED  # nothing to wait for but the sync line
            if wire.subscribe:
                rx.resp = RespReader()
                sock.sendall(wire.subscribe)  # a few bytes into an empty buffer
            if role == "ref":
                conns.receivers.insert(0, rx)
            else:
                conns.receivers.append(rx)
        if role in ("both", "pub"):
            pub = Publisher(sock, pubid, self.plan.line_size, self.plan.max_lines_per_publisher)
            pub.wire = wire
            conns.publishers.append(pub)
            if rx is None:
                conns.drains.add(fd)
        if wire.upgrade:
            key = ws.new_key()
            self.upgrading[fd] = (key, bytearray())
            where = self.plan.ws_where if wire is self.ws_wire else self.where
            sock.sendall(ws.upgrade_request(where, key))
        conns.by_fd[fd] = (rx, pub)
        self.poller.modify(fd, self.poller.IN)

    def _which(self, fd: int) -> str:
        number = self.number.get(fd, 0)
        return f"connection {number} of {self.total} of generator process {self.plan.index}"

    def wait_handshake(
        self, want: int, deadline: float, on_data: Callable[[Receiver, bytes, int], None]
    ) -> None:
        """Read until every receiver reached phase `want` (SUBSCRIBED or RUNNING).

        Redis: a subscriber is SUBSCRIBED once its SUBSCRIBE is acknowledged,
        which proves the server registered it.  Every receiver is RUNNING once
        it got the probe's sync line: everything after that is measured and
        goes to `on_data`.
        """
        receivers = self.conns.receivers
        what = "the subscribe acknowledgement" if want == SUBSCRIBED else "the sync line"
        sync = sync_line(self.plan.sync_nonce, self.plan.line_size)
        if self.upgrading and want == SUBSCRIBED:
            what = "the WebSocket upgrade"
        while True:
            behind = sum(1 for r in receivers if r.phase < want)
            if not behind and not (want == SUBSCRIBED and self.upgrading):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"timed out after {self.plan.connect_timeout:g} s (--setup-timeout) waiting"
                    f" for {what} on {behind} of {len(receivers)} connections"
                )
            for fd, _ in self.poller.poll(min(left, 0.5)):
                if fd == self.link.fileno():
                    self.link.read()
                    if self.link.aborted:
                        raise BenchError("aborted by the coordinator")
                    continue
                rx, pub = self.conns.by_fd[fd]
                sock = rx.sock if rx is not None else pub.sock if pub is not None else None
                assert sock is not None
                try:
                    data = self.rview[: sock.recv_into(self.rview)].tobytes()
                except WOULD_BLOCK:
                    continue
                except OSError as err:
                    raise BenchError(
                        f"{self._which(fd)} failed before {what}:"
                        f" {err.strerror or err} (the server reset it)"
                    ) from None
                fresh = rx is None or (rx.phase < RUNNING and not rx.slow_buf)
                if not data or fresh:
                    refused = refusal(data, self._which(fd))
                    if refused is not None:
                        raise BenchError(refused)
                if fd in self.upgrading:
                    data = self._upgraded(fd, data)
                    if fd in self.upgrading:
                        continue
                    if rx is not None:
                        rx.phase = SUBSCRIBED
                if rx is None:
                    continue  # a publish-only connection: drop what it gets
                if rx.phase == RUNNING:
                    on_data(rx, data, now_us())
                    continue
                rx.slow_buf += data
                rest = self._handshake(rx, sync)
                if rest:
                    on_data(rx, rest, now_us())

    def _upgraded(self, fd: int, data: bytes) -> bytes:
        """WebSocket: collect the upgrade reply; once complete and right, the bytes after it."""
        key, reply = self.upgrading[fd]
        reply += data
        end = reply.find(b"\r\n\r\n")
        if end < 0:
            if len(reply) > 16384:
                raise BenchError(f"{self._which(fd)}: no end to the server's upgrade reply")
            return b""
        why = ws.check_upgrade(bytes(reply[:end]), key)
        if why is not None:
            raise BenchError(f"{self._which(fd)}: {why}; is --port a WebSocket port (path /ws)?")
        del self.upgrading[fd]
        return bytes(reply[end + 4 :])

    def _handshake(self, rx: Receiver, sync: bytes) -> bytes:
        """Consume the subscribe ack and the sync frame; return the bytes after them."""
        if rx.wire.upgrade:  # WebSocket: the sync message, as a fixed-size frame
            frame = rx.wire.received(sync)
            got = bytes(rx.slow_buf[: len(frame)])
            if not frame.startswith(got):
                raise BenchError(
                    "the server sent a message before the sync message; is something else"
                    f" publishing on it? (expected {frame[:26]!r}..., got {got[:80]!r})"
                )
            if len(got) < len(frame):
                return b""
            rx.phase = RUNNING
            rest = bytes(rx.slow_buf[len(frame) :])
            rx.slow_buf = bytearray()
            return rest
        if rx.resp is None:  # the line protocol
            nl = rx.slow_buf.find(b"\n")
            if nl < 0:
                if len(rx.slow_buf) > 4 * len(sync):
                    raise BenchError(
                        f"the server sent {len(rx.slow_buf)} bytes without a newline where"
                        f" the sync line was expected: {bytes(rx.slow_buf[:80])!r}"
                    )
                return b""
            line = bytes(rx.slow_buf[: nl + 1])
            if line != sync:
                raise BenchError(
                    "the server sent a line before the sync line; is something else"
                    f" publishing on it? (expected {sync[:24]!r}..., got {line[:80]!r})"
                )
            rx.phase = RUNNING
            rest = bytes(rx.slow_buf[nl + 1 :])
            rx.slow_buf = bytearray()
            return rest
        rx.resp.feed(bytes(rx.slow_buf))
        rx.slow_buf = bytearray()
        while True:
            try:
                item = rx.resp.next()
            except ValueError as err:
                raise BenchError(
                    f"the server's reply is not Redis protocol (RESP): {err}; is it a Redis"
                    " server? (--proto redis)"
                ) from None
            if item is RespReader.NEED_MORE:
                return b""
            if isinstance(item, Exception):
                raise BenchError(f"the Redis server answered with an error: {item}")
            if isinstance(item, list) and item and item[0] == b"subscribe":
                rx.phase = max(rx.phase, SUBSCRIBED)
                continue
            if (
                rx.phase == SUBSCRIBED
                and isinstance(item, list)
                and len(item) == 3
                and item[0] == b"message"
                and item[2] == sync[:-1]
            ):
                rx.phase = RUNNING
                rest = rx.resp.pending
                rx.resp = RespReader()  # for the slow path, should it be needed
                return rest
            raise BenchError(
                "expected the subscribe acknowledgement, then the sync message; the server"
                f" sent {item!r:.80}; is something else publishing on channel 'rat'?"
            )


class Probe:
    """The coordinator's own connection: it sends the sync line (idle: and the broadcast).

    `Probe.open` resolves the host (a name, IPv4 or IPv6) and connects to the
    first address that answers; the workers then connect to that address.  A
    server that refuses the probe, or closes it, is reported as such before
    a later write could fail with a broken pipe.
    """

    def __init__(self, sock: socket.socket, where: str, address: tuple[int, object]) -> None:
        self.sock = sock
        self.where = where
        self.address = address  # (family, sockaddr) that answered
        self.fresh = True  # nothing received yet: a refusal would come first

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        timeout: float,
        wire: Wire | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Probe:
        """Connect to the first address of `host` that answers (TLS, WebSocket: and shake)."""
        where = show_address(host, port)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise BenchError(f"cannot resolve the server's host {host!r}: {err.strerror}") from None
        failures: list[str] = []
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
            except OSError as err:
                sock.close()
                failures.append(f"{show_address(str(sockaddr[0]), port)}: {err.strerror or err}")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                try:
                    sock = tls.wrap_socket(sock, server_hostname=host)
                except (ssl.SSLError, OSError) as err:
                    sock.close()
                    raise BenchError(
                        f"the TLS handshake with {where} failed: {err}; is it a TLS port"
                        " (and, with --tls-ca, a certificate that file vouches for)?"
                    ) from None
            probe = cls(sock, where, (family, sockaddr))
            if wire is not None and wire.upgrade:
                probe.upgrade()
            sock.settimeout(None)  # blocking; `check` reads without blocking
            return probe
        hint = " (is the server running on that port?)" if "refused" in " ".join(failures) else ""
        raise BenchError(f"cannot connect to {where}: {'; '.join(failures)}{hint}")

    def upgrade(self) -> None:
        """The WebSocket opening handshake, blocking (the socket has a timeout)."""
        key = ws.new_key()
        reply = b""
        try:
            self.sock.sendall(ws.upgrade_request(self.where, key))
            while b"\r\n\r\n" not in reply:
                data = self.sock.recv(4096)
                refused = refusal(data, "the probe connection") if not reply else None
                if refused is not None:
                    raise BenchError(refused)
                reply += data
        except OSError as err:
            self.sock.close()
            raise BenchError(
                f"the probe's WebSocket upgrade at {self.where} failed: {err.strerror or err}"
            ) from None
        why = ws.check_upgrade(reply.split(b"\r\n\r\n", 1)[0], key)
        if why is not None:
            self.sock.close()
            raise BenchError(f"the probe connection: {why}; is --port a WebSocket port (path /ws)?")
        self.fresh = False

    def check(self) -> None:
        """BenchError if the server refused or closed the probe (reads without waiting)."""
        self.sock.setblocking(False)  # (a TLS socket takes no MSG_DONTWAIT)
        try:
            self._check()
        finally:
            self.sock.setblocking(True)

    def _check(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except WOULD_BLOCK:
                return
            except OSError:
                data = b""  # reset: closed right after accepting
            if not data or self.fresh:
                refused = refusal(data, "the probe connection")
                if refused is not None:
                    raise BenchError(refused)
            self.fresh = False  # anything else (Redis: PUBLISH replies) is not ours to check

    def send(self, data: bytes) -> None:
        """Send `data` whole; a failure says why (a refusal first, if that is what it was)."""
        self.check()
        try:
            self.sock.sendall(data)
        except OSError as err:
            self.check()
            raise BenchError(
                f"the probe connection to {self.where} failed: {err.strerror or err}"
                " (the server closed it)"
            ) from None

    def close(self) -> None:
        self.sock.close()
