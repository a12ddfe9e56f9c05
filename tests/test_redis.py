"""The Redis backplane with real processes: rat nodes, a real redis-server, TCP clients.

What users rely on: a line from a client on any node reaches every other
client of every node exactly once, with each sender's lines in order; chat
rooms span nodes; a Redis that dies and comes back costs the cross-node
lines of the outage and nothing else (local service goes on, nothing is
delivered twice, one log line each way, chat members are told).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clusterkit import RedisServer, free_port, needs_redis, redis, wait_connected
from conftest import ServerProcess, assert_silent, recv_lines

__all__ = ["redis"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.timeout(90), needs_redis]

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def clients() -> Iterator[Callable[[ServerProcess], socket.socket]]:
    opened: list[socket.socket] = []

    def connect(node: ServerProcess) -> socket.socket:
        sock = node.connect()
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def start_nodes(
    rat_server: StartServer, redis: RedisServer, count: int, *flags: str
) -> list[ServerProcess]:
    nodes = [rat_server("--redis", redis.url, *flags) for _ in range(count)]
    for node in nodes:
        wait_connected(node)
    return nodes


def sync_all(groups: list[list[socket.socket]]) -> None:
    """Every client of every node is registered and every node is subscribed:
    one probe line from the first client reaches all the others."""
    everyone = [sock for group in groups for sock in group]
    everyone[0].sendall(b"__sync__\n")
    for sock in everyone[1:]:
        assert recv_lines(sock, 1) == [b"__sync__\n"]


def drain(sock: socket.socket, quiet: float = 0.5) -> list[bytes]:
    """Read lines until none has come for `quiet` seconds."""
    got: list[bytes] = []
    while True:
        try:
            got += recv_lines(sock, 1, timeout=quiet)
        except (AssertionError, TimeoutError):
            sock.settimeout(10)
            return got


def burst(sender_id: str, count: int) -> bytes:
    return b"".join(b"%s %06d\n" % (sender_id.encode(), seq) for seq in range(count))


def check_received(lines: list[bytes], senders: dict[str, int]) -> None:
    """Exactly `senders[s]` lines from each sender s, each sender's in order."""
    seen: dict[str, list[int]] = {}
    for line in lines:
        who, seq = line.split()
        seen.setdefault(who.decode(), []).append(int(seq))
    assert {who: len(seqs) for who, seqs in seen.items()} == senders
    for seqs in seen.values():
        assert seqs == list(range(len(seqs)))  # in order, none twice, none missing


@pytest.mark.parametrize("count", [2, 3])
def test_every_line_reaches_every_other_client_once_in_sender_order(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket], count: int
) -> None:
    nodes = start_nodes(rat_server, redis, count)
    groups = [[clients(node), clients(node)] for node in nodes]
    sync_all(groups)
    lines_each = 300
    senders = {f"n{i}c{j}": sock for i, group in enumerate(groups) for j, sock in enumerate(group)}
    for name, sock in senders.items():  # all at once: the nodes' turns interleave
        sock.sendall(burst(name, lines_each))
    for name, sock in senders.items():
        others = {other: lines_each for other in senders if other != name}
        check_received(recv_lines(sock, lines_each * len(others)), others)
    for sock in senders.values():
        assert_silent(sock)  # and nothing more: no line twice
    for node in nodes:
        node.stop()
        assert re.search(r"backplane: forwarded=\d+ received=\d+", node.stderr)


def test_lines_keep_their_bytes_across_nodes(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket]
) -> None:
    a, b = start_nodes(rat_server, redis, 2)
    sa, sb = clients(a), clients(b)
    sync_all([[sa], [sb]])
    odd = b"\r\x00\xff\xfe rat1 0123456789abcdef 1 #lobby\n\n" + bytes(range(11, 256)) + b"\n"
    sa.sendall(odd)
    assert b"".join(recv_lines(sb, 3)) == odd


def test_chat_rooms_span_nodes(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket]
) -> None:
    a, b = start_nodes(rat_server, redis, 2, "--chat")
    alice, carol = clients(a), clients(a)
    bob, dave = clients(b), clients(b)
    for sock, nick in ((alice, b"alice"), (carol, b"carol"), (bob, b"bob"), (dave, b"dave")):
        sock.sendall(b"/nick " + nick + b"\n")
        lines = recv_lines(sock, 1)
        while lines[-1] != b"* you are now " + nick + b"\n":  # joins and renames may come first
            lines = recv_lines(sock, 1)
    for sock in (alice, carol, bob, dave):
        drain(sock)  # everyone's join and rename notices, from both nodes
    alice.sendall(b"/join #rust\n")
    assert recv_lines(alice, 1)[0].startswith(b"* you joined #rust")
    for sock in (carol, bob, dave):  # the lobby, on both nodes, hears that alice left
        assert recv_lines(sock, 1) == [b"* alice left #lobby\n"]
    bob.sendall(b"/join #rust\n")
    assert recv_lines(bob, 1)[0].startswith(b"* you joined #rust")
    # (No "bob joined" for alice: chat mode announces a join when the joiner's own
    # node has another member in the room; member counts are per node.)
    assert recv_lines(carol, 1) == [b"* bob left #lobby\n"]
    assert recv_lines(dave, 1) == [b"* bob left #lobby\n"]
    alice.sendall(b"hello rust\n")
    assert recv_lines(bob, 1) == [b"<alice> hello rust\n"]
    dave.sendall(b"hello lobby\n")
    assert recv_lines(carol, 1) == [b"<dave> hello lobby\n"]
    for sock in (alice, bob, dave):
        assert_silent(sock)  # #rust does not hear #lobby; nobody hears a line twice


def outage_scenario(
    rat_server: StartServer,
    redis: RedisServer,
    clients: Callable[..., socket.socket],
    *flags: str,
) -> tuple[list[ServerProcess], list[list[socket.socket]]]:
    """Two nodes with two clients each; Redis is killed mid-run and restarted.

    Returns the nodes and clients once lines flow across again.  Checks on
    the way that each node kept serving its own clients while Redis was gone.
    """
    chat = "--chat" in flags
    nodes = start_nodes(rat_server, redis, 2, *flags)
    groups = [[clients(node), clients(node)] for node in nodes]
    if chat:
        time.sleep(0.3)
        for sock in (s for group in groups for s in group):
            drain(sock)  # greetings and join notices
    if not chat:
        sync_all(groups)
    redis.kill()
    for node in nodes:
        node.wait_for_log(r"cluster: lost redis://")
    if chat:
        for sock in (s for group in groups for s in group):
            assert recv_lines(sock, 1)[0].startswith(b"* cluster link down")
    # Local service goes on: each node's two clients still talk.
    for group in groups:
        group[0].sendall(b"local only\n")
        got = recv_lines(group[1], 1)[0]
        assert got.endswith(b"local only\n")
    redis.start()  # the same port
    for node in nodes:
        wait_connected(node, 2)
    if chat:
        for sock in (s for group in groups for s in group):
            assert recv_lines(sock, 1)[0].startswith(b"* cluster link back")
    return nodes, groups


def metrics(node: ServerProcess) -> list[str]:
    """The lines of `node`'s /metrics (it runs with `--admin 0`)."""
    admin_port = int(re.search(r"admin 127\.0\.0\.1:(\d+)", node.stderr).group(1))  # type: ignore[union-attr]
    with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as http:
        http.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := http.recv(65536):
            body += chunk
    head, _, text = body.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 "), head
    return text.splitlines()


def test_redis_restart_mid_run(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket]
) -> None:
    nodes, groups = outage_scenario(rat_server, redis, clients, "--admin", "0")
    (a1, a2), (b1, b2) = groups
    a1.sendall(burst("a1", 100))
    b1.sendall(burst("b1", 100))
    for sock, expect in ((a2, {"a1": 100, "b1": 100}), (b2, {"a1": 100, "b1": 100})):
        check_received(recv_lines(sock, 200), expect)
    check_received(recv_lines(b1, 100), {"a1": 100})
    check_received(recv_lines(a1, 100), {"b1": 100})
    for sock in (a1, a2, b1, b2):
        assert_silent(sock)  # the local-only lines were not delivered again later
    for node in nodes:
        log = node.stderr
        assert log.count("cluster: lost redis://") == 1, log
        assert log.count("cluster: back on redis://") == 1, log
        assert re.search(r"back on redis://\S+ after [\d.]+ s; 1 line published meanwhile", log)
    # /metrics counts the reconnect, and the lines received since: before the outage
    # node a had received nothing and node b only the sync line, so these counts
    # are the bursts that crossed after Redis came back.
    a, b = nodes
    for node, received, forwarded in ((a, 100, 101), (b, 101, 100)):
        lines = metrics(node)
        for expected in (
            "rat_backplane_reconnects_total 1",
            f"rat_backplane_lines_received_total {received}",
            f"rat_backplane_lines_forwarded_total {forwarded}",
            'rat_backplane_dropped_total{reason="disconnected"} 1',  # the local-only line
        ):
            assert expected in lines, "\n".join(lines)


def test_redis_restart_chat_members_are_told(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket]
) -> None:
    nodes, groups = outage_scenario(rat_server, redis, clients, "--chat")
    (a1, a2), (b1, b2) = groups
    a1.sendall(b"across again\n")
    for sock in (a2, b1, b2):
        assert recv_lines(sock, 1)[0].endswith(b"> across again\n")
    for sock in (a1, a2, b1, b2):
        assert_silent(sock)
    for node in nodes:
        assert node.stderr.count("cluster: lost") == 1
        assert node.stderr.count("cluster: back on") == 1


def test_redis_not_there_at_start(
    rat_server: StartServer, clients: Callable[..., socket.socket]
) -> None:
    """A node starts without its Redis: it serves its clients, says so once, and joins later."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    a = rat_server("--redis", url)
    b = rat_server("--redis", url)
    for node in (a, b):
        node.wait_for_log(r"cluster: cannot reach redis://127\.0\.0\.1:\d+/0: .*refused")
    a1, a2, b1 = clients(a), clients(a), clients(b)
    a1.sendall(b"alone\n")
    assert recv_lines(a2, 1) == [b"alone\n"]
    assert_silent(b1)
    late = RedisServer(port)
    try:
        for node in (a, b):
            node.wait_for_log(r"cluster: connected to redis://\S+ after [\d.]+ s", timeout=15)
        sync_all([[a1, a2], [b1]])
        b1.sendall(b"together\n")
        assert recv_lines(a1, 1) == [b"together\n"] and recv_lines(a2, 1) == [b"together\n"]
        for node in (a, b):
            assert node.stderr.count("cannot reach") == 1
    finally:
        late.stop()


def test_without_hiredis_the_python_parser_carries_the_cluster(
    rat_server: StartServer,
    redis: RedisServer,
    clients: Callable[..., socket.socket],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "hiredis.py").write_text("raise ImportError('hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pure = rat_server("--redis", redis.url)
    monkeypatch.undo()
    wait_connected(pure)
    assert "replies parsed by the pure-Python RESP reader" in pure.stderr
    fast = rat_server("--redis", redis.url)
    wait_connected(fast)
    assert "replies parsed by hiredis" in fast.stderr
    p, f = clients(pure), clients(fast)
    sync_all([[p], [f]])
    f.sendall(burst("f", 500))
    check_received(recv_lines(p, 500), {"f": 500})


def test_a_stalled_redis_costs_counted_drops_not_memory(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket]
) -> None:
    """Redis stops reading (SIGSTOP): the node's output to it is bounded; the overflow is
    logged once and counted; local clients get everything; once Redis resumes, lines
    flow across again."""
    a, b = start_nodes(rat_server, redis, 2, "--max-line", "1048576")
    a1, a2, b1 = clients(a), clients(a), clients(b)
    sync_all([[a1, a2], [b1]])
    redis.signal(signal.SIGSTOP)
    big = b"x" * (1 << 20 - 1) + b"\n"  # 1 MiB lines
    try:
        total = 0
        deadline = time.monotonic() + 30
        while "not keeping up" not in a.stderr:
            assert time.monotonic() < deadline, a.stderr
            a1.sendall(big * 4)
            total += 4
            recv_lines(a2, 4, timeout=20)  # local delivery goes on
        a1.sendall(big)
        recv_lines(a2, 1)
    finally:
        redis.signal(signal.SIGCONT)
    # Redis publishes what it had taken; b1 gets whole lines only, then a new one.
    # A line that reaches node a before its queue to Redis has drained below the
    # bound is dropped (and counted) too: send probes until one crosses.
    probes = 0
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, a.stderr
        a1.sendall(b"after %d\n" % probes)
        probes += 1
        try:
            while (got := recv_lines(b1, 1, timeout=0.5)[0]) == big:
                pass
        except (AssertionError, TimeoutError):
            continue  # that probe was dropped, or is still on its way
        assert got.startswith(b"after "), got[:40]
        break
    a.wait_for_log(r"caught up; \d+ lines were not forwarded")
    assert a.stderr.count("not keeping up") == 1
    a.stop()
    dropped = int(re.search(r"dropped_overflow=(\d+)", a.stderr).group(1))  # type: ignore[union-attr]
    assert 0 < dropped <= total + 1 + probes


def test_bad_redis_options_are_usage_errors(rat_server: StartServer) -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from conftest import SRC  # noqa: PLC0415

    env = dict(os.environ, PYTHONPATH=str(SRC))
    for args, expected in (
        (["--redis", "http://x"], "expected redis://HOST:PORT"),
        (["--redis", "redis://h:99999"], "port must be a number"),
        (["--redis", "redis://h/abc"], "database must be a number"),
        (["--redis", "rediss://h"], "not supported"),
        (["--redis-channel", "x"], "applies only with --redis"),
        (["--workers", "2", "--admin", "0"], "--admin cannot be combined with --workers"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "rat", "serve", "--port", "0", *args],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr.decode() and b"Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rat",
            "serve",
            "--port",
            "0",
            "--redis",
            "redis://no-such-host.invalid",
        ],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and b"cannot resolve the Redis host" in proc.stderr


def test_admin_metrics_show_the_backplane(
    rat_server: StartServer, redis: RedisServer, clients: Callable[..., socket.socket]
) -> None:
    a, b = start_nodes(rat_server, redis, 2, "--admin", "0")
    sa, sb = clients(a), clients(b)
    sync_all([[sa], [sb]])
    sa.sendall(b"one\ntwo\n")
    assert recv_lines(sb, 2) == [b"one\n", b"two\n"]
    text = "\n".join(metrics(b))
    assert "rat_backplane_lines_received_total 3" in text  # the sync line and two
    assert "rat_backplane_lines_forwarded_total 0" in text
    assert 'rat_backplane_dropped_total{reason="overflow"} 0' in text
    assert re.search(r'rat_backplane_lag_seconds_bucket\{le="\+Inf"\} 2\b', text), text
