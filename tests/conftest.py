"""Shared fixtures: rat as a real subprocess, and small socket helpers.

`rat_server(*flags)` starts `python -m rat serve --port 0 *flags`, waits for
the `listening on HOST:PORT` line and returns a `ServerProcess`.  Every server a
test starts is stopped by PID when the test ends.  Parametrising with
`backend` runs a test against both poller backends.

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
        self.listening = ""  # the `listening on ...` line
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
        return sock

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
def rat_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: `rat_server("--echo", preexec=...)` starts a server on an ephemeral port."""
    started: list[ServerProcess] = []

    def start(*flags: str, preexec: Callable[[], None] | None = None) -> ServerProcess:
        server = ServerProcess(["--host", "127.0.0.1", "--port", "0", *flags], preexec)
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
