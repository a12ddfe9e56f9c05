"""Out of descriptors, a shed connection is told "busy" in its listener's protocol.

When rat has no descriptor left, `rat.listener.Acceptor` frees its spare
descriptor, accepts the waiting connection, answers it and closes it (see
"Out of descriptors" in rat.listener).  A line client reads `ERR server
busy`; a client of the web or admin port expects HTTP and gets a minimal
HTTP/1.1 503 with `Connection: close` (the same bytes as
`rat.web.http.canned_response` builds, so the plain TCP server needs no h11
for it).  The subprocess test runs a real server with RLIMIT_NOFILE 40, as
tests/test_limits.py does; under that limit it is the spare descriptor (and
`make_room`) that keep rat answering, never the paused listener.  The pause
and its timed resume are for a spare that cannot be reopened (another
process took the descriptor): the in-process test makes that happen.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import resource
import select
import signal
import socket
import time
from collections.abc import Callable

import h11
import pytest
from websockets.sync.client import connect as ws_connect

from conftest import (
    ServerProcess,
    assert_no_traceback,
    connect,
    open_fds,
    read_until_eof,
    recv_lines,
    wait_for_fds_freed,
)
from rat.admin.endpoint import BUSY as ADMIN_BUSY
from rat.config import Config
from rat.listener import ERR_SERVER_BUSY, Acceptor, SpareDescriptor
from rat.loop import Loop
from rat.net import open_listeners
from rat.poller import make_poller
from rat.server import Server
from rat.web import SERVER_BUSY, serve_web
from rat.web.http import canned_response

pytestmark = pytest.mark.timeout(60)

RatServer = Callable[..., ServerProcess]
FD_LIMIT = 40
CROWD = 60  # connections at once: more than the server has descriptors for


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def port_of(server: ServerProcess, kind: str) -> int:
    match = re.search(rf"{kind} 127\.0\.0\.1:(\d+)", server.stderr)
    assert match, server.stderr
    return int(match.group(1))


def http_answer(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Parse a complete response (status, headers, body) as an HTTP client would (h11)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "rat")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    return response.status_code, dict(response.headers), body


def busy_answer(port: int) -> bytes:
    """Connect to `port` and read everything the server says before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return read_until_eof(sock)


# ------------------------------------------------------------------ which reply


def test_the_busy_replies_are_the_right_bytes() -> None:
    # The admin port's, written out there, is the very 503 rat.web builds with h11.
    assert ADMIN_BUSY == canned_response(503, b"server busy\n") == SERVER_BUSY
    status, headers, body = http_answer(SERVER_BUSY)
    assert (status, headers[b"connection"], body) == (503, b"close", b"server busy\n")


def test_serve_web_sets_the_busy_reply_of_its_listeners() -> None:
    """HTTP on the web port; nothing at all under TLS (plain bytes are garbage to TLS)."""
    server = Server(open_listeners("127.0.0.1", 0), make_poller(), Config(port=0))
    try:
        serve_web(server, open_listeners("127.0.0.1", 0), 1024)
        serve_web(server, open_listeners("127.0.0.1", 0), 1024, wrap=lambda layer: layer)
        busy = [(a.kind, a.busy) for a in server.acceptors]
        assert busy == [("listener", ERR_SERVER_BUSY), ("web", SERVER_BUSY), ("web", b"")]
    finally:
        server.close()


# --------------------------------------------------- a real server out of descriptors


@pytest.mark.slow
def test_out_of_descriptors_each_listener_says_busy_in_its_protocol(
    rat_server: RatServer,
) -> None:
    server = rat_server("--web", "0", "--admin", "0", preexec=_low_fd_limit)
    web, admin = port_of(server, "web"), port_of(server, "admin")
    pid = server.proc.pid
    baseline = open_fds(pid)
    a, b = connect(server), connect(server)
    a.sendall(b"ping\n")  # (no probe client: its close would make room later)
    assert recv_lines(b, 1) == [b"ping\n"]

    crowd = [connect(server) for _ in range(CROWD)]
    # The backlog is accepted in order: whoever comes after the crowd finds no
    # descriptor left, on any listener.
    tcp = connect(server)
    assert read_until_eof(tcp) == b"ERR server busy\n"
    status, headers, body = http_answer(busy_answer(web))
    assert (status, headers[b"connection"], body) == (503, b"close", b"server busy\n")
    status, headers, body = http_answer(busy_answer(admin))
    assert (status, headers[b"connection"], body) == (503, b"close", b"server busy\n")

    # Of the crowd, the first ones were admitted (silent), the rest shed.
    readable, _, _ = select.select(crowd, [], [], 0.5)
    assert readable, "nobody in the crowd was shed"
    assert len(readable) < CROWD, "nobody in the crowd was admitted"
    for sock in readable:
        assert read_until_eof(sock) == b"ERR server busy\n"
    shed = len(readable)
    a.sendall(b"still serving\n")  # the clients it has are served on
    assert recv_lines(b, 1) == [b"still serving\n"]

    # The crowd leaves, and the server frees their descriptors.
    for sock in crowd:
        sock.close()
    wait_for_fds_freed(pid, baseline, a, b)

    # New clients are accepted again, on every listener.
    c = connect(server)
    c.sendall(b"back on tcp\n")
    assert recv_lines(a, 1) == [b"back on tcp\n"]
    with ws_connect(f"ws://127.0.0.1:{web}/ws", open_timeout=10) as ws:
        a.sendall(b"to the web too\n")
        assert ws.recv(timeout=10) == "to the web too"
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()

    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert "shedding new connections" in server.stderr, server.stderr
    assert "accept paused" not in server.stderr  # the spare was there every time
    # The TCP and web ones are counted (the admin port keeps no client counters).
    assert re.search(rf"rejected_busy={shed + 2}\b", server.stderr), server.stderr
    assert_no_traceback(server)


# ----------------------------------------------------- no spare: pause, then resume


def test_without_a_spare_the_listener_pauses_and_resumes_on_a_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No descriptor and no spare: stop watching, retry on a doubling timer, recover."""
    caplog.set_level(logging.INFO, logger="rat")
    loop = Loop(make_poller())
    (listener,) = open_listeners("127.0.0.1", 0)
    spare = SpareDescriptor()
    spare.close()  # as if another process had taken the descriptor it gave back
    accepted: list[socket.socket] = []
    acceptor = Acceptor(
        loop, listener, lambda sock, addr: accepted.append(sock), lambda: False, spare
    )
    client = socket.socket()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    try:
        # From now on this process can open nothing: every lower descriptor is taken.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        client.connect(listener.getsockname())
        deadline = time.monotonic() + 5
        while acceptor.emfile < 2:  # the first try, then the first timed retry
            assert time.monotonic() < deadline, caplog.text
            loop.run_once(0.05)
        assert acceptor.paused
        assert acceptor.fd not in loop.handlers  # not watched: no wake-ups meanwhile
        assert not accepted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        # Descriptors are back: the next retry reopens the spare and accepts.
        deadline = time.monotonic() + 5
        while not accepted:
            assert time.monotonic() < deadline, caplog.text
            loop.run_once(0.05)
        assert not acceptor.paused
        assert spare.fd is not None
        assert loop.handlers.get(acceptor.fd) is acceptor
        pauses = re.findall(r"accept paused for (\S+)s", caplog.text)
        assert pauses == ["0.05", "0.10"], caplog.text  # doubling
        assert "accepting again" in caplog.text
    finally:
        for sock in [client, *accepted]:
            sock.close()
        acceptor.close()
        spare.close()
        loop.close()
