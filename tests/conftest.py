"""Shared fixtures: rat as a real subprocess, and small socket helpers.

`rat_server(*flags)` starts `python -m rat serve --port 0 *flags`, waits for
the `listening on HOST:PORT` line and returns a `ServerProcess`.  Every server a
test starts is stopped by PID when the test ends.  Parametrising with
`backend` runs a test against both poller backends; overriding `transport`
(as tests/test_integration.py does) runs it over TLS as well: the server gets
`--tls-cert/--tls-key` and every `server.connect()` speaks TLS
(tests/transport.py).
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

SRC = Path(__file__).resolve().parent.parent / "src"
LISTENING = re.compile(rb"listening on (\S+):(\d+)")


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

    def __init__(self, args: list[str], preexec: Callable[[], None] | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rat", "serve", *args],
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
        # Wraps each client socket for the transport (TLS), or None for plain TCP.
        self.wrap: Callable[[socket.socket], socket.socket] | None = None
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self._lines.append(line)
            m = LISTENING.search(line)
            if m:
                self.host, self.port = m.group(1).decode(), int(m.group(2))
                break
        if not self.port:
            self.proc.kill()
            rest = self.proc.stderr.read()
            raise RuntimeError(f"rat did not start: {b''.join(self._lines) + rest!r}")
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

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
    """Factory: `rat_server("--echo", preexec=...)` starts a server on an ephemeral port."""
    started: list[ServerProcess] = []
    tls: TLSMaterial | None = None
    if transport == "tls":
        tls = request.getfixturevalue("tls_material")

    def start(*flags: str, preexec: Callable[[], None] | None = None) -> ServerProcess:
        extra = tls.flags if tls is not None else []
        server = ServerProcess(["--host", "127.0.0.1", "--port", "0", *extra, *flags], preexec)
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


def read_to_eof(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything `sock` receives until the server closes it (EOF or a reset)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    return got
