"""Helpers for the scale-out tests: a real redis-server, and which worker holds a client.

`RedisServer` starts `redis-server` on a free loopback port with no
persistence (`--save '' --appendonly no`), waits until it answers PING, and
is stopped by PID; `restart()` brings it back on the same port.  Tests that
need it are skipped when redis-server is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ServerProcess

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child on 127.0.0.1:`port`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL (a crash: no goodbye to the clients but the kernel's reset/FIN)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    yield server
    server.stop()


def wait_connected(node: ServerProcess, count: int = 1) -> None:
    """Wait until `node` logged its `count`-th link-up line (connected / back on)."""
    deadline = time.monotonic() + 15
    pattern = ("cluster: connected to", "cluster: back on")
    while time.monotonic() < deadline:
        if sum(node.stderr.count(p) for p in pattern) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no cluster link-up line #{count} in:\n{node.stderr}")


def server_side_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server's socket for the client at 127.0.0.1:`client_port`."""
    want_local = f"0100007F:{server_port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == want_local and fields[2] == want_remote:
            return int(fields[9])
    return None


def owner_of(sock: socket.socket, server_port: int, pids: list[int], timeout: float = 5.0) -> int:
    """Which of `pids` holds the accepted end of `sock` (a client of `server_port`)."""
    client_port = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inode = server_side_inode(server_port, client_port)
        if inode is not None:
            target = f"socket:[{inode}]"
            for pid in pids:
                try:
                    fds = os.listdir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                for fd in fds:
                    try:
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                            return pid
                    except OSError:
                        continue
        time.sleep(0.02)
    raise AssertionError(f"no process of {pids} holds the server end of port {client_port}")
