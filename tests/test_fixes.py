"""The v1 bugs and red-team findings, each pinned by a test against a real `rat serve`.

Every test here failed on the server before the spine was rebuilt (commit
95f8c48) and passes now; to see that, run this file against the old sources:

    mkdir -p /tmp/old-rat && git archive 95f8c48 | tar -x -C /tmp/old-rat
    TESTS_RAT_SRC=/tmp/old-rat/src .venv/bin/pytest tests/test_fixes.py

Where the behaviour belongs to the poller (half-closed clients are noticed
through hang-ups with epoll and through probes with select), for the stops
that drop output, and for every red-team finding of issue 9 (it asks for each
under both backends), the test runs once per backend.  Timing bounds only
turn a hang into a failure.
"""

from __future__ import annotations

import fcntl
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from conftest import (
    BATCH_LINES,
    BIG_PENDING,
    ERR_TOO_LONG,
    SRC,
    ServerProcess,
    addr,
    assert_no_traceback,
    assert_silent,
    connect,
    flood,
    make_lines,
    opened_sockets,
    read_until_eof,
    recv_lines,
    sync_clients,
)

RatServer = Callable[..., ServerProcess]

ERR_BUSY = b"ERR server busy\n"
ERR_FULL = b"ERR server full\n"
MiB = 1024 * 1024


def wait_for_eof_line(
    server: ServerProcess, address: str, sock: socket.socket | None = None, timeout: float = 5.0
) -> re.Match[str]:
    """The server's `eof from ADDRESS` line; fail at once if the open `sock` got an answer."""
    pattern = rf"eof from {re.escape(address)}(?!\d)[^\n]*"
    deadline = time.monotonic() + timeout
    while not (found := re.search(pattern, server.stderr)):
        assert time.monotonic() < deadline, f"no EOF logged for {address}:\n{server.stderr}"
        if sock is None:
            time.sleep(0.02)
        elif select.select([sock], [], [], 0.02)[0]:
            sock.settimeout(1)
            data = sock.recv(1 << 16)
            raise AssertionError(f"{address} got {data!r} instead of keeping its slot")
    return found


def wait_connected(server: ServerProcess, sock: socket.socket) -> str:
    """The `connect ADDR ...` debug line of `sock` (needs --log-level debug)."""
    return server.wait_for_log(rf"connect {re.escape(addr(sock))}(?!\d)[^\n]*", timeout=5)[0]


def pid_named(line: str, pid: int) -> bool:
    return re.search(rf"\bpid {pid}\b", line) is not None


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def connect_to(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    opened_sockets.append(sock)
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m rat ARGS` to completion; a server that starts instead fails the test."""
    env = dict(os.environ if env is None else env, PYTHONPATH=str(SRC))
    try:
        return subprocess.run(
            [sys.executable, "-m", "rat", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"rat {' '.join(args)} did not exit: {err.stderr!r}") from None


def clean_env(**variables: str) -> dict[str, str]:
    """This environment without RAT_* variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAT_")}
    env.update(variables)
    return env


# ------------------------------------------------------- half-closed clients and slots


@pytest.mark.parametrize("how", ["shutdown", "close"])
def test_half_closed_clients_do_not_hold_a_slot(
    rat_server: RatServer, backend: str, how: str
) -> None:
    """TCP cannot tell a half-close from a close: a client that sent EOF gives up its slot."""
    server = rat_server("--backend", backend, "--max-clients", "2", "--log-level", "debug")
    first, second = connect(server), connect(server)
    first_addr = addr(first)
    eof_lines = []
    for sock in (first, second):
        wait_connected(server, sock)
        address = addr(sock)
        if how == "shutdown":
            sock.shutdown(socket.SHUT_WR)  # still reading
            eof_lines.append(wait_for_eof_line(server, address, sock)[0])
        else:
            sock.close()  # gone (the server sees the same FIN)
            eof_lines.append(wait_for_eof_line(server, address)[0])

    third = connect(server)
    assert_silent(third)  # not `ERR server full`
    connected = wait_connected(server, third)
    assert "2 clients, 1 half-closed" in connected, connected
    for line in eof_lines:
        assert "closed its sending side" in line, line
    # The oldest half-closed client made room.
    server.wait_for_log(rf"disconnect {re.escape(first_addr)}(?!\d)[^\n]*make room")
    if how == "shutdown":
        assert read_until_eof(first, timeout=5) == b""
        third.sendall(b"admitted\n")
        assert recv_lines(second, 1) == [b"admitted\n"]  # half-closed, still receiving
    else:
        fourth = connect(server)  # and the next one takes the second's slot
        assert "half-closed" not in wait_connected(server, fourth)
        third.sendall(b"admitted\n")
        assert recv_lines(fourth, 1) == [b"admitted\n"]
    assert "refused" not in server.stderr
    assert_no_traceback(server)


def _fd_limit_32() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))


@pytest.mark.slow
def test_half_closed_clients_make_room_when_descriptors_run_out(
    rat_server: RatServer, backend: str
) -> None:
    """Out of descriptors, a half-closed client is closed before a newcomer is shed."""
    server = rat_server("--backend", backend, "--log-level", "debug", preexec=_fd_limit_32)
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    crowd = []
    for _ in range(40):  # more than the 32 descriptors the server may hold
        sock = connect(server)
        sock.shutdown(socket.SHUT_WR)
        wait_for_eof_line(server, addr(sock), sock)  # admitted, not shed with ERR server busy
        crowd.append(sock)
    assert re.search(r"closed to make room", server.stderr), "never ran out of descriptors"
    # Still serving, and a newcomer that talks is admitted too.
    c = connect(server)
    c.sendall(b"newcomer\n")
    assert recv_lines(a, 1) == [b"newcomer\n"]
    assert recv_lines(b, 1) == [b"newcomer\n"]
    for sock in crowd:
        sock.setblocking(False)
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            data = b""  # still admitted, nothing sent to it yet
        except ConnectionResetError:
            data = b""
        assert ERR_BUSY not in data, "a newcomer was shed while half-closed clients held slots"
    assert "shedding" not in server.stderr
    assert_no_traceback(server)


# ------------------------------------------------------------- listening addresses

# Resolves `dual.rat.test` to 127.0.0.1 and ::1, whatever /etc/hosts says, then runs rat.
DUAL_NAME_LAUNCHER = """
import socket, sys
real_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, port, *args, **kwargs):
    if host == "dual.rat.test":
        return (real_getaddrinfo("127.0.0.1", port, *args, **kwargs)
                + real_getaddrinfo("::1", port, *args, **kwargs))
    return real_getaddrinfo(host, port, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
from rat.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_localhost_listens_on_every_address_it_resolves_to(rat_server: RatServer) -> None:
    addresses = {
        str(info[4][0])
        for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)
        if info[0] in (socket.AF_INET, socket.AF_INET6)
    }
    server = rat_server("--host", "localhost")
    line, port = server.listening, server.port
    assert pid_named(line, server.proc.pid), line
    clients = []
    for host in sorted(addresses):
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        assert shown in line, f"{shown} missing from {line!r}"
        clients.append(connect_to(host, port))
    sync_clients(server, clients)


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_a_name_with_two_addresses_gets_a_listener_on_each(rat_server: RatServer) -> None:
    server = rat_server("--host", "dual.rat.test", launcher=("-c", DUAL_NAME_LAUNCHER))
    line, port = server.listening, server.port
    assert f"listening on 127.0.0.1:{port}, [::1]:{port}" in line, line
    assert pid_named(line, server.proc.pid), line
    v4, v6 = connect_to("127.0.0.1", port), connect_to("::1", port)
    v4.sendall(b"over IPv4\n")
    assert recv_lines(v6, 1) == [b"over IPv4\n"]
    v6.sendall(b"over IPv6\n")
    assert recv_lines(v4, 1) == [b"over IPv6\n"]


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_loopback(rat_server: RatServer) -> None:
    server = rat_server("--host", "::1")
    assert f"listening on [::1]:{server.port}" in server.listening
    assert pid_named(server.listening, server.proc.pid), server.listening
    a, b = connect_to("::1", server.port), connect_to("::1", server.port)
    sync_clients(server, [a, b])
    a.sendall(b"six\n")
    assert recv_lines(b, 1) == [b"six\n"]


# ------------------------------------------------------------------ stopping

STOPS = {
    # how the stop runs out of time: the shutdown timeout, or a second signal
    "timeout": ("--shutdown-timeout", "1"),
    "second-signal": ("--shutdown-timeout", "30"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stop", sorted(STOPS))
def test_a_stop_that_drops_output_ends_streams_on_a_line_boundary(
    rat_server: RatServer, backend: str, stop: str
) -> None:
    server = rat_server("--backend", backend, "--max-pending", BIG_PENDING, *STOPS[stop])
    stuck = connect(server, rcvbuf=4096)  # reads nothing until the server has gone
    witness, sender = connect(server), connect(server)
    sync_clients(server, [stuck, witness])
    # Odd-sized lines, so that a cut in the middle of one is likely.
    lines = [b"%07d:" % i + b"y" * (997 + i % 13) + b"\n" for i in range(4096)]
    sent = b"".join(lines)
    for start in range(0, len(lines), BATCH_LINES):
        batch = lines[start : start + BATCH_LINES]
        sender.sendall(b"".join(batch))
        assert recv_lines(witness, len(batch)) == batch

    server.signal(signal.SIGTERM)
    queued = int(server.wait_for_log(r"flushing (\d+) queued bytes").group(1))
    assert queued > 0, "nothing was queued: the test shows nothing"
    if stop == "second-signal":
        time.sleep(0.3)
        server.signal(signal.SIGINT)
    assert server.wait(15) == 0

    got = read_until_eof(stuck, timeout=15)
    assert sent.startswith(got), "the stuck client's stream is not a prefix of the broadcast"
    assert len(got) < len(sent), "nothing was dropped: the test shows nothing"
    assert got.endswith(b"\n"), f"the stream ends inside a line: ...{got[-40:]!r}"
    dropped = re.search(r"dropp\w* (\d+) queued bytes for 1 client\b", server.stderr)
    assert dropped, server.stderr
    # The count is exact: what the client did not get is what the stop dropped.
    total = re.search(r"stop dropped (\d+) queued bytes", server.stderr)
    assert total and int(total.group(1)) == len(sent) - len(got), server.stderr
    assert_no_traceback(server)


def test_sighup_is_a_graceful_stop(rat_server: RatServer) -> None:
    server = rat_server("--max-pending", BIG_PENDING, "--shutdown-timeout", "30")
    receiver = connect(server, rcvbuf=16384)  # reads only after the signal
    witness, sender = connect(server), connect(server)
    sync_clients(server, [receiver, witness])
    sent = flood(sender, [witness], 2 * MiB)
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"SIGHUP")
    got = read_until_eof(receiver, timeout=30)
    assert got == sent, f"got {len(got)} of {len(sent)} bytes"
    assert read_until_eof(witness) == b""
    assert server.wait() == 0
    assert_no_traceback(server)


def test_sigusr1_and_sigusr2_are_ignored_with_one_log_line(rat_server: RatServer) -> None:
    server = rat_server()
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        server.signal(signum)
        server.wait_for_log(signal.Signals(signum).name)
        a.sendall(b"after %s\n" % signal.Signals(signum).name.encode())
        assert recv_lines(b, 1) == [b"after %s\n" % signal.Signals(signum).name.encode()]
    assert server.proc.poll() is None
    for name in ("SIGUSR1", "SIGUSR2"):
        assert len([line for line in server.stderr.splitlines() if name in line]) == 1
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert_no_traceback(server)


# ------------------------------------------------------------------- logging


def test_listening_line_at_log_level_warning(rat_server: RatServer) -> None:
    server = rat_server("--log-level", "warning")  # fails to start if the line is missing
    assert pid_named(server.listening, server.proc.pid), server.listening
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert " INFO " not in server.stderr.replace(server.listening, "")


def test_log_level_debug_logs_each_turn(rat_server: RatServer) -> None:
    server = rat_server("--log-level", "debug")
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    a.sendall(b"one\ntwo\n")
    assert recv_lines(b, 2) == [b"one\n", b"two\n"]
    turn = server.wait_for_log(r"DEBUG turn \d+\b[^\n]*2 lines in[^\n]*")
    assert "clients" in turn.group(0), turn.group(0)


def test_log_lines_use_singular_for_one(rat_server: RatServer) -> None:
    server = rat_server("--log-level", "debug", "--max-pending", BIG_PENDING)
    stuck = connect(server, rcvbuf=4096)
    connected = wait_connected(server, stuck)
    assert re.search(r"\b1 client\b", connected), connected
    sender = connect(server)
    wait_connected(server, sender)
    sender.sendall(b"".join(make_lines(0, 4096)))  # 4 MiB queued for the stuck client
    time.sleep(0.5)
    server.signal(signal.SIGTERM)
    server.wait_for_log(r"flushing \d+ queued bytes")
    server.signal(signal.SIGINT)  # drop the rest: "... for 1 client"
    assert server.wait() == 0
    wrong = re.findall(
        r"[^\n]*\b1 (?:clients|bytes|lines|connections|seconds)\b[^\n]*", server.stderr
    )
    assert not wrong, wrong
    assert re.search(r"for 1 client\b", server.stderr), server.stderr


# -------------------------------------------------------------------- memory


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def kernel_send_queue(server: ServerProcess, peer: socket.socket) -> int:
    """Bytes in the kernel's send queue of the server's socket to `peer` (`ss` Send-Q)."""
    ports = f"sport = :{server.port} and dport = :{peer.getsockname()[1]}"
    out = subprocess.run(["ss", "-Htn", ports], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert len(rows) == 1, f"expected one socket for {ports}: {out!r}"
    return int(rows[0][2])


def recv_bytes(sock: socket.socket, size: int, timeout: float = 10.0) -> int:
    """Read and discard exactly `size` bytes (whatever the lines); return `size`."""
    buf = bytearray(1 << 16)
    left = size
    sock.settimeout(timeout)
    while left:
        n = sock.recv_into(buf, min(left, len(buf)))
        assert n, f"EOF with {left} of {size} bytes to come"
        left -= n
    return size


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_a_short_line_does_not_pin_a_big_turn(rat_server: RatServer, backend: str) -> None:
    """Issue 9.1: memory stays within about clients x --max-pending, whatever clients send.

    A producer streams 64 KiB lines and never reads; a chatter sends short
    lines that end in the same turns as the producer's.  The producer's
    share of such a turn is just the chat line: queued as a slice of the
    turn, it would keep the whole 64 KiB alive while being charged 10 bytes.
    """
    max_pending = MiB
    server = rat_server("--backend", backend, "--max-pending", str(max_pending))
    producer = connect(server, rcvbuf=4096)
    chatter, reader = connect(server), connect(server)
    for sock in (producer, chatter):  # the ends of lines go out at once (no Nagle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sync_clients(server, [producer, chatter, reader])
    pid = server.proc.pid
    bound_kib = (3 * max_pending * 2 + 40 * MiB) // 1024

    # First fill the kernel's buffer towards the producer (it grows to a few
    # MB), so that from now on what the producer is sent waits in rat.
    chat = b"c" * 1023 + b"\n"
    history: list[int] = []
    while len(history) < 3 or len(set(history[-3:])) > 1:
        assert len(history) < 300, f"the kernel kept taking bytes for the producer: {history}"
        chatter.sendall(chat * 128)
        recv_bytes(reader, len(chat) * 128)
        time.sleep(0.02)
        history.append(kernel_send_queue(server, producer))
    assert "slow consumer" not in server.stderr, server.stderr

    # Each round the server is busy relaying one of the producer's lines when
    # the ends of the next one and of a chat line arrive: those two lines end
    # in the same turn.  The readers keep up in lock step.
    line = b"p" * (64 * 1024 - 1) + b"\n"  # whole lines at the default --max-line
    for n in range(1500):
        producer.sendall(line + line[:-1])
        producer.sendall(b"\n")
        hello = b"hi %05d\n" % n
        chatter.sendall(hello)
        recv_bytes(chatter, 2 * len(line))
        recv_bytes(reader, 2 * len(line) + len(hello))
        if n % 100 == 0 and vm_kib(pid, "VmRSS") > bound_kib:
            break
    peak = vm_kib(pid, "VmHWM")
    assert peak < bound_kib, f"server peak RSS {peak} KiB, bound {bound_kib} KiB"
    assert server.proc.poll() is None
    assert "slow consumer" not in server.stderr, server.stderr
    reset(producer)  # no need to flush its backlog at the end


# ----------------------------------------------------- a flush that outlasts chatter


@pytest.mark.slow
def test_output_queued_at_sigterm_reaches_a_client_that_keeps_talking(
    rat_server: RatServer, backend: str
) -> None:
    """Issue 9.2: the stop flushes every byte, even to a client whose input keeps coming.

    Closing a socket with unread input resets it, and a reset throws away
    what the kernel had not yet delivered: the server must read (and drop)
    the talker's input while it flushes, and close only once its bytes have
    left.
    """
    server = rat_server(
        "--backend", backend, "--max-pending", BIG_PENDING, "--shutdown-timeout", "30"
    )
    talker = connect(server, rcvbuf=16384)
    fast, sender = connect(server), connect(server)
    sync_clients(server, [talker, fast])
    sent = flood(sender, [fast], 4 * MiB)
    server.signal(signal.SIGTERM)
    server.wait_for_log(r"flushing \d+ queued bytes")

    got = bytearray()
    talker.settimeout(30)
    reads = 0
    while True:
        try:
            chunk = talker.recv(8192)
        except ConnectionResetError:
            raise AssertionError(f"reset after {len(got)} of {len(sent)} bytes") from None
        if not chunk:
            break
        got += chunk
        reads += 1
        if reads % 16 == 0:
            try:
                talker.sendall(b"still talking %d\n" % reads)
            except OSError:  # the server has shut its side: it may reset a late line
                pass
            time.sleep(0.002)
    assert len(got) == len(sent), f"got {len(got)} of {len(sent)} bytes"
    assert got == sent
    assert read_until_eof(fast) == b""
    assert server.wait(30) == 0
    assert_no_traceback(server)


# ---------------------------------------------------------- a log nobody reads


def test_a_stalled_log_sink_does_not_stall_the_server(backend: str) -> None:
    """Issue 9.3: stderr is a pipe nobody reads; the server keeps serving and counts the loss."""
    env = clean_env(PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    argv = ["serve", "--port", "0", "--backend", backend, "--log-level", "debug"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rat", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    socks: list[socket.socket] = []
    reader: threading.Thread | None = None
    try:
        assert proc.stderr is not None
        err_fd = proc.stderr.fileno()
        try:
            fcntl.fcntl(err_fd, fcntl.F_SETPIPE_SZ, 4096)  # fills after a few dozen lines
        except (AttributeError, OSError):
            pass
        head = bytearray()
        deadline = time.monotonic() + 15
        while not (m := re.search(rb"listening on [\d.]+:(\d+)", head)):
            assert time.monotonic() < deadline and proc.poll() is None, bytes(head)
            if select.select([err_fd], [], [], 0.1)[0]:
                head += os.read(err_fd, 4096)
        port = int(m.group(1))

        # From here on nobody reads stderr.  Thousands of connect/reset cycles
        # make a few log lines each at debug level.
        for _ in range(3000):
            sock = socket.socket()
            sock.settimeout(2)
            try:
                sock.connect(("127.0.0.1", port))
            except OSError as err:
                raise AssertionError(f"the server stopped accepting: {err}") from None
            finally:
                reset(sock)
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
        socks[0].sendall(b"still serving\n")
        assert recv_lines(socks[1], 1, timeout=5) == [b"still serving\n"]

        # Drain the pipe: with nothing else happening, the sink catches up on
        # its own and says how many lines it lost.
        drained = bytearray()

        def read_stderr() -> None:
            while chunk := os.read(err_fd, 1 << 16):
                drained.extend(chunk)

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while not re.search(rb"log: \d+ lines dropped", drained):
            assert time.monotonic() < deadline, f"no drop report: ...{bytes(drained[-300:])!r}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        # It says so once: one report for the whole stall, not one per lost line.
        reader.join(5)
        assert not reader.is_alive(), "stderr stayed open after the server exited"
        reports = re.findall(rb"log: \d+ lines? dropped[^\n]*", drained)
        assert len(reports) == 1, f"expected one drop report, got {reports!r}"
    finally:
        for sock in socks:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader is not None:
            reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


# ---------------------------------------------------------------- --backlog


def listen_backlog(port: int) -> int:
    """The backlog of the listener on `port`, from `ss -ltn` (Send-Q of a listening socket)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    assert rows, f"no listener on port {port} in ss output"
    return int(rows[0][2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_backlog_default_is_somaxconn_and_the_flag_is_honoured(rat_server: RatServer) -> None:
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    assert listen_backlog(rat_server().port) == somaxconn
    assert listen_backlog(rat_server("--backlog", "7").port) == 7


# -------------------------------------------------------------- environment, CLI


def test_environment_sets_limits_and_the_command_line_wins(rat_server: RatServer) -> None:
    server = rat_server(env=clean_env(RAT_MAX_LINE="10"))
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    a.sendall(b"0123456789\n")  # 11 bytes
    assert read_until_eof(a) == ERR_TOO_LONG
    assert_silent(b)

    # --max-line on the command line beats RAT_MAX_LINE; RAT_ECHO still applies.
    server = rat_server("--max-line", "100", env=clean_env(RAT_MAX_LINE="10", RAT_ECHO="yes"))
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    line = b"x" * 49 + b"\n"
    a.sendall(line)
    assert recv_lines(b, 1) == [line]
    assert recv_lines(a, 1) == [line]  # echoed


@pytest.mark.parametrize(
    ("variable", "value"), [("RAT_MAX_LINE", "abc"), ("RAT_ECHO", "maybe"), ("RAT_BACKEND", "x")]
)
def test_a_bad_environment_value_is_a_usage_error_naming_it(variable: str, value: str) -> None:
    result = run_cli("serve", "--port", "0", env=clean_env(**{variable: value}))
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_bare_rat_prints_help_and_version_prints_the_version() -> None:
    bare = run_cli(env=clean_env())
    assert bare.returncode == 0, bare.stderr
    assert "usage" in bare.stdout.lower() and "serve" in bare.stdout
    version = run_cli("--version", env=clean_env())
    assert version.returncode == 0
    init = (SRC / "rat" / "__init__.py").read_text()
    declared = re.search(r"__version__ = \"([^\"]+)\"", init)
    assert declared, init
    assert version.stdout.strip() == f"rat {declared.group(1)}"
