"""Integration tests: rat as a subprocess, real TCP sockets on 127.0.0.1.

Every protocol test runs once per poller backend (the `backend` fixture) and
once per transport (the `transport` fixture): plain TCP, and again over TLS,
the way Redis reruns its suite with `--tls`, since nothing in these tests
depends on the bytes being in the clear.  The few that are about TCP itself
say so and run plain only.  The tests compare exact bytes; none of them
asserts on timing.  Every wait is
bounded, so a server that loses or withholds data fails a test instead of
hanging it.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import SRC, ServerProcess, assert_silent, recv_lines, sync_clients

pytestmark = pytest.mark.timeout(30)

StartServer = Callable[..., ServerProcess]


# --------------------------------------------------------------------------- helpers


class Clients:
    """Opens client sockets to a server and closes every one of them at teardown."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []

    def connect(
        self,
        server: ServerProcess,
        *,
        nodelay: bool = False,
        rcvbuf: int | None = None,
        timeout: float = 10.0,
    ) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.opened.append(sock)
        if rcvbuf is not None:
            # Must be set before connect() so the advertised window is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        sock.connect((server.host, server.port))
        return server.wrap(sock) if server.wrap is not None else sock

    def connect_many(self, server: ServerProcess, count: int) -> list[socket.socket]:
        return [self.connect(server) for _ in range(count)]

    def close_all(self) -> None:
        for sock in self.opened:
            sock.close()
        self.opened.clear()


@pytest.fixture(params=["plain", "tls"])
def transport(request: pytest.FixtureRequest) -> str:
    """Run each test over plain TCP and over TLS (see conftest's `rat_server`)."""
    return str(request.param)


# For tests about TCP itself, not about rat's protocol.
plain_tcp_only = pytest.mark.parametrize("transport", ["plain"])


@pytest.fixture
def clients() -> Iterator[Clients]:
    opened = Clients()
    yield opened
    opened.close_all()


def reset(sock: socket.socket) -> None:
    """Close `sock` with SO_LINGER 0 so the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_exactly(sock: socket.socket, size: int, timeout: float = 10.0) -> bytes:
    """Read exactly `size` bytes from `sock` (fails on EOF or timeout)."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(buf)} of {size} bytes before timeout")
        sock.settimeout(left)
        chunk = sock.recv(min(1 << 16, size - len(buf)))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def recv_lines_until(sock: socket.socket, last: bytes, timeout: float = 10.0) -> list[bytes]:
    """Read whole lines from `sock` up to and including the line `last`; nothing after it."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while not buf.endswith(last) or (len(buf) > len(last) and buf[-len(last) - 1] != 0x0A):
        left = deadline - time.monotonic()
        if left <= 0 or len(buf) > 1 << 20:
            raise AssertionError(f"no {last!r} line in {bytes(buf[:300])!r}")
        sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AssertionError(f"EOF before {last!r}; got {bytes(buf[:300])!r}")
        buf += chunk
    return [line + b"\n" for line in bytes(buf).split(b"\n")[:-1]]


def assert_same_bytes(got: bytes, expected: bytes) -> None:
    """Compare two large byte strings without a multi-megabyte pytest diff."""
    if got == expected:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    raise AssertionError(
        f"byte streams differ: got {len(got)} bytes "
        f"(sha256 {hashlib.sha256(got).hexdigest()[:16]}), expected {len(expected)} "
        f"(sha256 {hashlib.sha256(expected).hexdigest()[:16]}); first difference at "
        f"offset {first}: got {got[first : first + 40]!r}, "
        f"expected {expected[first : first + 40]!r}"
    )


def collect_from_all(socks: list[socket.socket], size: int, timeout: float = 10.0) -> list[bytes]:
    """Read `size` bytes from each socket at once with a selector; return them in order.

    A socket that reaches EOF or the deadline early keeps what it got, so the
    caller's exact-bytes comparison reports it.
    """
    bufs = [bytearray() for _ in socks]
    with selectors.DefaultSelector() as sel:
        for index, sock in enumerate(socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, index)
        waiting = len(socks)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in sel.select(left):
                index = key.data
                sock = socks[index]
                try:
                    chunk = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                bufs[index] += chunk
                if not chunk or len(bufs[index]) >= size:
                    sel.unregister(sock)
                    waiting -= 1
    for sock in socks:
        sock.setblocking(True)
    return [bytes(buf) for buf in bufs]


def start(rat_server: StartServer, backend: str, *flags: str) -> ServerProcess:
    return rat_server("--backend", backend, *flags)


# --------------------------------------------------------------------------- basic relay


def test_no_echo_by_default(rat_server: StartServer, backend: str, clients: Clients) -> None:
    server = start(rat_server, backend)
    a, b = clients.connect_many(server, 2)
    sync_clients(server, [a, b])

    a.sendall(b"hello from a\n")

    assert recv_lines(b, 1) == [b"hello from a\n"]
    assert_silent(a)


def test_echo_sends_to_sender_too(rat_server: StartServer, backend: str, clients: Clients) -> None:
    server = start(rat_server, backend, "--echo")
    a, b = clients.connect_many(server, 2)
    sync_clients(server, [a, b])

    a.sendall(b"first\nsecond\n")

    assert recv_lines(b, 2) == [b"first\n", b"second\n"]
    assert recv_lines(a, 2) == [b"first\n", b"second\n"]
    assert_silent(a)
    assert_silent(b, wait=0.05)


def test_two_hundred_clients_get_one_line_exactly_once(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    socks = clients.connect_many(server, 200)
    sync_clients(server, socks)
    sender, receivers = socks[0], socks[1:]

    # A second, different line right behind the first: a receiver that got the
    # first line twice would read it where the marker should be.
    sender.sendall(b"to everyone\n")
    sender.sendall(b"marker\n")

    expected = b"to everyone\nmarker\n"
    got = collect_from_all(receivers, len(expected))
    assert got == [expected] * len(receivers)
    for sock in receivers[:5]:
        assert_silent(sock, wait=0.05)
    assert_silent(sender)


def test_line_sent_one_byte_at_a_time_arrives_whole_once(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    sender = clients.connect(server, nodelay=True)
    receiver = clients.connect(server)
    sync_clients(server, [sender, receiver])

    line = b"fragmented, one byte per segment\n"
    for byte in line[:-1]:
        sender.sendall(bytes([byte]))
        time.sleep(0.005)
    # Nothing of an unfinished line may be relayed.
    assert_silent(receiver, wait=0.2)
    sender.sendall(b"\n")
    sender.sendall(b"next\n")

    assert recv_lines(receiver, 2) == [line, b"next\n"]
    assert_silent(receiver, wait=0.05)


def test_thousands_of_lines_in_one_send(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    sender, receiver = clients.connect_many(server, 2)
    sync_clients(server, [sender, receiver])

    lines = [b"line %05d of a burst\n" % i for i in range(5000)]
    sender.sendall(b"".join(lines))

    got = recv_lines(receiver, len(lines))
    assert len(got) == len(lines)
    first_bad = next((i for i, (g, e) in enumerate(zip(got, lines, strict=True)) if g != e), None)
    assert first_bad is None, f"line {first_bad}: got {got[first_bad]!r}"
    assert_silent(receiver, wait=0.05)


def test_binary_payloads_relayed_byte_for_byte(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    sender, receiver = clients.connect_many(server, 2)
    sync_clients(server, [sender, receiver])

    lines = [
        b"carriage\rreturn\r\n",
        b"\x00nul\x00bytes\x00\n",
        b"\xff\xfe\xc3\x28\n",  # not UTF-8
        b"\n",  # an empty line is a line
        b"\r\n",
        bytes(b for b in range(256) if b != 0x0A) + b"\n",
        b"\n",
        b"after the empties\n",
    ]
    sender.sendall(b"".join(lines))

    assert recv_lines(receiver, len(lines)) == lines
    assert_silent(receiver, wait=0.05)


def test_empty_line_alone_is_relayed(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    sender, receiver = clients.connect_many(server, 2)
    sync_clients(server, [sender, receiver])

    sender.sendall(b"\n")

    assert recv_exactly(receiver, 1) == b"\n"
    assert_silent(receiver, wait=0.1)


# --------------------------------------------------------------------------- atomicity, order

LINES_PER_SENDER = 600


def numbered_line(sender: int, seq: int) -> bytes:
    """Sender 0 pads with b"a", sender 1 with b"b": any interleaving breaks the pattern."""
    fill = b"ab"[sender : sender + 1] * ((seq * 37 + sender * 11) % 120)
    return b"S%d %05d %s\n" % (sender, seq, fill)


def send_in_random_fragments(sock: socket.socket, sender: int, seed: int) -> None:
    rng = random.Random(seed)
    data = b"".join(numbered_line(sender, seq) for seq in range(LINES_PER_SENDER))
    pos = 0
    while pos < len(data):
        size = rng.randint(1, 64)
        sock.sendall(data[pos : pos + size])
        pos += size
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.002)


def parse_numbered(line: bytes) -> tuple[int, int]:
    m = re.fullmatch(rb"S([01]) (\d{5}) ([ab]*)\n", line)
    assert m is not None, f"not one sender's whole line: {line!r}"
    sender, seq = int(m.group(1)), int(m.group(2))
    assert line == numbered_line(sender, seq), f"mangled line: {line!r}"
    return sender, seq


def parse_order(lines: list[bytes]) -> list[tuple[int, int]]:
    """(sender, seq) of each line; each sender's lines must come in the order sent."""
    order = [parse_numbered(line) for line in lines]
    for sender in {who for who, _ in order}:
        seqs = [seq for who, seq in order if who == sender]
        assert seqs == list(range(LINES_PER_SENDER)), f"sender {sender}'s lines out of order"
    return order


@pytest.mark.parametrize("echo", [False, True], ids=["no-echo", "echo"])
def test_concurrent_fragmenting_senders_lines_stay_atomic_and_ordered(
    rat_server: StartServer, backend: str, clients: Clients, echo: bool
) -> None:
    server = start(rat_server, backend, *(["--echo"] if echo else []))
    senders = [clients.connect(server, nodelay=True) for _ in range(2)]
    receivers = clients.connect_many(server, 3)
    sync_clients(server, senders + receivers)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(send_in_random_fragments, sock, index, 1000 + index)
            for index, sock in enumerate(senders)
        ]
        for future in futures:
            future.result(timeout=30)

    orders = []
    for receiver in receivers:
        orders.append(parse_order(recv_lines(receiver, 2 * LINES_PER_SENDER)))
        assert_silent(receiver, wait=0.05)
    assert orders[1] == orders[0], "receivers disagree on the global order"
    assert orders[2] == orders[0], "receivers disagree on the global order"

    for index, sock in enumerate(senders):
        if echo:
            # The sender's own lines come back in the same global order.
            got = parse_order(recv_lines(sock, 2 * LINES_PER_SENDER))
            assert got == orders[0], f"sender {index} disagrees on the global order"
        else:
            # The other's lines, in order, and none of its own.
            other = 1 - index
            lines = recv_lines(sock, LINES_PER_SENDER)
            assert lines == [numbered_line(other, seq) for seq in range(LINES_PER_SENDER)]
        assert_silent(sock, wait=0.05)


# --------------------------------------------------------------------------- slow reader


def bulk_lines(total: int, seed: int) -> bytes:
    """About `total` bytes of numbered lines with random payload (never a newline)."""
    rng = random.Random(seed)
    parts: list[bytes] = []
    size = 0
    seq = 0
    while size < total:
        payload = rng.randbytes(rng.randint(0, 2000)).replace(b"\n", b"\x00")
        line = b"%08d:%s\n" % (seq, payload)
        parts.append(line)
        size += len(line)
        seq += 1
    return b"".join(parts)


def test_slow_reader_with_tiny_receive_buffer_gets_every_byte_in_order(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    slow = clients.connect(server, rcvbuf=4096)
    sender = clients.connect(server)
    sync_clients(server, [slow, sender])

    # 6 MiB: more than the kernel buffers on both ends hold (Linux caps an
    # autotuned send buffer at tcp_wmem[2], 4 MiB by default, about half of it
    # data), yet under the default --max-pending of 8 MiB even if the kernel
    # held nothing; so the server must queue and send partially, many times.
    data = bulk_lines(6 << 20, seed=7)
    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(sender.sendall, data)
        time.sleep(0.3)  # let the server's queue for `slow` build up
        got = bytearray()
        deadline = time.monotonic() + 30
        reads = 0
        while len(got) < len(data) and time.monotonic() < deadline:
            slow.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = slow.recv(2048)
            if not chunk:
                break
            got += chunk
            reads += 1
            if reads % 64 == 0:
                time.sleep(0.002)
        sending.result(timeout=10)

    assert_same_bytes(bytes(got), data)
    assert_silent(slow, wait=0.05)
    assert server.proc.poll() is None


# --------------------------------------------------------------------------- many clients


@pytest.fixture
def raised_nofile() -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
@pytest.mark.usefixtures("raised_nofile")
def test_thousand_concurrent_clients_each_get_the_broadcast(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {soft} is too low for 1000 clients")
    server = start(rat_server, backend)
    socks = clients.connect_many(server, 1000)
    sender = clients.connect(server)
    sync_clients(server, [*socks, sender])

    line = b"one line for a thousand listeners\n"
    sender.sendall(line)

    got = collect_from_all(socks, len(line))
    missing = [i for i, data in enumerate(got) if data != line]
    assert not missing, f"{len(missing)} clients got the wrong bytes, e.g. {got[missing[0]]!r}"
    assert_silent(sender)


# --------------------------------------------------------------------------- closing


def test_eof_with_partial_line_relays_fragment_with_newline(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    leaver, receiver = clients.connect_many(server, 2)
    sync_clients(server, [leaver, receiver])

    leaver.sendall(b"whole line\ntail without newline")
    assert recv_lines(receiver, 1) == [b"whole line\n"]
    leaver.close()

    assert recv_lines(receiver, 1) == [b"tail without newline\n"]
    assert_silent(receiver, wait=0.1)


def test_lines_sent_just_before_close_are_all_relayed(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    leaver, receiver = clients.connect_many(server, 2)
    sync_clients(server, [leaver, receiver])

    lines = [b"parting line %05d\n" % i for i in range(5000)]
    leaver.sendall(b"".join(lines) + b"and a tail")
    leaver.close()

    assert recv_lines(receiver, len(lines) + 1) == [*lines, b"and a tail\n"]
    assert_silent(receiver, wait=0.1)


def test_eof_without_partial_line_relays_nothing(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    leaver, receiver = clients.connect_many(server, 2)
    sync_clients(server, [leaver, receiver])

    leaver.sendall(b"complete\n")
    leaver.close()

    assert recv_lines(receiver, 1) == [b"complete\n"]
    assert_silent(receiver)


def test_reset_client_does_not_disturb_others(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend, "--log-level", "debug")  # disconnects are debug
    a, b = clients.connect_many(server, 2)
    rude = clients.connect(server, rcvbuf=4096)
    sync_clients(server, [a, b, rude])

    # `rude` never reads, so the server holds queued output for it when it resets.
    burst = bulk_lines(1 << 20, seed=3)
    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(a.sendall, burst)
        assert_same_bytes(recv_exactly(b, len(burst)), burst)
        sending.result(timeout=10)
    rude.sendall(b"dangling partial")
    time.sleep(0.1)
    rude_peer = f"127.0.0.1:{rude.getsockname()[1]}"
    reset(rude)
    # Wait until the server has dealt with the reset, so that the fragment, if
    # relayed at all, comes before the next line.
    server.wait_for_log(log_line_with("disconnect", rude_peer))

    # A partial line on a reset connection may be dropped (SPEC "Stop"), or relayed.
    a.sendall(b"still here\n")
    got = recv_lines_until(b, b"still here\n")
    assert got in ([b"still here\n"], [b"dangling partial\n", b"still here\n"])

    b.sendall(b"reply from b\n")
    got = recv_lines_until(a, b"reply from b\n")
    assert got in ([b"reply from b\n"], [b"dangling partial\n", b"reply from b\n"])

    late = clients.connect(server)
    sync_clients(server, [a, b, late])
    late.sendall(b"from a newcomer\n")
    assert recv_lines(a, 1) == [b"from a newcomer\n"]
    assert recv_lines(b, 1) == [b"from a newcomer\n"]
    assert server.proc.poll() is None


@plain_tcp_only  # a TLS client cannot finish its handshake with a frozen server
def test_client_accepted_right_after_a_reset_is_kept(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    """A reset and a new connection reported in the same poll must not collide.

    The server is frozen (SIGSTOP) while one client resets and another
    connects, so one poll returns both: the reset client's descriptor is
    closed, and accept() hands the very same number to the newcomer.
    """
    server = start(rat_server, backend)
    a = clients.connect(server)
    rude = clients.connect(server)
    sync_clients(server, [a, rude])

    server.proc.send_signal(signal.SIGSTOP)
    try:
        reset(rude)
        newcomer = clients.connect(server)  # completes in the listen backlog
        time.sleep(0.1)
    finally:
        server.proc.send_signal(signal.SIGCONT)

    sync_clients(server, [a, newcomer])
    a.sendall(b"welcome\n")
    assert recv_lines(newcomer, 1) == [b"welcome\n"]


def test_half_closed_client_still_receives(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    half, other, third = clients.connect_many(server, 3)
    sync_clients(server, [half, other, third])

    half.sendall(b"last words")
    half.shutdown(socket.SHUT_WR)
    # EOF on the read side completes the fragment for everyone else...
    assert recv_lines(other, 1) == [b"last words\n"]
    assert recv_lines(third, 1) == [b"last words\n"]

    # ...but the half-closed client keeps receiving.
    other.sendall(b"still listening?\n")
    third.sendall(b"yes\n")
    assert recv_lines(half, 2) == [b"still listening?\n", b"yes\n"]
    assert recv_lines(third, 1) == [b"still listening?\n"]
    assert recv_lines(other, 1) == [b"yes\n"]


def test_half_closed_sender_gets_its_own_fragment_with_echo(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend, "--echo")
    half, other = clients.connect_many(server, 2)
    sync_clients(server, [half, other])

    half.sendall(b"whole\nfragment")
    half.shutdown(socket.SHUT_WR)

    assert recv_lines(other, 2) == [b"whole\n", b"fragment\n"]
    assert recv_lines(half, 2) == [b"whole\n", b"fragment\n"]
    other.sendall(b"and more\n")
    assert recv_lines(half, 1) == [b"and more\n"]
    assert recv_lines(other, 1) == [b"and more\n"]


def test_late_client_gets_no_history(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend)
    a, b = clients.connect_many(server, 2)
    sync_clients(server, [a, b])
    a.sendall(b"before you came\n")
    assert recv_lines(b, 1) == [b"before you came\n"]

    late = clients.connect(server)
    # sync_clients asserts that the first line `late` sees is the probe's.
    sync_clients(server, [a, b, late])
    a.sendall(b"after you came\n")
    assert recv_lines(late, 1) == [b"after you came\n"]
    assert recv_lines(b, 1) == [b"after you came\n"]
    assert_silent(late, wait=0.05)


# --------------------------------------------------------------------------- logging, CLI


def log_line_with(word: str, address: str) -> str:
    """Regex for one stderr line holding `word` (as a word start) and exactly `address`."""
    return rf"(?im)^(?=.*\b{word})(?=.*{re.escape(address)}(?!\d)).*$"


def test_logs_listening_connect_and_disconnect(
    rat_server: StartServer, backend: str, clients: Clients
) -> None:
    server = start(rat_server, backend, "--log-level", "debug")  # per-connection lines
    assert f"listening on 127.0.0.1:{server.port}" in server.stderr

    sock = clients.connect(server)
    other = clients.connect(server)
    peer = f"127.0.0.1:{sock.getsockname()[1]}"
    connected = server.wait_for_log(log_line_with("connect", peer))
    sock.close()

    # A close() reaches the server as a FIN, which a half-close sends too: the
    # server may only know the client is gone once a write to it fails (RST).
    # So keep broadcasting until the disconnect is logged.
    pattern = log_line_with("disconnect", peer)
    deadline = time.monotonic() + 10
    while not re.search(pattern, server.stderr) and time.monotonic() < deadline:
        other.sendall(b"anyone there?\n")
        time.sleep(0.05)
    disconnected = server.wait_for_log(pattern, timeout=0.1)
    assert connected.start() < disconnected.start()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-m", "rat", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
        check=False,
    )


def test_serve_help_lists_options() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--echo", "--backend", "--log-level"):
        assert option in result.stdout, f"{option} missing from --help"


def test_unknown_backend_is_a_usage_error() -> None:
    result = run_cli("serve", "--port", "0", "--backend", "no-such-poller")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
