"""`rat serve --workers N`: processes sharing one port, one broadcast, a supervisor.

Which worker holds a client is read from /proc (the server end's socket inode
in /proc/net/tcp, then which worker has that inode open), so the tests can
make sure they have clients on every worker before they check that lines
cross between workers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from clusterkit import RedisServer, needs_redis, owner_of, redis, wait_connected
from conftest import SRC, ServerProcess, assert_silent, recv_lines

__all__ = ["redis"]

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc"),
]

StartServer = Callable[..., ServerProcess]
WORKERS_LINE = re.compile(r"(\d+) workers \(pids ([\d, ]+),")


def worker_pids(server: ServerProcess) -> list[int]:
    match = WORKERS_LINE.search(server.stderr)
    assert match, server.stderr
    return [int(pid) for pid in match.group(2).split(", ")]


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def clients_on_every_worker(
    server: ServerProcess, pids: list[int], opened: list[socket.socket], each: int = 2
) -> dict[int, list[socket.socket]]:
    """Connect until every worker holds at least `each` clients (the kernel picks by hash)."""
    by_worker: dict[int, list[socket.socket]] = {pid: [] for pid in pids}
    for _ in range(200):
        if all(len(socks) >= each for socks in by_worker.values()):
            return by_worker
        sock = server.connect()
        opened.append(sock)
        by_worker[owner_of(sock, server.port, pids)].append(sock)
    raise AssertionError(f"200 connections did not reach every worker: {by_worker}")


def sync(everyone: list[socket.socket]) -> None:
    everyone[0].sendall(b"__sync__\n")
    for sock in everyone[1:]:
        assert recv_lines(sock, 1) == [b"__sync__\n"]


def test_clients_on_different_workers_talk(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    server = rat_server("--workers", "2")
    assert server.stderr.count("listening on") == 1  # the supervisor's line, once
    pids = worker_pids(server)
    assert len(pids) == 2 and server.proc.pid not in pids
    by_worker = clients_on_every_worker(server, pids, clients)
    everyone = [sock for socks in by_worker.values() for sock in socks]
    sync(everyone)
    senders = [socks[0] for socks in by_worker.values()]
    for index, sock in enumerate(senders):
        sock.sendall(b"".join(b"s%d %05d\n" % (index, seq) for seq in range(500)))
    for sock in everyone:
        own = senders.index(sock) if sock in senders else -1
        lines = recv_lines(sock, 500 * (len(senders) - (own >= 0)))
        for index in range(len(senders)):
            if index != own:
                mine = [line for line in lines if line.startswith(b"s%d " % index)]
                assert mine == [b"s%d %05d\n" % (index, seq) for seq in range(500)]
        assert_silent(sock)


def test_a_killed_worker_is_restarted_and_the_others_keep_going(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    server = rat_server("--workers", "2")
    pids = worker_pids(server)
    by_worker = clients_on_every_worker(server, pids, clients)
    victim, survivor = pids
    sync([sock for socks in by_worker.values() for sock in socks])
    os.kill(victim, signal.SIGKILL)
    for sock in by_worker[victim]:  # its clients are dropped
        sock.settimeout(10)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
    a, b = by_worker[survivor][:2]
    a.sendall(b"still here\n")
    assert recv_lines(b, 1) == [b"still here\n"]
    match = server.wait_for_log(r"worker (\d) restarted \(pid (\d+)\)")
    reborn = int(match.group(2))
    assert reborn not in pids
    assert re.search(rf"worker \d \(pid {victim}\) died \(killed by SIGKILL\)", server.stderr)
    # New clients land on the new worker too, and talk with the survivor's.
    fresh = clients_on_every_worker(server, [survivor, reborn], clients, each=1)
    newcomer = fresh[reborn][0]
    sync([a, b, newcomer])
    newcomer.sendall(b"hello from the new worker\n")
    assert recv_lines(a, 1) == [b"hello from the new worker\n"]
    a.sendall(b"and back\n")
    assert recv_lines(newcomer, 1) == [b"and back\n"]


def test_sigterm_to_the_parent_drains_every_worker_and_exits_0(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    server = rat_server("--workers", "2")
    pids = worker_pids(server)
    by_worker = clients_on_every_worker(server, pids, clients, each=1)
    everyone = [sock for socks in by_worker.values() for sock in socks]
    sync(everyone)
    server.signal(signal.SIGTERM)
    for sock in everyone:
        sock.settimeout(15)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        assert rest == b""  # a clean close, nothing cut
    assert server.wait(20) == 0
    log = server.stderr
    assert log.count("SIGTERM: closing the listener") == 2  # each worker once, not twice
    assert "all workers have exited" in log and "not all cleanly" not in log
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie_or_gone(pid)


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


def test_a_port_in_use_is_one_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "rat", "serve", "--port", str(port), "--workers", "2"],
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(SRC)),
            timeout=30,
            check=False,
        )
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], lines


@needs_redis
def test_workers_through_redis(
    rat_server: StartServer, redis: RedisServer, clients: list[socket.socket]
) -> None:
    """With --redis, each worker is one more node on the Redis (no socket mesh)."""
    server = rat_server("--workers", "2", "--redis", redis.url)
    assert "each a node on redis://" in server.stderr
    wait_connected(server, 2)  # both workers' link-up lines
    pids = worker_pids(server)
    by_worker = clients_on_every_worker(server, pids, clients, each=1)
    first, second = (socks[0] for socks in by_worker.values())
    sync([first, second])
    first.sendall(b"".join(b"%05d\n" % seq for seq in range(300)))
    assert recv_lines(second, 300) == [b"%05d\n" % seq for seq in range(300)]
    assert_silent(second)
    assert_silent(first)


def chat_on_two_workers(
    rat_server: StartServer, clients: list[socket.socket], each: int = 1
) -> tuple[ServerProcess, list[int], list[list[socket.socket]]]:
    """`rat serve --workers 2 --chat`, its worker PIDs, and `each` clients on each worker."""
    server = rat_server("--workers", "2", "--chat")
    pids = worker_pids(server)
    return server, pids, list(clients_on_every_worker(server, pids, clients, each).values())


def test_chat_rooms_span_workers(rat_server: StartServer, clients: list[socket.socket]) -> None:
    _, _, on_each = chat_on_two_workers(rat_server, clients)
    (first, *_), (second, *_) = on_each
    for sock in (first, second):
        sock.sendall(b"/join #ops\n")
    for sock in (first, second):
        while not recv_lines(sock, 1)[0].startswith(b"* you joined #ops"):
            pass
    first.sendall(b"across workers\n")
    got = recv_lines(second, 1)[0]
    while b"across workers" not in got:  # join notices may come first
        got = recv_lines(second, 1)[0]
    assert re.fullmatch(rb"<guest\d+> across workers\n", got)


def test_chat_guest_nicks_differ_across_workers(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    # Each worker counts its own guest numbers (worker k of N: k, k + N, ...),
    # so two people on different workers are never both guest1.
    _, _, on_each = chat_on_two_workers(rat_server, clients, each=2)
    nicks: list[bytes] = []
    for sock in [sock for socks in on_each for sock in socks]:
        greeting = recv_lines(sock, 1)[0]
        match = re.match(rb"\* welcome, you are (guest\d+) in #lobby", greeting)
        assert match, greeting
        nicks.append(match.group(1))
    assert len(set(nicks)) == len(nicks), nicks


def reply_to(sock: socket.socket, command: bytes, start: bytes, count: int = 1) -> list[bytes]:
    """Send `command`; its `count` reply lines, the first one matching the regex `start`.

    Lines before it (notices about other clients) are skipped.
    """
    sock.sendall(command + b"\n")
    while True:
        line = recv_lines(sock, 1)[0]
        if re.match(start, line):
            return [line, *recv_lines(sock, count - 1)] if count > 1 else [line]


def test_chat_nicks_are_unique_across_workers(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    server, pids, on_each = chat_on_two_workers(rat_server, clients)
    (first, *_), (second, *_) = on_each
    answer = rb"\* you are now |ERR "
    assert reply_to(first, b"/nick alice", answer) == [b"* you are now alice\n"]
    assert reply_to(second, b"/nick ALICE", answer) == [
        b"ERR nick ALICE is taken: choose another with /nick NAME\n"
    ]
    # alice is free again, on every worker
    assert reply_to(first, b"/nick alicia", answer) == [b"* you are now alicia\n"]
    assert reply_to(second, b"/nick alice", answer) == [b"* you are now alice\n"]
    # A worker that dies takes its clients' nicks with it.
    os.kill(owner_of(first, server.port, pids), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while reply_to(second, b"/nick alicia", answer) != [b"* you are now alicia\n"]:
        assert time.monotonic() < deadline, "alicia stayed taken after its worker died"
        time.sleep(0.1)


def test_chat_who_and_rooms_count_every_worker(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    server, pids, on_each = chat_on_two_workers(rat_server, clients)
    (first, *_), (second, *_) = on_each
    assert reply_to(first, b"/nick alice", rb"\* you are") == [b"* you are now alice\n"]
    assert reply_to(second, b"/nick bob", rb"\* you are") == [b"* you are now bob\n"]
    reply_to(second, b"/join #ops", rb"\* you joined #ops")
    (who,) = reply_to(first, b"/who", rb"\* \d+ in #lobby: ")
    assert b"alice" in who and b"bob" not in who, who
    rooms = reply_to(first, b"/rooms", rb"\* #lobby \d+\n", count=2)
    assert rooms[1] == b"* #ops 1\n", rooms
    assert reply_to(first, b"/join #ops", rb"\* you joined #ops")
    (who,) = reply_to(second, b"/who", rb"\* 2 in #ops: ")
    assert sorted(who.split(b": ")[1].split()) == [b"alice", b"bob"], who
    # A worker that dies takes its clients out of every list.
    os.kill(owner_of(first, server.port, pids), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while reply_to(second, b"/who", rb"\* \d+ in #ops: ") != [b"* 1 in #ops: bob\n"]:
        assert time.monotonic() < deadline, "alice stayed in /who after her worker died"
        time.sleep(0.1)


def test_chat_who_lists_hundreds_of_clients_across_workers(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    # 600 guest nicks: the supervisor's answer is over 5 KiB, more than one read.
    server = rat_server("--workers", "2", "--chat")
    clients += [server.connect() for _ in range(600)]
    probe = clients[0]
    deadline = time.monotonic() + 15
    while True:
        (head,) = reply_to(probe, b"/who", rb"\* \d+ in #lobby: ")
        if head.startswith(b"* 600 in"):
            break
        assert time.monotonic() < deadline, head[:40]  # the last joins are still on their way
        time.sleep(0.1)
    rest = recv_lines(probe, 600 // 50 - 1)  # 50 nicks a line
    nicks = head.split(b": ", 1)[1].split() + [n for line in rest for n in line[2:].split()]
    assert len(set(nicks)) == 600, nicks[:5]  # (which guest numbers: how the kernel spread them)
    assert all(re.fullmatch(rb"guest\d+", nick) for nick in nicks)


def test_workers_stop_when_the_supervisor_is_killed(
    rat_server: StartServer, clients: list[socket.socket]
) -> None:
    server = rat_server("--workers", "2")
    pids = worker_pids(server)
    server.proc.kill()  # no chance to pass anything on
    server.wait()
    deadline = time.monotonic() + 15
    while not all(_is_zombie_or_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.05)
    assert "the supervisor is gone: closing the listener" in server.stderr
