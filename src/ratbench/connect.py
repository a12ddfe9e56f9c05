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
   its upgrade request and waits for the `101` (phase SUBSCRIBED).  Chat
   mode: every connection waits for the server's greeting, then joins its
   room (`/join #rK`, with `--rooms`) and, if it publishes, takes the nick
   its lines are checked against (`/nick b00001`), and waits for both
   replies (`ChatSetup`; phase SUBSCRIBED).
3. The coordinator's probe sends a sync line (a nonce, never a valid data
   line); `Connector.wait_handshake` reads until every receiver got it
   (phase RUNNING).  Whatever follows the sync line is measured data.
   (Chat mode: notices and a room's history before it are skipped.)

Silent connections keep the guest nick the server gave them: only a
sender's nick is ever checked, and a nick change is announced to the whole
room whatever its size (10,000 silent clients renaming themselves in one
room would cost the server 10^8 notices before the first measured line).

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
from ratbench.plan import ClientPlan, WorkerPlan, room_name
from ratbench.poller import WOULD_BLOCK, Poller, client_tls, now_us
from ratbench.publish import Publisher
from ratbench.receive import RUNNING, SUBSCRIBED, Receiver
from ratbench.wire import NOTICE, RespReader, Wire, chat_nick, sync_line

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


def show_address(host: str, port: int) -> str:
    """host:port, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_timed(index: int, count: int, want: int) -> bool:
    """Is receiver `index` (of `count`, in connection order) one of the `want` timed ones?

    `want` < 0: all are.  Otherwise `want` of them, evenly spaced over the
    order, so that they sit early, late and in between in a server's list.
    """
    if want < 0 or want >= count:
        return True
    return (index + 1) * want // count > index * want // count


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
        self.ws_wire = ws_wire  # --ws-fraction: the clients marked `ws` in the plan
        self.poller = poller
        self.link = link
        self.conns = conns
        self.rview = rbuf
        self.where = plan.wheres[0]
        self.number: dict[int, int] = {}  # fd -> connection number (1-based, this worker)
        self.node_of: dict[int, int] = {}  # fd -> server node
        self.total = 0
        self.upgrading: dict[int, tuple[bytes, bytearray]] = {}  # WebSocket: fd -> key, reply
        self.chatting: dict[int, ChatSetup] = {}  # chat mode: fd -> its way in
        self.heard: set[int] = set()  # fds that received something
        # The timed receivers of one server share a histogram: adding is all
        # they do with it, and one histogram folds (see `LatencyHistogram`)
        # far less often than many small ones would.
        self.hists: dict[int, LatencyHistogram] = {}

    def wanted(self) -> list[tuple[ClientPlan, str, Wire]]:
        """Every connection to open: (client, role, wire), the reference subscribers first.

        Role: "both", "pub", "sub" or "ref".  One reference per wire, room and
        node in use: the first silent subscriber there (fanout), else a
        connection of its own (chat; or a room whose publishers have no
        subscriber in this worker, so that their window still closes).
        """
        plan = self.plan
        wanted: list[tuple[ClientPlan, str, Wire]] = []
        refs: set[tuple[int, int, int]] = set()
        receiving: dict[tuple[int, int, int], tuple[ClientPlan, Wire]] = {}
        publishing: dict[int, ClientPlan] = {}  # room -> a publisher in it
        for client in plan.clients:
            wire = self.ws_wire if client.ws and self.ws_wire is not None else self.wire
            group = (id(wire), client.room, client.node)
            if client.receives:
                receiving.setdefault(group, (client, wire))
            if client.publishes:
                publishing.setdefault(client.room, client)
            if plan.reference and client.receives and not client.publishes and group not in refs:
                wanted.insert(0, (client, "ref", wire))
                refs.add(group)
            elif client.publishes and client.receives and wire.split_connections:
                wanted += [(client, "pub", wire), (client, "sub", wire)]
            elif client.publishes and client.receives:
                wanted.append((client, "both", wire))
            elif client.publishes:
                wanted.append((client, "pub", wire))
            else:
                wanted.append((client, "sub", wire))
        if plan.reference:
            for group, (client, wire) in receiving.items():
                if group not in refs:
                    silent = ClientPlan(0, False, True, client.ws, client.room, client.node)
                    wanted.insert(0, (silent, "ref", wire))
                    refs.add(group)
            for room, client in publishing.items():
                if not any(r == room for _, r, _ in refs):
                    silent = ClientPlan(0, False, True, False, room, client.node)
                    wanted.insert(0, (silent, "ref", self.wire))
                    refs.add((id(self.wire), room, client.node))
        return wanted

    def connect_all(self) -> None:
        """Open every connection of the plan (the reference subscribers first)."""
        plan = self.plan
        wanted = self.wanted()
        self.total = len(wanted)
        addresses = {
            (id(self.wire), node): (family, tuple(sockaddr))
            for node, (family, sockaddr) in enumerate(plan.addresses)
        }
        if self.ws_wire is not None and plan.ws_address is not None:
            family, sockaddr = plan.ws_address
            addresses[(id(self.ws_wire), 0)] = (family, tuple(sockaddr))
        deadline = time.monotonic() + plan.connect_timeout
        tls = client_tls(plan.tls_ca) if plan.tls else None
        connecting: dict[int, tuple[socket.socket, ClientPlan, str, Wire]] = {}
        shaking: set[int] = set()  # TLS handshakes under way
        todo = deque(wanted)
        # Which receivers are timed: `latency_receivers` of them, spread evenly
        # over the order in which they connect.  The server accepts them in
        # about that order and many servers also send a turn's lines in it,
        # so the first ones connected would be the first served: timing only
        # those would flatter a server that sends in accept order.
        want = plan.latency_receivers
        n_rx = sum(1 for _, role, _ in wanted if role != "pub")
        seen = 0
        while todo or connecting:
            while todo and len(connecting) < MAX_CONNECTING:
                client, role, wire = todo.popleft()
                family, sockaddr = addresses[(id(wire), client.node)]
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.conns.sockets.append(sock)
                self.number[sock.fileno()] = len(self.conns.sockets)
                self.node_of[sock.fileno()] = client.node
                err = sock.connect_ex(sockaddr)
                if err not in (0, errno.EINPROGRESS):
                    raise BenchError(self._cannot_connect(err, client.node))
                connecting[sock.fileno()] = (sock, client, role, wire)
                self.poller.register(sock.fileno(), self.poller.OUT)
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"timed out after {plan.connect_timeout:g} s (--setup-timeout) connecting:"
                    f" {len(connecting) + len(todo)} of {len(wanted)} connections to"
                    f" {', '.join(plan.wheres)} not established"
                )
            for fd, _ in self.poller.poll(min(left, 0.5)):
                if fd not in connecting:  # already connected (and has data): later
                    continue
                sock, client, role, wire = connecting.pop(fd)
                if fd not in shaking:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise BenchError(self._cannot_connect(err, client.node))
                    if tls is not None:
                        sock = self._wrap(sock, tls)
                        shaking.add(fd)
                if fd in shaking:
                    if not self._tls_handshake(sock):
                        connecting[fd] = (sock, client, role, wire)
                        continue
                    shaking.discard(fd)
                timed = False
                if role != "pub":
                    timed = is_timed(seen, n_rx, want)
                    seen += 1
                self._add(sock, client, role, timed, wire)

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

    def _cannot_connect(self, err: int, node: int = 0) -> str:
        hint = " (is the server running on that port?)" if err == errno.ECONNREFUSED else ""
        return f"cannot connect to {self.plan.wheres[node]}: {os.strerror(err)}{hint}"

    def _add(
        self, sock: socket.socket, client: ClientPlan, role: str, timed: bool, wire: Wire
    ) -> None:
        conns = self.conns
        fd = sock.fileno()
        pubid = client.pubid
        rx: Receiver | None = None
        pub: Publisher | None = None
        if role in ("ref", "both", "sub"):
            hist = self.hists.setdefault(client.node, LatencyHistogram()) if timed else None
            rx = Receiver(sock, pubid, hist, wire)
            rx.room, rx.node = client.room, client.node
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
            where = self.plan.ws_where if wire is self.ws_wire else self.plan.wheres[client.node]
            sock.sendall(ws.upgrade_request(where, key))
        if wire.chat:
            self.chatting[fd] = ChatSetup(
                wire,
                sock.sendall,
                self._which(fd),
                nick=chat_nick(pubid) if role in ("both", "pub") else None,
                room=room_name(client.room, self.plan.rooms) if self.plan.rooms > 1 else None,
            )
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
        if self.chatting and want == SUBSCRIBED:
            what = (
                "the chat greeting and the replies to /join and /nick (is the server in"
                " chat mode, rat serve --chat?)"
            )
        while True:
            behind = sum(1 for r in receivers if r.phase < want)
            if want == SUBSCRIBED:
                behind = max(behind, len(self.upgrading) + len(self.chatting))
            if not behind:
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
                fresh = fd not in self.heard  # a refusal comes first
                self.heard.add(fd)
                if not data or fresh:
                    refused = refusal(data, self._which(fd))
                    if refused is not None:
                        raise BenchError(refused)
                if fd in self.upgrading:
                    data = self._upgraded(fd, data)
                    if fd in self.upgrading:
                        continue
                    if rx is not None and not rx.wire.chat:
                        rx.phase = SUBSCRIBED
                if fd in self.chatting:
                    rest = self.chatting[fd].feed(data)
                    if rest is None:
                        continue
                    del self.chatting[fd]
                    data = rest
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
        if rx.wire.chat:
            return self._chat_handshake(rx, rx.wire.received(sync))
        if rx.wire.upgrade:  # WebSocket: the sync message, as a fixed-size frame
            frame = rx.wire.received(sync)
            got = bytes(rx.slow_buf[: len(frame)])
            if not frame.startswith(got):
                raise BenchError(
                    "the server sent a message before the sync message; is something else"
                    f" publishing on it? (expected {frame[:26]!r}..., got {got[:80]!r})"
                    + _chat_hint(got[2:])
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
                    + _chat_hint(line)
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

    def _chat_handshake(self, rx: Receiver, sync_frame: bytes) -> bytes:
        """Chat mode: skip notices and history up to the sync frame; the bytes after it."""
        buf = rx.slow_buf
        pos = 0
        while True:
            got = rx.wire.next_frame(buf, pos)
            if got is None:
                del buf[:pos]
                return b""
            end, line = got
            if buf[pos:end] == sync_frame:
                rx.phase = RUNNING
                rest = bytes(buf[end:])
                rx.slow_buf = bytearray()
                return rest
            # notices, control frames; a room's history (messages from before)
            if line is not None and not line.startswith((NOTICE, b"<")):
                raise BenchError(
                    "the server sent a line before the sync line; is something else"
                    f" publishing on it? (expected {sync_frame[:24]!r}..., got {line[:80]!r})"
                )
            pos = end


def _chat_hint(line: bytes) -> str:
    """A hint for a line that looks like a chat server's greeting."""
    if line.startswith(NOTICE):
        return "; that looks like a chat server's greeting: give --chat"
    return ""


class ChatSetup:
    """One connection's way into chat mode: the greeting, /join and /nick, their replies.

    `feed(data)` takes what the server sent; once the greeting came and
    every command was answered it returns the bytes after the last reply
    (else None).  A refusal or an `ERR` answer is a `BenchError` that says
    what was refused.
    """

    def __init__(
        self,
        wire: Wire,
        send: Callable[[bytes], object],
        which: str,
        nick: bytes | None = None,
        room: bytes | None = None,
    ) -> None:
        self.wire = wire
        self.send = send
        self.which = which
        self.buf = bytearray()
        self.greeted = False
        # what each command is answered with (a line that starts so), and the command
        self.waiting: dict[bytes, bytes] = {}
        if room is not None:
            self.waiting[b"* you joined %s (" % room] = b"/join " + room
        if nick is not None:
            self.waiting[b"* you are now %s\n" % nick] = b"/nick " + nick

    def feed(self, data: bytes) -> bytes | None:
        buf = self.buf
        buf += data
        pos = 0
        while self.waiting or not self.greeted:
            got = self.wire.next_frame(buf, pos)
            if got is None:
                if len(buf) - pos > 65536:
                    raise BenchError(f"{self.which}: the server sent 64 KiB without a newline")
                del buf[:pos]
                return None
            pos, line = got
            if line is None:
                continue  # a control frame
            if not self.greeted:
                if not line.startswith(NOTICE):
                    refused = refusal(line, self.which)
                    raise BenchError(
                        refused
                        or f"{self.which} got {line[:80]!r} where a chat server greets with"
                        " '* ...'; is the server in chat mode (rat serve --chat)?"
                    )
                self.greeted = True
                commands = [command + b"\n" for command in self.waiting.values()]
                if commands:
                    self.send(self.wire.publish(commands))
                continue
            for reply in list(self.waiting):
                if line.startswith(reply):
                    del self.waiting[reply]
            if line.startswith(b"ERR "):
                refused = next(iter(self.waiting.values()), b"a command").decode()
                hint = "; is another benchmark running on this server?" if b"taken" in line else ""
                raise BenchError(
                    f"{self.which}: the server answered {refused!r} with"
                    f" {line.decode(errors='replace').strip()!r}{hint}"
                )
        rest = bytes(buf[pos:])
        self.buf = bytearray()
        return rest


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
        """Connect to the first address of `host` that answers (TLS, WebSocket: and shake).

        Chat mode: it also waits for the greeting and takes the nick of
        publisher 0, so that its lines are relayed with a known prefix.
        """
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
            if wire is not None and wire.chat:
                probe.enter_chat(wire)
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

    def enter_chat(self, wire: Wire) -> None:
        """Chat mode: the greeting, then `/nick b00000` (blocking; the socket has a timeout)."""
        setup = ChatSetup(wire, self.sock.sendall, "the probe connection", nick=chat_nick(0))
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    raise BenchError(refusal(data, "the probe connection") or "")
                if setup.feed(data) is not None:
                    break
        except OSError as err:
            self.sock.close()
            raise BenchError(
                f"the probe connection to {self.where} failed while entering chat mode:"
                f" {err.strerror or err}"
                + (
                    " (is the server in chat mode, rat serve --chat?)"
                    if "timed" in str(err)
                    else ""
                )
            ) from None
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
