"""Limits, failure modes and shutdown, against a real `rat serve` subprocess.

Each test drives the server over loopback sockets the way a misbehaving peer
would: an overlong line, a client that never reads, a descriptor shortage, a
reset in the middle of a line, a signal with output still queued.  Timing bounds
are deliberately generous: they exist to turn a hang or a busy loop into a
failure, not to measure speed.

Two kernel facts shape the floods below.  Loopback send buffers autotune: a
server socket whose peer never reads can absorb about 3-4 MB before the server
has to queue anything itself, so floods meant to build a real server-side
backlog are 8 MB.  And a reader must keep up or it becomes a slow consumer too,
so every flood is sent in lock step: one 64 KiB batch, then the reading clients
read that batch, then the next.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import select
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
    ERR_FULL,
    ERR_SLOW,
    ERR_TOO_LONG,
    FLOOD_BYTES,
    LINE_SIZE,
    Drain,
    Flooder,
    ServerProcess,
    assert_no_traceback,
    assert_prefix_of,
    assert_silent,
    connect,
    cpu_seconds,
    flood,
    log_pattern,
    make_lines,
    open_fds,
    opened_sockets,
    read_until_eof,
    recv_lines,
    run_rat,
    stderr_lines,
    sync_clients,
    wait_for_fds_freed,
)

RatServer = Callable[..., ServerProcess]

# ---------------------------------------------------------------- --max-line


def test_overlong_line_arriving_whole(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend)
    a, b, bad = connect(server), connect(server), connect(server)
    sync_clients(server, [a, b, bad])

    bad.sendall(b"a" * 65536 + b"\n")  # 65537 bytes: one over the default limit
    assert read_until_eof(bad) == ERR_TOO_LONG
    assert_silent(a)
    assert_silent(b)

    a.sendall(b"still chatting\n")
    assert recv_lines(b, 1) == [b"still chatting\n"]
    b.sendall(b"me too\n")
    assert recv_lines(a, 1) == [b"me too\n"]
    assert_no_traceback(server)


def test_overlong_line_still_growing(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend)
    a, b, bad = connect(server), connect(server), connect(server)
    sync_clients(server, [a, b, bad])

    # Never a newline: the server must give up on the line without waiting for its end.
    piece = b"g" * 4096
    for _ in range(65536 // len(piece) + 4):
        ready, _, _ = select.select([bad], [], [], 0.02)
        if ready:
            break  # the server has answered: stop sending into a closing socket
        try:
            bad.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
    assert read_until_eof(bad) == ERR_TOO_LONG
    assert_silent(a)
    assert_silent(b)

    a.sendall(b"after the long one\n")
    assert recv_lines(b, 1) == [b"after the long one\n"]
    assert_no_traceback(server)


def test_max_line_exact_boundary(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend, "--max-line", "100")
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])

    fits = b"f" * 99 + b"\n"  # exactly 100 bytes with its newline
    a.sendall(fits)
    assert recv_lines(b, 1) == [fits]

    a.sendall(b"o" * 100 + b"\n")  # 101 bytes
    assert read_until_eof(a) == ERR_TOO_LONG
    assert_silent(b)

    c = connect(server)
    sync_clients(server, [b, c])
    c.sendall(fits)
    assert recv_lines(b, 1) == [fits]
    assert_no_traceback(server)


# ---------------------------------------------------------------- --max-pending


@pytest.mark.slow
def test_slow_consumer_dropped_others_get_every_line(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend, "--max-pending", "262144")
    slow = connect(server, rcvbuf=4096)  # never reads after the sync line
    reader, sender = connect(server), connect(server)
    sync_clients(server, [slow, reader])

    dropped = log_pattern(slow, "slow consumer")
    sent = flood(
        sender,
        [reader],
        64 * 1024 * 1024,  # a cap; the loop stops once the drop is logged
        stop=lambda: re.search(dropped, server.stderr) is not None,
    )
    assert re.search(dropped, server.stderr), f"no slow-consumer drop after {len(sent)} bytes"

    # Everyone else keeps receiving every line, in order.
    flood(sender, [reader], 16 * BATCH_LINES * LINE_SIZE)

    # The dropped client gets a clean prefix of the stream (and maybe the ERR line), then EOF.
    assert_prefix_of(read_until_eof(slow), sent, ERR_SLOW)
    assert server.proc.poll() is None
    assert not re.search(log_pattern(reader, "slow consumer"), server.stderr)
    assert_no_traceback(server)


READER_PROCESS = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(sock.getsockname()[1], flush=True)
buf = bytearray(1 << 20)
total = 0
try:
    while n := sock.recv_into(buf):
        total += n
except OSError:
    pass
print(total, flush=True)
"""


@pytest.mark.slow
def test_fast_reader_survives_an_unthrottled_sender(rat_server: RatServer) -> None:
    """A client that reads as fast as it can is no slow consumer, however fast others send.

    The reader is a process of its own, so it never waits for this one's GIL.
    """
    server = rat_server("--log-level", "debug")  # default --max-pending, 8 MiB; log connects
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_PROCESS, str(server.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        reader_addr = f"127.0.0.1:{int(reader.stdout.readline())}"
        sender = connect(server)
        server.wait_for_log(re.escape(reader_addr))  # accepted
        batch = b"".join(make_lines(0, BATCH_LINES))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            sender.sendall(batch)
        dropped = re.search(rf"{re.escape(reader_addr)}(?!\d)[^\n]*slow consumer", server.stderr)
        assert not dropped, server.stderr
        assert reader.poll() is None, f"reader was disconnected:\n{server.stderr}"
        server.signal(signal.SIGTERM)
        out, _ = reader.communicate(timeout=30)
        assert int(out) > 0, server.stderr
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert server.wait() == 0
    assert_no_traceback(server)


def test_burst_bigger_than_max_pending_reaches_a_reading_client(
    rat_server: RatServer, backend: str
) -> None:
    """--max-pending counts what a client leaves queued, not how much one turn carried.

    One 640 kB sendall against a 100 kB limit: a receiver that reads all along gets
    every byte, and nobody is dropped as a slow consumer.
    """
    server = rat_server("--backend", backend, "--max-pending", "100000")
    reader, sender = connect(server), connect(server)
    sync_clients(server, [reader])
    lines = [b"%07d " % i + b"z" * 55 + b"\n" for i in range(10000)]
    got: list[bytes] = []
    receiving = threading.Thread(target=lambda: got.extend(recv_lines(reader, len(lines), 20)))
    receiving.start()
    sender.sendall(b"".join(lines))
    receiving.join(30)
    assert got == lines
    assert "slow consumer" not in server.stderr
    assert_no_traceback(server)


# ---------------------------------------------------------------- --write-timeout


@pytest.mark.slow
def test_write_timeout_drops_stuck_client_only(rat_server: RatServer) -> None:
    server = rat_server("--write-timeout", "1", "--max-pending", BIG_PENDING)
    stuck = connect(server, rcvbuf=4096)
    reader, sender = connect(server), connect(server)
    sync_clients(server, [stuck, reader])

    # 8 MB overflows the kernel buffers of `stuck`, so the server holds output for it.
    sent = flood(sender, [reader], FLOOD_BYTES)
    server.wait_for_log(log_pattern(stuck, "write timeout"), timeout=15)
    assert not re.search(log_pattern(stuck, "slow consumer"), server.stderr)
    assert_prefix_of(read_until_eof(stuck), sent, ERR_SLOW)

    # The reading client was idle for as long and is still served.
    time.sleep(1.5)
    sender.sendall(b"still here\n")
    assert recv_lines(reader, 1) == [b"still here\n"]
    assert not re.search(log_pattern(reader, "write timeout"), server.stderr)
    assert_no_traceback(server)


# ---------------------------------------------------------------- --max-clients


def test_max_clients(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend, "--max-clients", "3")
    a, b, c = connect(server), connect(server), connect(server)
    # No probe client here (it would be the 4th): one line from `a` reaching b and c
    # proves all three were accepted.
    a.sendall(b"sync\n")
    assert recv_lines(b, 1) == [b"sync\n"]
    assert recv_lines(c, 1) == [b"sync\n"]

    extra = connect(server)
    assert read_until_eof(extra) == ERR_FULL
    extra.close()
    assert_silent(b)
    assert_silent(c)

    a.close()
    # A FIN looks like a half-close (SPEC: a half-closed client still receives), so the
    # server learns that `a` is gone when a broadcast to it is answered with a reset.
    b.sendall(b"nudge\n")
    assert recv_lines(c, 1) == [b"nudge\n"]
    # That happens asynchronously: retry until a newcomer is admitted.
    deadline = time.monotonic() + 10
    attempt = 0
    while True:
        assert time.monotonic() < deadline, "no connection admitted after a client left"
        attempt += 1
        line = b"newcomer %d\n" % attempt
        d = connect(server)
        d.sendall(line)
        ready, _, _ = select.select([b, d], [], [], 3)
        if d in ready:  # refused again: it must be the ERR line and nothing of ours leaks
            assert read_until_eof(d) in (ERR_FULL, b"")
            d.close()
            time.sleep(0.1)
            continue
        assert b in ready, "newcomer neither refused nor relayed"
        assert recv_lines(b, 1) == [line]
        assert recv_lines(c, 1) == [line]
        break
    c.sendall(b"welcome\n")
    assert recv_lines(d, 1) == [b"welcome\n"]
    assert recv_lines(b, 1) == [b"welcome\n"]
    assert_no_traceback(server)


# ---------------------------------------------------------------- EMFILE


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))


@pytest.mark.slow
def test_out_of_descriptors_no_spin_and_recovers(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend, preexec=_low_fd_limit)
    pid = server.proc.pid
    baseline = open_fds(pid)
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])

    crowd: list[socket.socket] = []
    try:
        for _ in range(60):  # more than the 40 descriptors the server may hold
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            opened_sockets.append(s)
            s.setblocking(False)
            rc = s.connect_ex((server.host, server.port))
            assert rc in (0, errno.EINPROGRESS), os.strerror(rc)
            crowd.append(s)
        time.sleep(0.5)  # let the server run into EMFILE
        assert server.proc.poll() is None, server.stderr

        before = cpu_seconds(pid)
        time.sleep(1.5)
        used = cpu_seconds(pid) - before
        assert used < 0.5, f"server burnt {used:.2f}s CPU in 1.5s while out of descriptors"

        # Still serving the clients it has.
        a.sendall(b"ping\n")
        assert recv_lines(b, 1) == [b"ping\n"]
    finally:
        for s in crowd:
            s.close()

    # Once the crowd is gone the server frees their descriptors ...
    wait_for_fds_freed(pid, baseline, a, b)
    # ... and accepts again.
    c = connect(server)
    c.sendall(b"hello after EMFILE\n")
    assert recv_lines(a, 1, timeout=10) == [b"hello after EMFILE\n"]
    assert recv_lines(b, 1) == [b"hello after EMFILE\n"]
    b.sendall(b"welcome back\n")
    assert recv_lines(c, 1) == [b"welcome back\n"]

    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert re.search(r"EMFILE|[Tt]oo many open files", server.stderr), server.stderr
    assert_no_traceback(server)


# ---------------------------------------------------------------- resets and half-close


def test_reset_mid_line_leaves_others_alone(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend)
    a, b, x = connect(server), connect(server), connect(server)
    sync_clients(server, [a, b, x])

    x.sendall(b"partial fragment")
    time.sleep(0.2)  # let the server read the fragment before the reset arrives
    x.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    x.close()  # RST
    time.sleep(0.2)

    # The fragment may be dropped or relayed as its own line, never glued to another line.
    fragment = b"partial fragment\n"
    a.sendall(b"after reset\n")
    got = recv_lines(b, 1)
    if got == [fragment]:
        got = recv_lines(b, 1)
    assert got == [b"after reset\n"]
    b.sendall(b"reply\n")
    got = recv_lines(a, 1)
    if got == [fragment]:
        got = recv_lines(a, 1)
    assert got == [b"reply\n"]

    c = connect(server)
    sync_clients(server, [a, b, c])
    assert_no_traceback(server)


@pytest.mark.slow
def test_reset_with_queued_output(rat_server: RatServer) -> None:
    server = rat_server()
    stuck = connect(server, rcvbuf=4096)
    reader, sender = connect(server), connect(server)
    sync_clients(server, [stuck, reader])
    flood(sender, [reader], 5 * 1024 * 1024)  # below 8 MiB pending: queued, not dropped

    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stuck.close()
    time.sleep(0.3)
    sender.sendall(b"after reset\n")
    assert recv_lines(reader, 1) == [b"after reset\n"]
    c = connect(server)
    sync_clients(server, [reader, c])
    assert server.proc.poll() is None
    assert_no_traceback(server)


def test_half_closed_client_still_receives(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend)
    a, b, h = connect(server), connect(server), connect(server)
    sync_clients(server, [a, b, h])

    h.sendall(b"tail")
    h.shutdown(socket.SHUT_WR)
    assert recv_lines(a, 1) == [b"tail\n"]  # EOF flushes the fragment with a newline
    assert recv_lines(b, 1) == [b"tail\n"]

    a.sendall(b"broadcast\n")
    assert recv_lines(h, 1) == [b"broadcast\n"]
    assert recv_lines(b, 1) == [b"broadcast\n"]
    b.sendall(b"again\n")
    assert recv_lines(h, 1) == [b"again\n"]
    assert_no_traceback(server)


# ---------------------------------------------------------------- stop


@pytest.mark.slow
def test_sigterm_flushes_backlog_and_closes_listener(rat_server: RatServer) -> None:
    server = rat_server("--max-pending", BIG_PENDING, "--shutdown-timeout", "30")
    receiver = connect(server, rcvbuf=16384)  # does not read until after the signal
    witness, sender = connect(server), connect(server)
    sync_clients(server, [receiver, witness])

    # The witness reads in lock step, so once flood() returns the server has read every
    # byte from the sender; most of it is queued for the receiver.
    sent = flood(sender, [witness], FLOOD_BYTES)
    server.signal(signal.SIGTERM)

    # The listener closes at once, while the flush is still waiting on the receiver.
    deadline = time.monotonic() + 3
    while True:
        assert time.monotonic() < deadline, "listener still accepting 3s after SIGTERM"
        try:
            probe = socket.create_connection((server.host, server.port), timeout=1)
        except ConnectionRefusedError:
            break
        probe.close()
        time.sleep(0.05)
    assert server.proc.poll() is None, f"exited before flushing the backlog:\n{server.stderr}"

    # Read slowly: small buffer, small reads, a pause now and then.
    got = bytearray()
    receiver.settimeout(30)
    reads = 0
    while True:
        chunk = receiver.recv(8192)
        if not chunk:
            break
        got += chunk
        reads += 1
        if reads % 64 == 0:
            time.sleep(0.005)
    assert len(got) == len(sent)
    assert got == sent
    assert read_until_eof(witness) == b""
    assert server.wait(30) == 0
    assert_no_traceback(server)


@pytest.mark.slow
def test_sigterm_while_busy_still_flushes(rat_server: RatServer) -> None:
    """The signal lands while the server is relaying: the flush still happens in full."""
    server = rat_server("--max-pending", BIG_PENDING, "--shutdown-timeout", "30")
    receiver = connect(server)  # does not read until after the signal
    witness, sender = connect(server), connect(server)
    sync_clients(server, [receiver, witness])
    drain = Drain(witness)
    drain.start()
    flooder = Flooder(sender, pause=0.002)  # about 30 MB/s: busy, not overwhelmed
    flooder.start()
    time.sleep(0.5)

    server.signal(signal.SIGTERM)  # the sender keeps sending through the signal
    time.sleep(0.5)
    flooder.finish()
    assert server.proc.poll() is None, f"exited with output still queued:\n{server.stderr}"

    got = read_until_eof(receiver, timeout=30)
    assert drain.ended.wait(10), "witness not closed"
    assert server.wait(30) == 0
    # Both received the same broadcast: the receiver's backlog was flushed in full.
    assert len(got) == len(drain.data)
    assert got == drain.data
    assert_no_traceback(server)


def test_sigint_exits_promptly(rat_server: RatServer, backend: str) -> None:
    server = rat_server("--backend", backend)
    started = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.wait(5) == 0
    assert time.monotonic() - started < 2, "SIGINT took effect late"
    assert_no_traceback(server)


def test_signal_right_after_listening_line_exits_0(rat_server: RatServer) -> None:
    """Once `listening on` is logged, a signal must already get the clean stop (exit 0)."""
    for signum in [signal.SIGINT, signal.SIGTERM] * 6:
        server = rat_server()
        server.signal(signum)  # at once: no pause after the readiness line
        code = server.wait(5)
        assert code == 0, f"{signal.Signals(signum).name} right after start: exit {code}"
        assert "counters:" in server.stderr


def test_sigterm_idle_clients_get_eof(rat_server: RatServer) -> None:
    server = rat_server()
    a, b = connect(server), connect(server)
    sync_clients(server, [a, b])
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert read_until_eof(a, timeout=5) == b""
    assert read_until_eof(b, timeout=5) == b""
    assert server.wait(5) == 0
    assert time.monotonic() - started < 2
    assert_no_traceback(server)


@pytest.mark.slow
def test_second_signal_during_flush_exits_at_once(rat_server: RatServer) -> None:
    server = rat_server("--max-pending", BIG_PENDING, "--shutdown-timeout", "30")
    stuck = connect(server, rcvbuf=4096)
    witness, sender = connect(server), connect(server)
    sync_clients(server, [stuck, witness])
    flood(sender, [witness], FLOOD_BYTES)

    server.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.proc.poll() is None, "did not wait to flush the stuck client"
    started = time.monotonic()
    server.signal(signal.SIGINT)
    server.wait(10)
    assert time.monotonic() - started < 3, "second signal did not take effect at once"
    assert_no_traceback(server)
    stuck.close()


# ---------------------------------------------------------------- start failures


def test_port_in_use(rat_server: RatServer) -> None:
    first = rat_server()
    result = run_rat("--host", "127.0.0.1", "--port", str(first.port))
    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{first.port}" in lines[0]
    assert "Address already in use" in lines[0]
    assert "Traceback" not in result.stderr
    # The first server is untouched.
    a, b = connect(first), connect(first)
    sync_clients(first, [a, b])


def test_unknown_host() -> None:
    result = run_rat("--host", "no-such-host.invalid", "--port", "0")
    assert result.returncode == 1
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "no-such-host.invalid" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "notanumber"],
        ["--max-line", "-5"],
        ["--backend", "bogus"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = run_rat("--host", "127.0.0.1", *args)
    assert result.returncode == 2, result.stderr
    assert "usage" in result.stderr.lower()
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- counters


def test_counters_summary_on_exit(rat_server: RatServer) -> None:
    server = rat_server()
    clients = [connect(server) for _ in range(3)]
    # Sync without a probe, so exactly 3 connections are ever accepted.
    for i, sock in enumerate(clients):
        sock.sendall(b"hello %d\n" % i)
        sock.sendall(b"bye %d\n" % i)
        for other in clients:
            if other is not sock:
                assert recv_lines(other, 2) == [b"hello %d\n" % i, b"bye %d\n" % i]
    server.signal(signal.SIGTERM)
    assert server.wait() == 0

    summary = [line for line in server.stderr.splitlines() if "counters:" in line]
    assert len(summary) == 1, server.stderr
    line = summary[0]
    accepted = re.search(r"accept\w*\W{0,3}(\d+)", line)
    lines_in = re.search(r"lines?[\s_-]?in\W{0,3}(\d+)", line)
    assert accepted, f"no accepted-connections counter in {line!r}"
    assert lines_in, f"no lines-in counter in {line!r}"
    assert int(accepted.group(1)) == 3, line
    assert int(lines_in.group(1)) == 6, line
    assert_no_traceback(server)
