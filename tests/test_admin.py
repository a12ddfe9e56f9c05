"""The admin endpoint against a real server: /metrics, /clients, bad requests, `rat top`.

rat runs as a subprocess with `--admin 0`; its admin port is read from the
`listening on` line.  The exposition is checked with `prometheus_client`'s
own parser.  Slow clients are made for real: a small receive buffer and a
client that does not read, so that the server has to queue for it.  No test
asserts a duration; waits are bounded polls.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SRC, ServerProcess, recv_lines, sync_clients

pytestmark = pytest.mark.timeout(60)

RatServer = Callable[..., ServerProcess]
BIG_PENDING = str(64 * 1024 * 1024)  # keeps --max-pending out of the way
LINE = b"x" * 1023 + b"\n"
BATCH = 64  # lines per batch in a flood

# Every family SPEC "Operations" names, with its type as prometheus_client
# reports it (it drops the `_total` suffix from counter family names).
SPEC_FAMILIES = {
    "rat_connections": "gauge",
    "rat_connections_accepted": "counter",
    "rat_connections_rejected": "counter",
    "rat_disconnects": "counter",
    "rat_lines_received": "counter",
    "rat_lines_delivered": "counter",
    "rat_bytes_received": "counter",
    "rat_bytes_sent": "counter",
    "rat_queued_bytes": "gauge",
    "rat_client_lag_seconds": "histogram",
    "rat_loop_turn_seconds": "histogram",
    "rat_rooms": "gauge",
}


# ---------------------------------------------------------------- helpers


class Sockets:
    """Client sockets a test opens; all closed at teardown."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []

    def connect(self, server: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.opened.append(sock)
        if rcvbuf is not None:  # before connect(), so that the window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect((server.host, server.port))
        return sock


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    opened = Sockets()
    yield opened
    for sock in opened.opened:
        sock.close()


def admin_server(rat_server: RatServer, *flags: str) -> tuple[ServerProcess, int]:
    """A server with --admin on an ephemeral port; (server, admin port)."""
    server = rat_server("--admin", "0", *flags)
    m = re.search(r"listening on \S+, admin 127\.0\.0\.1:(\d+)", server.stderr)
    assert m, server.stderr
    return server, int(m.group(1))


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict[str, Any]:
    status, _, body = get(port, path)
    assert status == 200, body
    view = json.loads(body)
    assert isinstance(view, dict)
    return view


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, then_eof: bool = False) -> bytes:
    """Send `data` as it is (then EOF); return everything the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if then_eof:
            sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
        return bytes(out)


def addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def entry(port: int, who: socket.socket | str, state: str = "open") -> dict[str, Any] | None:
    """The entry of a client (its socket, or its address) in /clients or the closed log."""
    view = get_json(port, f"/clients?state={state}")
    where = who if isinstance(who, str) else addr(who)
    found = [c for c in view["clients"] if c["addr"] == where]
    return found[-1] if found else None


def poll(check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Call `check` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(port: int) -> dict[str, Any]:
    """/metrics parsed by prometheus_client: {family name: Metric}."""
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(name)


def three_clients(
    server: ServerProcess, sockets: Sockets
) -> tuple[socket.socket, socket.socket, socket.socket]:
    """(stalled, reader, sender): the first never reads and has a tiny receive buffer."""
    stalled = sockets.connect(server, rcvbuf=4096)
    reader, sender = sockets.connect(server), sockets.connect(server)
    sync_clients(server, [stalled, reader])
    return stalled, reader, sender


def fill_queue(
    admin: int, stalled: socket.socket, sender: socket.socket, reader: socket.socket
) -> int:
    """Send lines (read by `reader`) until the server holds bytes for `stalled`; return lines."""
    sent = 0
    for _ in range(512):  # at most 32 MiB
        sender.sendall(LINE * BATCH)
        assert recv_lines(reader, BATCH) == [LINE] * BATCH
        sent += BATCH
        found = entry(admin, stalled)
        if found is not None and found["queued_bytes"] > 0:
            return sent
    raise AssertionError("the server never had to queue for the stalled client")


def assert_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr, server.stderr


def run_rat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rat", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(SRC)},
        check=False,
    )


# ---------------------------------------------------------------- /metrics


def test_metrics_has_every_spec_family(rat_server: RatServer, sockets: Sockets) -> None:
    server, admin = admin_server(rat_server)
    a, b = sockets.connect(server), sockets.connect(server)
    poll(lambda: get_json(admin, "/clients")["count"] == 2, "both clients")
    a.sendall(b"hello\n")
    assert recv_lines(b, 1) == [b"hello\n"]

    families = metrics(admin)
    for name, kind in SPEC_FAMILIES.items():
        assert name in families, f"{name} missing"
        assert families[name].type == kind, f"{name} is a {families[name].type}"
        assert families[name].documentation, f"{name} has no HELP"
    # No per-client labels: a scrape does not grow with the number of clients.
    for family in families.values():
        for s in family.samples:
            assert set(s.labels) <= {"transport", "reason", "le"}, s

    # The admin connection is not a client of the broadcast.
    assert sample(families, "rat_connections", transport="tcp") == 2
    assert sample(families, "rat_connections", transport="ws") == 0
    assert sample(families, "rat_connections_accepted_total") == 2
    assert sample(families, "rat_lines_received_total") == 1
    assert sample(families, "rat_lines_delivered_total") == 1
    assert sample(families, "rat_bytes_sent_total") == len(b"hello\n")
    assert sample(families, "rat_rooms") == 1
    assert sample(families, "rat_client_lag_seconds_count") == 2
    assert sample(families, "rat_loop_turn_seconds_count") > 0
    assert sample(families, "rat_disconnects_total", reason="slow_consumer") == 0
    status, _, body = get(admin, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert_no_traceback(server)


def test_admin_is_not_counted_in_max_clients(rat_server: RatServer, sockets: Sockets) -> None:
    server, admin = admin_server(rat_server, "--max-clients", "1")
    only = sockets.connect(server)
    poll(lambda: get_json(admin, "/clients")["count"] == 1, "the client to be admitted")
    # The server is full, and still answers the admin port.
    families = metrics(admin)
    assert sample(families, "rat_connections", transport="tcp") == 1
    assert sample(families, "rat_connections_rejected_total", reason="server_full") == 0
    extra = sockets.connect(server)
    assert extra.recv(100) == b"ERR server full\n"
    families = metrics(admin)
    assert sample(families, "rat_connections_rejected_total", reason="server_full") == 1
    del only


# ---------------------------------------------------------------- /clients


def test_clients_counts_lines_and_bytes(rat_server: RatServer, sockets: Sockets) -> None:
    server, admin = admin_server(rat_server)
    talker, listener = sockets.connect(server), sockets.connect(server)
    poll(lambda: get_json(admin, "/clients")["count"] == 2, "both clients")
    lines = [b"one\n", b"two two\n", b"three three three\n"]
    talker.sendall(b"".join(lines))
    assert recv_lines(listener, 3) == lines
    size = len(b"".join(lines))

    def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
        t, li = entry(admin, talker), entry(admin, listener)
        ok = t and li and t["bytes_in"] == size and li["bytes_out"] == size
        return (t, li) if ok else None  # type: ignore[return-value]

    t, li = poll(settled, "the kernel's byte counts")
    assert (t["lines_in"], t["lines_out"], t["bytes_out"]) == (3, 0, 0)
    assert (li["lines_in"], li["lines_out"], li["bytes_in"]) == (0, 3, 0)
    for c in (t, li):
        assert c["transport"] == "tcp"
        assert c["state"] == "open"
        assert c["room"] == "#lobby"
        assert c["nick"] is None
        assert c["queued_bytes"] == 0
        assert c["lag_seconds"] == 0.0
        assert c["until_max_pending_seconds"] is None
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", c["connected_at"])
    assert t["id"] < li["id"]  # ids in order of arrival

    # The talker leaves; the next line written to it finds it gone.
    gone = addr(talker)
    talker.close()
    listener.sendall(b"anyone?\n")
    closed = poll(lambda: entry(admin, gone, "closed"), "the talker in the closed log")
    assert closed["reason"] in ("eof", "reset")
    assert closed["lines_in"] == 3
    assert closed["bytes_in"] == size
    assert closed["duration_seconds"] > 0
    view = get_json(admin, "/clients?state=closed")
    assert view["kept"] == 1000


def test_lag_rises_while_a_client_stalls_and_falls_when_it_reads(
    rat_server: RatServer, sockets: Sockets
) -> None:
    server, admin = admin_server(rat_server, "--max-pending", BIG_PENDING)
    stalled, reader, sender = three_clients(server, sockets)
    sent = fill_queue(admin, stalled, sender, reader)

    first = entry(admin, stalled)
    assert first is not None
    time.sleep(0.5)
    second = entry(admin, stalled)
    assert second is not None
    # Nothing was taken meanwhile: its oldest waiting byte is half a second older.
    assert second["lag_seconds"] >= first["lag_seconds"] + 0.4
    assert second["queued_bytes"] > 0
    assert second["until_write_timeout_seconds"] is not None
    assert second["drain_bytes_per_second"] is not None
    # The laggiest client comes first when sorted by lag.
    laggiest = get_json(admin, "/clients?sort=lag&limit=1")
    assert [c["addr"] for c in laggiest["clients"]] == [addr(stalled)]
    assert laggiest["count"] == 3
    # The lag histogram has it above 250 ms, and the queue is in rat_queued_bytes.
    families = metrics(admin)
    count = sample(families, "rat_client_lag_seconds_count")
    assert sample(families, "rat_client_lag_seconds_bucket", le="0.25") < count
    assert sample(families, "rat_queued_bytes") >= second["queued_bytes"]

    # It reads everything: nothing waits, no lag.
    assert len(recv_lines(stalled, sent, timeout=30)) == sent  # (the sync line was read)
    done = poll(
        lambda: (e := entry(admin, stalled)) and e["queued_bytes"] == 0 and e, "an empty queue"
    )
    assert done["lag_seconds"] == 0.0
    assert done["lines_out"] == 1 + sent
    assert_no_traceback(server)


def test_cut_slow_consumer_is_in_the_closed_log_with_its_lag(
    rat_server: RatServer, sockets: Sockets
) -> None:
    limit = 256 * 1024
    server, admin = admin_server(rat_server, "--max-pending", str(limit))
    stalled, reader, sender = three_clients(server, sockets)
    for _ in range(512):  # at most 32 MiB
        sender.sendall(LINE * BATCH)
        assert recv_lines(reader, BATCH) == [LINE] * BATCH
        if re.search(re.escape(addr(stalled)) + r"(?!\d).*slow consumer", server.stderr):
            break
    line = server.wait_for_log(re.escape(addr(stalled)) + r"(?!\d): slow consumer \(.*").group(0)
    # The log line names the client, its queue, its lag and its drain rate.
    assert re.search(r"\d+ bytes queued, limit 262144; lag \d+\.\d+s, draining ", line), line

    record = poll(lambda: entry(admin, stalled, "closed"), "the cut client in the closed log")
    assert record["reason"] == "slow_consumer"
    assert record["queued_bytes"] > limit
    assert record["lag_seconds"] > 0
    assert record["lines_out"] > 0
    families = metrics(admin)
    assert sample(families, "rat_disconnects_total", reason="slow_consumer") == 1
    assert_no_traceback(server)


@pytest.mark.slow
def test_write_timeout_is_in_the_closed_log_with_its_lag(
    rat_server: RatServer, sockets: Sockets
) -> None:
    server, admin = admin_server(rat_server, "--write-timeout", "0.5", "--max-pending", BIG_PENDING)
    stalled, reader, sender = three_clients(server, sockets)
    fill_queue(admin, stalled, sender, reader)
    line = server.wait_for_log(re.escape(addr(stalled)) + r"(?!\d): write timeout \(.*").group(0)
    assert re.search(r"bytes queued; lag \d+\.\d+s, draining ", line), line
    record = poll(lambda: entry(admin, stalled, "closed"), "the stuck client in the closed log")
    assert record["reason"] == "write_timeout"
    assert record["lag_seconds"] >= 0.5
    assert record["queued_bytes"] > 0


@pytest.mark.slow
def test_scraping_5000_clients_answers_and_the_broadcast_flows(
    rat_server: RatServer, sockets: Sockets
) -> None:
    server, admin = admin_server(rat_server, "--max-clients", "6000")
    idle = [sockets.connect(server) for _ in range(5000)]
    reader, sender = sockets.connect(server), sockets.connect(server)
    poll(lambda: get_json(admin, "/clients?limit=0")["count"] == 5002, "5002 clients", 60)
    del idle

    received: list[float] = []  # when each line arrived
    stop = threading.Event()

    def send() -> None:
        seq = 0
        while not stop.is_set():
            sender.sendall(b"%08d\n" % seq)
            seq += 1
            time.sleep(0.002)
        sender.sendall(b"end\n")

    def read() -> None:
        while True:
            (line,) = recv_lines(reader, 1, timeout=30)
            if line == b"end\n":
                return
            assert line == b"%08d\n" % len(received)  # every line, in order
            received.append(time.monotonic())

    threads = [threading.Thread(target=send), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    try:
        poll(lambda: len(received) > 10, "the broadcast to flow")
        began = time.monotonic()
        for _ in range(3):
            families = metrics(admin)
            assert sample(families, "rat_connections", transport="tcp") == 5002
            assert sample(families, "rat_client_lag_seconds_count") == 5002
            view = get_json(admin, "/clients")
            assert view["count"] == len(view["clients"]) == 5002
        ended = time.monotonic()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    # Answered, and the broadcast kept flowing while it was being answered.
    assert any(began <= when <= ended for when in received)
    assert not threads[1].is_alive()
    assert_no_traceback(server)


# ---------------------------------------------------------------- bad requests


def test_bad_requests_get_a_status_never_a_traceback(rat_server: RatServer) -> None:
    server, admin = admin_server(rat_server)
    status, _, body = get(admin, "/nope")
    assert status == 404
    assert b"/nope" in body
    status, headers, _ = get(admin, "/metrics", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, headers, body = get(admin, "/metrics", method="HEAD")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""
    for query in ("state=bogus", "sort=bogus", "limit=x", "what=1", "state=open&state=closed"):
        status, _, body = get(admin, f"/clients?{query}")
        assert status == 400, (query, body)
    assert raw_exchange(admin, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(admin, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw_exchange(admin, huge).startswith(b"HTTP/1.1 431 ")
    assert raw_exchange(admin, b"\xff\xfe\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # A client that leaves half way through its request: h11 calls that malformed.
    assert raw_exchange(admin, b"GET /metr", then_eof=True).startswith(b"HTTP/1.1 400 ")
    assert raw_exchange(admin, b"", then_eof=True) == b""  # and one that says nothing
    # The server is still fine.
    assert get(admin, "/healthz")[0] == 200
    assert_no_traceback(server)


def test_admin_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_rat("serve", "--port", "0", "--admin", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"rat: cannot listen on admin 127.0.0.1:{port}: Address already in use"
    ]


def test_plain_server_does_not_load_the_admin_package() -> None:
    code = (
        "import sys, rat.cli, rat.server; "
        "print(sorted(m for m in sys.modules if m == 'h11' or m.startswith('rat.admin')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(SRC)},
        check=True,
    )
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- rat top, json logs


def test_rat_top_once_shows_rates_and_the_laggiest_client(
    rat_server: RatServer, sockets: Sockets
) -> None:
    server, admin = admin_server(rat_server, "--max-pending", BIG_PENDING)
    stalled, reader, sender = three_clients(server, sockets)
    fill_queue(admin, stalled, sender, reader)

    result = run_rat("top", f"127.0.0.1:{admin}", "--once", "--interval", "0.3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # --once: no escapes, for scripts
    for section in ("clients ", "lines ", "bytes ", "queued ", "loop ", "laggiest clients"):
        assert re.search(rf"^{section}", out, re.MULTILINE), (section, out)
    assert re.search(r"^clients +3 open \(tcp 3", out, re.MULTILINE), out
    rows = [line for line in out.splitlines() if addr(stalled) in line]
    assert len(rows) == 1, out
    assert "write timeout" in rows[0]  # its queue does not move: the timeout is what looms


def test_rat_top_without_a_server_says_so() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    result = run_rat("top", str(port), "--once")
    assert result.returncode == 1
    assert result.stderr.startswith(f"rat top: cannot read the admin endpoint at 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_json_log_lines_parse(rat_server: RatServer, sockets: Sockets) -> None:
    server = rat_server("--log-format", "json", "--max-line", "16")
    talker = sockets.connect(server)
    talker.sendall(b"this line is far too long\n")
    server.wait_for_log("line too long")
    server.stop()
    records = [json.loads(line) for line in server.stderr.splitlines()]
    for record in records:
        assert {"time", "level", "message"} <= set(record), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", record["time"])
    assert "listening on" in records[0]["message"]
    assert records[0]["level"] == "info"
    (cut,) = [r for r in records if "line too long" in r["message"]]
    assert cut["addr"] == addr(talker)
    assert cut["reason"] == "line_too_long"
    assert any(r["message"].startswith("counters:") for r in records)
