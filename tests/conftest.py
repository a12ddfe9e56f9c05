"""Shared fixtures: rat as a real subprocess, and small socket helpers.

`rat_server(*flags)` starts `python -m rat serve --port 0 *flags`, waits for
the `listening on HOST:PORT` line and returns a `ServerProcess`.  Every server a
test starts is stopped by PID when the test ends.  Parametrising with
`backend` runs a test against both poller backends; overriding `transport`
(as tests/test_integration.py does) runs it over TLS as well: the server gets
`--tls-cert/--tls-key` and every `server.connect()` speaks TLS
(tests/transport.py).

The subprocesses run the sources in this checkout's `src/`.  To run the same
subprocess tests against another checkout (to show that a test fails on the
code before a fix), point `TESTS_RAT_SRC` at that checkout's `src` directory:

    git -C . archive 95f8c48 | tar -x -C /tmp/old-rat
    TESTS_RAT_SRC=/tmp/old-rat/src .venv/bin/pytest tests/test_fixes.py
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from transport import TLSMaterial

SRC = Path(os.environ.get("TESTS_RAT_SRC") or Path(__file__).resolve().parent.parent / "src")
LISTENING = re.compile(rb"listening on (\S+):(\d+)")
STARTUP_TIMEOUT = 15.0  # seconds for `rat serve` to print its `listening on` line


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child we started: SIGTERM, then SIGKILL if it lingers past 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """A running `rat serve` child process and what it wrote to stderr."""

    def __init__(
        self,
        args: list[str],
        preexec: Callable[[], None] | None = None,
        *,
        launcher: tuple[str, ...] = ("-m", "rat"),
        env: dict[str, str] | None = None,
    ) -> None:
        """Run `python LAUNCHER serve ARGS`; `launcher` may be ("-c", script) instead."""
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            # Only used to lower RLIMIT_NOFILE in the child; it calls no locks.
            preexec_fn=preexec,  # noqa: PLW1509
        )
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self.host = "127.0.0.1"
        self.port = 0
        self.listening = ""  # the `listening on ...` line
        # Wraps each client socket for the transport (TLS), or None for plain TCP.
        self.wrap: Callable[[socket.socket], socket.socket] | None = None
        # stderr is read by a thread from the start, so that a server that never
        # prints the listening line (or wedges) fails the test after the
        # timeout instead of blocking this process in readline() forever.
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            with self._lock:
                found = next((line for line in self._lines if LISTENING.search(line)), None)
            if found is not None:
                m = LISTENING.search(found)
                assert m is not None
                # `[::1]` in the log is `::1` to connect().
                self.host = m.group(1).decode().strip("[]")
                self.port = int(m.group(2))
                self.listening = found.decode(errors="replace").strip()
                break
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        if not self.port:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            raise RuntimeError(f"rat did not start: {self.stderr!r}")

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self._lines.append(line)

    @property
    def stderr(self) -> str:
        with self._lock:
            return b"".join(self._lines).decode(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a stderr line matches `pattern` (a regex); return the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stderr)
            if m:
                return m
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.stderr}")

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return self.wrap(sock) if self.wrap is not None else sock

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        terminate(self.proc)
        self._reader.join(5)
        # Close our end of the stderr pipe, or its garbage collection raises a
        # ResourceWarning that `filterwarnings = error` turns into a test error.
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


@pytest.fixture(params=["epoll", "select"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run the test once per poller backend."""
    return str(request.param)


@pytest.fixture
def transport() -> str:
    """How clients reach the server: "plain" TCP here; a test module may add "tls"."""
    return "plain"


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    """A test CA and a server certificate (made once per test session)."""
    return TLSMaterial(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def rat_server(
    transport: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `rat_server("--echo", preexec=...)` starts a server on an ephemeral port.

    A later `--host` in `flags` overrides the default 127.0.0.1; `env` replaces
    the environment (RAT_* variables); `launcher` replaces `-m rat`.
    """
    started: list[ServerProcess] = []
    tls: TLSMaterial | None = None
    if transport == "tls":
        tls = request.getfixturevalue("tls_material")

    def start(
        *flags: str,
        preexec: Callable[[], None] | None = None,
        launcher: tuple[str, ...] = ("-m", "rat"),
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        extra = tls.flags if tls is not None else []
        args = ["--host", "127.0.0.1", "--port", "0", *extra, *flags]
        server = ServerProcess(args, preexec, launcher=launcher, env=env)
        if tls is not None:
            server.wrap = tls.wrap
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# Bytes read past the lines a caller asked for, kept for its next call.
_leftover: weakref.WeakKeyDictionary[socket.socket, bytearray] = weakref.WeakKeyDictionary()


def recv_lines(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """Read from `sock` until `count` complete lines arrived; return them (with b"\\n").

    Whatever arrives beyond those lines is kept and returned by the next call
    on the same socket, so nothing read is ever silently dropped.
    """
    buf = _leftover.setdefault(sock, bytearray())
    lines: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        while len(lines) < count:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            lines.append(bytes(buf[: nl + 1]))
            del buf[: nl + 1]
        if len(lines) == count:
            return lines
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(lines)} of {count} lines before timeout")
        sock.settimeout(left)
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AssertionError(f"EOF after {len(lines)} of {count} lines")
        buf += chunk


def assert_silent(sock: socket.socket, wait: float = 0.3) -> None:
    """Assert nothing arrives on `sock` within `wait` seconds."""
    assert not _leftover.get(sock), f"unexpected data: {_leftover.get(sock)!r}"
    ready, _, _ = select.select([sock], [], [], wait)
    if ready:
        sock.settimeout(0.1)
        data = sock.recv(1 << 16)
        raise AssertionError(f"unexpected data: {data[:200]!r}")


def sync_clients(server: ServerProcess, clients: list[socket.socket]) -> None:
    """Make sure every client is registered with the server before a test broadcasts.

    A connect() returns once the kernel completed the handshake, possibly before
    rat accepted it.  A fresh probe client sends one line and waits until every
    client in `clients` received it, which proves all of them were accepted.
    """
    probe = server.connect()
    try:
        probe.sendall(b"__sync__\n")
        for sock in clients:
            assert recv_lines(sock, 1) == [b"__sync__\n"]
    finally:
        # Also on failure: an unclosed socket's ResourceWarning would bury it.
        probe.close()


# ------------------------------------------------- clients for the limit and fix tests

LINE_SIZE = 1024
BATCH_LINES = 64
FLOOD_BYTES = 8 * 1024 * 1024
BIG_PENDING = str(64 * 1024 * 1024)  # keeps --max-pending out of the way
ERR_TOO_LONG = b"ERR line too long\n"
ERR_SLOW = b"ERR slow consumer\n"
ERR_FULL = b"ERR server full\n"


# Client sockets opened by `connect`, closed when the test ends (see `_close_sockets`).
opened_sockets: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    """Close every client socket a test opened (unclosed sockets are warnings, i.e. errors)."""
    yield
    while opened_sockets:
        opened_sockets.pop().close()


def connect(server: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
    """Connect to `server`; a small `rcvbuf` is set before connect() so the window stays small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened_sockets.append(sock)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    return sock


def read_until_eof(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Read everything until EOF (or a reset, which also ends the stream); return it."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF within {timeout}s; got {len(data)} bytes")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def make_lines(start: int, count: int, size: int = LINE_SIZE) -> list[bytes]:
    """`count` numbered lines of `size` bytes each, newline included."""
    return [b"%08d:" % i + b"x" * (size - 10) + b"\n" for i in range(start, start + count)]


def flood(
    sender: socket.socket,
    readers: list[socket.socket],
    total: int,
    stop: Callable[[], bool] | None = None,
) -> bytes:
    """Send about `total` bytes of lines in lock step with `readers`; return what was sent.

    Each batch is read in full by every reader before the next is sent, so a
    reader never has more than one batch queued in the server.  Stops early when
    `stop()` turns true (checked after each batch).
    """
    sent = bytearray()
    seq = 0
    while len(sent) < total:
        batch = make_lines(seq, BATCH_LINES)
        seq += BATCH_LINES
        sender.sendall(b"".join(batch))
        sent += b"".join(batch)
        for reader in readers:
            assert recv_lines(reader, BATCH_LINES) == batch
        if stop is not None and stop():
            break
    return bytes(sent)


class Drain(threading.Thread):
    """Read a socket as fast as possible until EOF or reset; keep (or count) the bytes."""

    def __init__(self, sock: socket.socket, keep: bool = True) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.keep = keep
        self.data = bytearray()
        self.count = 0
        self.ended = threading.Event()

    def run(self) -> None:
        buf = bytearray(1 << 20)
        self.sock.settimeout(60)
        try:
            while n := self.sock.recv_into(buf):
                self.count += n
                if self.keep:
                    self.data += buf[:n]
        except OSError:
            pass
        self.ended.set()


class Flooder(threading.Thread):
    """Send whole lines until stopped: flat out, or one 64 KiB batch per `pause` seconds."""

    def __init__(self, sock: socket.socket, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.pause = pause
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        batch = b"".join(make_lines(0, BATCH_LINES))
        try:
            while not self.stop.is_set():
                self.sock.sendall(batch)
                self.sent += len(batch)
                if self.pause:
                    time.sleep(self.pause)
        except OSError:
            pass

    def finish(self) -> None:
        """Stop sending; a sendall blocked on a server that stopped reading is cut short."""
        self.stop.set()
        self.join(0.5)
        if self.is_alive():
            self.sock.shutdown(socket.SHUT_WR)
            self.join(10)


def addr(sock: socket.socket) -> str:
    """The client's address as the server sees and logs it."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def log_pattern(sock: socket.socket, reason: str) -> str:
    """Regex for one log line naming both the client's address and `reason`."""
    a = re.escape(addr(sock))
    r = re.escape(reason)
    return rf"{a}(?!\d)[^\n]*{r}|{r}[^\n]*{a}(?!\d)"


def assert_prefix_of(received: bytes, sent: bytes, err: bytes) -> None:
    """`received` is a prefix of `sent`, optionally followed by the `err` line."""
    body = received[: -len(err)] if received.endswith(err) else received
    assert sent.startswith(body), f"stream diverged after {len(body)} bytes"
    assert len(body) < len(sent), "the dropped client received everything"


def assert_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in server.stderr, server.stderr


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid`, in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_fds_freed(pid: int, baseline: int, a: socket.socket, b: socket.socket) -> None:
    """Wait (10 s at most) until server `pid` is back to about `baseline` descriptors.

    Departed clients look half-closed (a FIN), and each is noticed when a
    broadcast to it meets a reset: so `a` keeps sending and `b` reading.
    """
    deadline = time.monotonic() + 10
    while open_fds(pid) > baseline + 3:
        assert time.monotonic() < deadline, f"{open_fds(pid)} fds still open (baseline {baseline})"
        a.sendall(b"nudge\n")
        assert recv_lines(b, 1) == [b"nudge\n"]
        time.sleep(0.05)


def run_rat(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m rat serve ARGS` to completion (for start failures)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "rat", "serve", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
