"""The admin port: one HTTP request, one response, on the server's own loop.

An admin connection is not a client of the broadcast: it joins no room,
does not count against `--max-clients`, and its bytes are not in the
server's counters (a scrape must not show up in what it measures).  So it is
its own small handler, not a `Conn`:

    READING     recv -> h11.Connection.receive_data -> next_event()
                (h11 is the HTTP parser, sans-IO: bytes in, events out)
    ANSWERING   the request is valid: it waits for the end of the turn
    SENDING     the response is queued (an OutBuffer) and flushed
    LINGERING   our side is shut; we wait for the client's FIN, then close

Why answer at the end of the turn: the end-of-turn hooks run after the
server's delivery, so every line read this turn has reached the receivers'
queues and the per-room totals.  A scrape then sees one consistent moment,
never a line counted in but not yet out.

Every way a request can go wrong ends in a status and a close, never in a
traceback: a malformed request gets 400 (h11 says why), an unknown path 404,
another method than GET or HEAD 405, a client that does not finish its
request within `REQUEST_TIMEOUT` gets 408, one that does not take its
response within `RESPONSE_TIMEOUT` is closed.  A failure while rendering is
a bug in rat: it is logged with its traceback and answered with 500, and the
loop goes on.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import h11

from rat.admin.exposition import (
    SORT_KEYS,
    STREAM_BATCH,
    clients_stream,
    clients_view,
    closed_view,
    render_metrics,
)
from rat.admin.telemetry import Telemetry
from rat.listener import Acceptor, refuse
from rat.outbuf import OutBuffer
from rat.poller import READABLE, WRITABLE
from rat.timers import Timer

if TYPE_CHECKING:
    from rat.server import Server

log = logging.getLogger("rat")

REQUEST_TIMEOUT = 10.0  # seconds to send a whole request head
RESPONSE_TIMEOUT = 30.0  # seconds for the client to take its response
LINGER_SECONDS = 2.0  # after the response, how long to wait for the client's FIN
MAX_REQUEST_HEAD = 16 * 1024  # bytes: a longer request line plus headers is refused
MAX_CONNECTIONS = 64  # admin connections at once; more are refused with 503
RECV_SIZE = 64 * 1024
LINGER_BUDGET = 64 * 1024  # bytes read and dropped after the response before giving up

# States.
READING = 0
ANSWERING = 1
SENDING = 2
LINGERING = 3
CLOSED = 4

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
METRICS = "text/plain; version=0.0.4; charset=utf-8"
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\nconnection: close\r\n\r\ntoo many admin connections open\n"
)

# Out of descriptors (rat.listener sheds the connection): the web port's 503,
# `rat.web.SERVER_BUSY`, written out here as REFUSED is (tests check the bytes).
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 12\r\n"
    b"Connection: close\r\n"
    b"Server: rat\r\n"
    b"\r\n"
    b"server busy\n"
)

STREAM_HIGH_WATER = 256 * 1024  # bytes queued before a streamed answer waits for the client

# (status, content type, body): a body in pieces is sent one piece per turn.
Response = tuple[int, str, bytes | Iterator[bytes]]
Route = Callable[[dict[str, str]], Response]


class HTTPError(Exception):
    """The request cannot be answered as asked: `status` and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> Response:
        return error(self.status, str(self))


class Admin:
    """The admin listeners, their connections, and the telemetry they report."""

    def __init__(self, server: Server, socks: list[socket.socket]) -> None:
        self.server = server
        self.loop = server.loop
        self.telemetry = Telemetry(server)
        # From here on the server and the hub report to the telemetry.
        server.observer = server.hub.observer = self.telemetry
        self.conns: dict[AdminConn, None] = {}
        self.answering: list[AdminConn] = []  # valid requests, answered at turn end
        self.streaming: dict[AdminConn, None] = {}  # answers still being written
        self.routes: dict[str, Route] = {
            "/metrics": self.metrics,
            "/clients": self.clients,
            "/healthz": self.healthz,
        }
        for sock in socks:
            acceptor = Acceptor(
                self.loop,
                sock,
                self.on_accept,
                lambda: False,
                server.spare,
                kind="admin",
                busy=BUSY,
            )
            server.acceptors.append(acceptor)  # listed in `listening on`, closed on stop
        self.loop.at_turn_start(self.telemetry.turn_began)
        self.loop.at_turn_end(self.turn_ended)

    def on_accept(self, sock: socket.socket, addr: str) -> None:
        if len(self.conns) >= MAX_CONNECTIONS:
            log.warning("refused admin connection from %s: %d already open", addr, MAX_CONNECTIONS)
            refuse(sock, REFUSED)
            return
        sock.setblocking(False)
        self.conns[AdminConn(self, sock, addr)] = None

    def turn_ended(self) -> None:
        """After the delivery: answer this turn's requests, then time the turn."""
        if self.answering:
            ready, self.answering = self.answering, []
            for conn in ready:
                if conn.state == ANSWERING:
                    conn.answer()
        if self.streaming:
            for conn in list(self.streaming):
                conn.stream_more()
        self.telemetry.turn_ended()

    def close(self) -> None:
        """Close every admin connection (the server is stopping)."""
        for conn in list(self.conns):
            conn.close()

    # ------------------------------------------------------------- routing

    def route(self, method: bytes, target: bytes) -> tuple[Route, dict[str, str]]:
        """The route for a request and its query parameters; HTTPError if there is none."""
        try:
            parts = urlsplit(target.decode("ascii"))
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "the request target is not a valid URL") from None
        route = self.routes.get(parts.path)
        if route is None:
            paths = ", ".join(sorted(self.routes))
            raise HTTPError(404, f"no such path: {parts.path} (try {paths})")
        if method not in (b"GET", b"HEAD"):
            raise HTTPError(405, f"{method.decode('ascii', 'replace')} is not allowed here")
        params: dict[str, str] = {}
        for key, values in query.items():
            if len(values) > 1:
                raise HTTPError(400, f"parameter {key!r} given more than once")
            params[key] = values[0]
        return route, params

    def metrics(self, params: dict[str, str]) -> Response:
        del params  # Prometheus may add its own; none changes the answer
        self.telemetry.forget_rooms()
        return 200, METRICS, render_metrics(self.server, self.telemetry).encode()

    def clients(self, params: dict[str, str]) -> Response:
        unknown = set(params) - {"state", "sort", "limit"}
        if unknown:
            raise HTTPError(400, f"unknown parameter {sorted(unknown)[0]!r} (state, sort, limit)")
        state = params.get("state", "open")
        if state not in ("open", "closed"):
            raise HTTPError(400, f"state must be open or closed, not {state!r}")
        sort = params.get("sort", "id")
        if sort not in SORT_KEYS:
            raise HTTPError(400, f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
        limit: int | None = None
        if "limit" in params:
            text = params["limit"]
            if not text.isdigit():
                raise HTTPError(400, f"limit must be a whole number, not {text!r}")
            limit = int(text)
        if state == "closed":  # at most 1000 ready-made records: at once
            return 200, JSON, json_bytes(closed_view(self.telemetry, sort, limit))
        if limit is not None and limit <= STREAM_BATCH:  # rat top's question: at once
            return 200, JSON, json_bytes(clients_view(self.server, self.telemetry, sort, limit))
        return 200, JSON, clients_stream(self.server, self.telemetry, sort, limit)

    def healthz(self, params: dict[str, str]) -> Response:
        del params
        return 200, TEXT, b"ok\n"


def json_bytes(view: object) -> bytes:
    return (json.dumps(view, separators=(",", ":")) + "\n").encode()


def error(status: int, message: str) -> Response:
    return status, TEXT, f"{status} {REASONS[status].decode()}: {message}\n".encode()


class AdminConn:
    """One admin connection (see the module docstring for its states)."""

    __slots__ = (
        "addr",
        "admin",
        "fd",
        "head_only",
        "http",
        "interest",
        "out",
        "params",
        "route",
        "sock",
        "state",
        "stream",
        "timer",
    )

    def __init__(self, admin: Admin, sock: socket.socket, addr: str) -> None:
        self.admin = admin
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self.out = OutBuffer()
        self.state = READING
        self.route: Route | None = None
        self.params: dict[str, str] = {}
        self.head_only = False
        self.stream: Iterator[bytes] | None = None  # the rest of a body sent in pieces
        self.interest = READABLE
        loop = admin.loop
        loop.add(self.fd, self, READABLE)
        self.timer: Timer | None = loop.call_later(REQUEST_TIMEOUT, self._timed_out)

    def describe(self) -> str:
        return f"admin {self.addr}"

    def on_event(self, mask: int) -> None:
        if mask & READABLE:
            self._on_readable()
        if mask & WRITABLE and self.state == SENDING:
            self._flush()

    # --------------------------------------------------------------- input

    def _on_readable(self) -> None:
        budget = LINGER_BUDGET
        while self.state in (READING, LINGERING):
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if self.state == LINGERING:
                budget -= len(data)
                if not data or budget <= 0:  # the client is done (or will not stop)
                    self.close()
                    return
                continue
            self.http.receive_data(data)  # b"": the client closed its side
            self._next_event()
            if not data and self.state == READING:
                self.close()  # it left before finishing its request
                return

    def _next_event(self) -> None:
        """Feed h11's events to the request logic until it needs more bytes."""
        while self.state == READING:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint if err.error_status_hint in REASONS else 400
                self.respond(*error(status, f"malformed request ({err})"))
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self._on_request(event)
                return
            if isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _on_request(self, request: h11.Request) -> None:
        self.head_only = request.method == b"HEAD"
        if log.isEnabledFor(logging.DEBUG):
            log.debug("admin %s: %r %r", self.addr, request.method, request.target)
        # h11 bounds a head that has not ended yet; one that arrived whole is
        # bounded here.
        size = len(request.target) + sum(len(k) + len(v) for k, v in request.headers)
        try:
            if size > MAX_REQUEST_HEAD:
                raise HTTPError(431, f"the request head is over {MAX_REQUEST_HEAD} bytes")
            route, params = self.admin.route(request.method, request.target)
        except HTTPError as err:
            self.respond(*err.response(), allow=err.status == 405)
            return
        # Valid: answered at the end of the turn.  Input no longer matters
        # (a body, if any, is dropped), so stop watching for it.
        self.route, self.params = route, params
        self.state = ANSWERING
        self._watch(0)
        self.admin.answering.append(self)

    def answer(self) -> None:
        """End of turn: run the route and send what it says."""
        assert self.route is not None
        try:
            response = self.route(self.params)
        except HTTPError as err:
            response = err.response()
        except Exception:
            log.exception("admin %s: rendering the answer failed (a bug in rat)", self.addr)
            response = error(500, "rendering the answer failed; see the server's log")
        self.respond(*response)

    # -------------------------------------------------------------- output

    def respond(
        self, status: int, content_type: str, body: bytes | Iterator[bytes], allow: bool = False
    ) -> None:
        """Queue the response (h11 frames it) and start sending it.

        A body in pieces has no length up front: h11 sends it chunked (HTTP/1.1)
        or delimited by the close (HTTP/1.0), one piece per turn (`stream_more`).
        """
        headers = [("content-type", content_type)]
        if isinstance(body, bytes):
            headers.append(("content-length", str(len(body))))
        headers += [("cache-control", "no-store"), ("connection", "close")]
        if allow:
            headers.append(("allow", "GET, HEAD"))
        http = self.http
        try:
            head = h11.Response(status_code=status, headers=headers, reason=REASONS[status])
            self._queue(http.send(head))
            if isinstance(body, bytes):
                if body and not self.head_only:
                    self._queue_body(body)
                self._queue(http.send(h11.EndOfMessage()))
            elif not self.head_only:
                self.stream = body
                self.admin.streaming[self] = None
            else:
                self._queue(http.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:
            # h11 cannot answer in this state (the peer already broke the
            # conversation in a way that leaves no response to send).
            self.close()
            return
        self.state = SENDING
        self._rearm(RESPONSE_TIMEOUT)
        if self.stream is not None:
            self.stream_more()
        else:
            self._flush()

    def stream_more(self) -> None:
        """End of turn: the next piece of a body sent in pieces (unless the client lags)."""
        if self.stream is None or self.state != SENDING:
            self.admin.streaming.pop(self, None)
            return
        if self.out.pending > STREAM_HIGH_WATER:
            return  # its WRITABLE event brings us back once it has read some
        piece = next(self.stream, None)
        if piece is None:
            self.stream = None
            self.admin.streaming.pop(self, None)
            self._queue(self.http.send(h11.EndOfMessage()))
        else:
            self._queue_body(piece)
            self.admin.loop.resume(self)  # another turn soon, even if nothing else happens
        self._flush()

    def on_resume(self) -> None:
        """Nothing: the turn it asked for ends with `stream_more`."""

    def _queue(self, wire: bytes | None) -> None:
        if wire:
            self.out.append(wire)

    def _queue_body(self, body: bytes) -> None:
        # Passthrough: the body is queued as it is, not copied.
        for part in self.http.send_with_data_passthrough(h11.Data(data=body)) or []:
            self.out.append(part)

    def _flush(self) -> None:
        out = self.out
        while out.pending:
            buffers = out.peek()
            try:
                sent = self.sock.sendmsg(buffers)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent:
                out.advance(sent)
            if sent < sum(map(len, buffers)):
                break  # the kernel's buffer is full: WRITABLE says when to go on
        if out.pending:
            self._watch(WRITABLE)
            return
        if self.stream is not None:
            self._watch(0)  # more to come at the end of a turn
            return
        # All sent: shut our side and give the client a moment to close its
        # own, so that unread input cannot turn our close into a reset that
        # destroys the response before the client has read it.
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.state = LINGERING
        self._rearm(LINGER_SECONDS)
        self._watch(READABLE)
        self._on_readable()

    # ------------------------------------------------------- timers, close

    def _timed_out(self) -> None:
        self.timer = None
        if self.state == READING:
            log.info("admin %s: no complete request within %.0fs", self.addr, REQUEST_TIMEOUT)
            self.respond(*error(408, f"no complete request within {REQUEST_TIMEOUT:.0f}s"))
        else:
            self.close()  # it did not take its response, or did not close after it

    def _rearm(self, delay: float) -> None:
        loop = self.admin.loop
        loop.cancel(self.timer)
        self.timer = loop.call_later(delay, self._timed_out)

    def _watch(self, interest: int) -> None:
        if interest != self.interest:
            self.interest = interest
            self.admin.loop.modify(self.fd, interest)

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        loop = self.admin.loop
        loop.cancel(self.timer)
        self.timer = None
        loop.remove(self.fd, self)
        self.sock.close()
        self.admin.conns.pop(self, None)
        self.admin.streaming.pop(self, None)
        self.stream = None
