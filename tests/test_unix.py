"""`--unix PATH`: a Unix-socket listener beside TCP, on the same loop.

The socket file is created mode 0660 and removed at exit; a stale file (its
server died) is replaced; a live one, or a path that is not a socket, is a
bind error: one line, exit 1.  Its clients are plain clients of the same
broadcast, with transport `unix`.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServerProcess, assert_silent, recv_lines, sync_clients
from rat.config import Config
from rat.net import open_listeners
from rat.poller import make_poller
from rat.security import Security
from rat.server import Server
from test_integration import run_cli

StartServer = Callable[..., ServerProcess]


def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def test_unix_and_tcp_clients_share_the_broadcast(rat_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "rat.sock"
    server = rat_server("--unix", str(path))
    assert f", unix {path} (" in server.stderr  # named on the listening line
    tcp = server.connect()
    local = unix_client(path)
    try:
        sync_clients(server, [tcp, local])
        local.sendall(b"from the unix socket\n")
        assert recv_lines(tcp, 1) == [b"from the unix socket\n"]
        tcp.sendall(b"from tcp\n")
        assert recv_lines(local, 1) == [b"from tcp\n"]
        assert_silent(local, wait=0.05)
    finally:
        tcp.close()
        local.close()


def test_socket_file_is_mode_0660_and_removed_at_exit(
    rat_server: StartServer, tmp_path: Path
) -> None:
    path = tmp_path / "rat.sock"
    old_umask = os.umask(0)  # the most permissive umask: the mode must not follow it
    try:
        server = rat_server("--unix", str(path))
    finally:
        os.umask(old_umask)
    mode = os.lstat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert not path.exists()


def test_sighup_stop_also_removes_the_file(rat_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "rat.sock"
    server = rat_server("--unix", str(path))
    server.signal(signal.SIGHUP)  # nothing to reload: a graceful stop
    assert server.wait() == 0
    assert not path.exists()


def test_stale_socket_file_is_replaced(rat_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "rat.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a file nobody listens on, as a crashed server leaves it
    dead.close()
    assert path.exists()
    server = rat_server("--unix", str(path))
    sock = unix_client(path)
    try:
        sync_clients(server, [sock])
    finally:
        sock.close()


def test_live_socket_file_is_a_bind_error(rat_server: StartServer, tmp_path: Path) -> None:
    path = tmp_path / "rat.sock"
    rat_server("--unix", str(path))
    result = run_cli("serve", "--port", "0", "--unix", str(path))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot listen on unix {path}: another server is listening on it" in result.stderr
    assert path.exists()  # the first server's file is left alone


def test_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("do not delete me\n")
    result = run_cli("serve", "--port", "0", "--unix", str(path))
    assert result.returncode == 1
    assert "exists and is not a socket" in result.stderr
    assert "Traceback" not in result.stderr
    assert path.read_text() == "do not delete me\n"


def test_directory_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "rat.sock"
    result = run_cli("serve", "--port", "0", "--unix", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "No such file or directory" in result.stderr


def test_unix_clients_have_transport_unix(tmp_path: Path) -> None:
    path = tmp_path / "rat.sock"
    config = Config(unix=str(path))
    security = Security.load(config)
    security.open_unix(0)
    server = Server(open_listeners("127.0.0.1", 0), make_poller("auto"), config)
    security.install(server, [])
    host, port = server.addresses[0].rsplit(":", 1)
    clients = [unix_client(path), socket.create_connection((host, int(port)))]
    try:
        for _ in range(10):
            server.loop.run_once(0.01)
        assert sorted(conn.transport for conn in server.connections()) == ["tcp", "unix"]
        assert server.addresses[1] == f"unix {path}"
    finally:
        for sock in clients:
            sock.close()
        server.close()
        security.close()
    assert not path.exists()


@pytest.mark.parametrize("rules", [["--deny", "0.0.0.0/0", "--deny", "::/0"]])
def test_address_rules_do_not_apply_to_unix_clients(
    rat_server: StartServer, tmp_path: Path, rules: list[str]
) -> None:
    path = tmp_path / "rat.sock"
    rat_server("--unix", str(path), *rules)
    b = unix_client(path)
    a = unix_client(path)  # accepted after b: by the time its line is read, b is in
    try:
        a.sendall(b"__sync__\n")
        assert recv_lines(b, 1) == [b"__sync__\n"]
    finally:
        a.close()
        b.close()
