"""TLS end to end: rat with `--tls-cert/--tls-key`, real clients, real sockets.

Clients are Python's `ssl` (the standard `SSLSocket`, and tests/transport.py's
`TLSSocket`) and, where it is installed, `openssl s_client`, in one broadcast
with plain clients on a Unix-socket listener.  Then what must not cost
anything: a client that stalls mid-handshake (closed after 10 s, no CPU
meanwhile), garbage or plain text on the TLS port (closed quietly), bad
certificate files (one line, exit 1), and SIGHUP loading a new certificate
for new connections while old ones keep theirs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import ServerProcess, assert_silent, read_until_eof, recv_lines
from test_integration import run_cli
from transport import TLSMaterial

pytestmark = pytest.mark.timeout(60)

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def unix_path(tmp_path: Path) -> str:
    return str(tmp_path / "rat.sock")


@pytest.fixture
def tls_server(
    rat_server: StartServer, tls_material: TLSMaterial, unix_path: str
) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: rat with TLS on TCP and a plain Unix-socket listener at `unix_path`."""

    def start(*flags: str) -> ServerProcess:
        return rat_server(*tls_material.flags, "--unix", unix_path, *flags)

    yield start


def tls_client(server: ServerProcess, material: TLSMaterial) -> ssl.SSLSocket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    return material.client_context.wrap_socket(sock, server_hostname="localhost")


def unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def sync_all(sender: socket.socket, others: list[socket.socket]) -> None:
    """`sender` says one line until every other client got it: all have joined."""
    sender.sendall(b"__sync__\n")
    for sock in others:
        assert recv_lines(sock, 1) == [b"__sync__\n"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- one broadcast


def test_tls_and_unix_clients_share_one_broadcast(
    tls_server: StartServer, tls_material: TLSMaterial, unix_path: str
) -> None:
    server = tls_server("--echo")
    a = tls_client(server, tls_material)
    b = tls_material.wrap(socket.create_connection((server.host, server.port), timeout=10))
    u = unix_client(unix_path)
    try:
        assert a.version() in ("TLSv1.2", "TLSv1.3")
        sync_all(u, [a, b, u])
        a.sendall(b"from tls\n")
        u.sendall(b"from unix\n")
        for sock in (a, b, u):
            got = recv_lines(sock, 2)
            assert sorted(got) == [b"from tls\n", b"from unix\n"]
        big = b"x" * 60_000 + b"\n"  # spans several TLS records (under --max-line)
        b.sendall(big)
        for sock in (a, b, u):
            assert recv_lines(sock, 1) == [big]
    finally:
        for sock in (a, b, u):
            sock.close()
    assert re.search(r"listening on 127\.0\.0\.1:\d+, unix \S+ \(.*\bTLS\b", server.stderr)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_joins_the_broadcast(
    tls_server: StartServer, tls_material: TLSMaterial, unix_path: str, tmp_path: Path
) -> None:
    server = tls_server()
    ca = tmp_path / "ca.pem"
    tls_material.ca.cert_pem.write_to_path(str(ca))
    u = unix_client(unix_path)
    proc = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-CAfile",
            str(ca),
            "-verify_return_error",
            "-quiet",  # no session dump; ignore stdin EOF
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        # s_client has joined once a line from it reaches the Unix client.
        deadline = time.monotonic() + 15
        got: list[bytes] = []
        while time.monotonic() < deadline and not got:
            proc.stdin.write(b"hello from openssl\n")
            proc.stdin.flush()
            try:
                got = recv_lines(u, 1, timeout=0.5)
            except AssertionError:
                continue
        assert got == [b"hello from openssl\n"]
        u.sendall(b"hello back\n")
        line = proc.stdout.readline()
        while line == b"hello from openssl\n":  # our own retries do not echo; be safe
            line = proc.stdout.readline()
        assert line == b"hello back\n"
    finally:
        proc.kill()
        proc.wait()
        u.close()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


# --------------------------------------------------------------------------- misbehaving clients


def partial_client_hello(material: TLSMaterial) -> bytes:
    """The first half of a real ClientHello."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = material.client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


@pytest.mark.slow
def test_client_stalled_mid_handshake_is_closed_after_10s_and_costs_no_cpu(
    tls_server: StartServer, tls_material: TLSMaterial
) -> None:
    server = tls_server("--log-level", "debug")
    stalled = [socket.create_connection((server.host, server.port), timeout=20) for _ in range(20)]
    try:
        for sock in stalled:
            sock.sendall(partial_client_hello(tls_material))
        time.sleep(0.5)
        before = cpu_seconds(server.proc.pid)
        started = time.monotonic()
        results = [read_until_eof(sock, timeout=20) for sock in stalled]
        waited = time.monotonic() - started
        used = cpu_seconds(server.proc.pid) - before
    finally:
        for sock in stalled:
            sock.close()
    assert results == [b""] * len(stalled)
    assert 8.5 <= waited + 0.5 <= 15, f"closed after {waited + 0.5:.1f}s, not ~10s"
    # Twenty idle handshakes for ten seconds: a timer each, no polling.  A
    # busy loop would burn the whole interval; allow a generous tenth of it.
    assert used < 1.0, f"server used {used:.2f}s of CPU while the clients stalled"
    # The last EOF can reach us before the server's log line reaches the reader
    # of its stderr: give the lines a moment to arrive, then count them.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len(re.findall(r"tls handshake timed out", server.stderr)) >= len(stalled):
            break
        time.sleep(0.05)
    assert len(re.findall(r"tls handshake timed out", server.stderr)) == len(stalled)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff",
        bytes(range(256)) * 4,
        b"hello, plain text on a TLS port\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ],
    ids=["bad-hello", "binary", "plain-text", "http"],
)
def test_not_tls_is_closed_quietly(
    tls_server: StartServer, tls_material: TLSMaterial, garbage: bytes
) -> None:
    server = tls_server("--log-level", "debug")
    member = tls_material.wrap(socket.create_connection((server.host, server.port), timeout=10))
    bad = socket.create_connection((server.host, server.port), timeout=10)
    try:
        sync_all(member, [])
        bad.sendall(garbage)
        answer = read_until_eof(bad)
        assert answer == b"" or answer.startswith(b"\x15\x03")  # at most a TLS alert
        member.sendall(b"still fine\n")
        assert_silent(member, wait=0.05)  # no echo: the server is alive and quiet
        other = tls_material.wrap(socket.create_connection((server.host, server.port)))
        sync_all(member, [other])
        other.close()
    finally:
        member.close()
        bad.close()
    server.wait_for_log(r"disconnect \S+: tls handshake")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert len(re.findall(r"tls handshake", server.stderr)) == 1, server.stderr
    assert "Traceback" not in server.stderr
    assert re.search(r"closed=\[.*tls_handshake=1", server.stderr), server.stderr


# --------------------------------------------------------------------------- certificates


def fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_sighup_loads_a_new_certificate_for_new_connections(
    rat_server: StartServer, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"

    def issue() -> None:
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))

    issue()
    server = rat_server("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection((server.host, server.port), timeout=10)
        return context.wrap_socket(sock, server_hostname="localhost")

    old = connect()
    first = fingerprint(old)
    issue()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"TLS certificate reloaded")
    new = connect()
    try:
        assert fingerprint(new) != first
        sync_all(new, [old])  # the old connection is still up, on its old session
        old.sendall(b"old session still works\n")
        assert recv_lines(new, 1) == [b"old session still works\n"]
        cert_path.write_text("not a certificate any more\n")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"TLS reload failed, keeping the old certificate: .*cert\.pem")
        third = connect()
        assert fingerprint(third) == fingerprint(new)
        third.close()
    finally:
        old.close()
        new.close()
    assert server.proc.poll() is None  # SIGHUP reloaded; it did not stop


@pytest.mark.parametrize("which", ["cert", "key"])
def test_bad_certificate_or_key_file_is_one_line_and_exit_1(
    tls_material: TLSMaterial, tmp_path: Path, which: str
) -> None:
    bad = tmp_path / f"bad-{which}.pem"
    bad.write_text("garbage\n")
    cert = str(bad) if which == "cert" else tls_material.cert
    key = str(bad) if which == "key" else tls_material.key
    result = run_cli("serve", "--port", "0", "--tls-cert", cert, "--tls-key", key)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"bad-{which}.pem" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_certificate_file_is_named(tls_material: TLSMaterial, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    result = run_cli("serve", "--port", "0", "--tls-cert", missing, "--tls-key", tls_material.key)
    assert result.returncode == 1
    assert re.fullmatch(
        r"rat: TLS: cannot read .*missing\.pem: No such file or directory\n", result.stderr
    ), result.stderr


def test_cert_without_key_is_a_usage_error(tls_material: TLSMaterial) -> None:
    result = run_cli("serve", "--port", "0", "--tls-cert", tls_material.cert)
    assert result.returncode == 2
    assert "--tls-cert needs --tls-key" in result.stderr


def test_client_beyond_max_clients_is_closed_without_a_clear_text_line(
    rat_server: StartServer, tls_material: TLSMaterial
) -> None:
    server = rat_server(*tls_material.flags, "--max-clients", "1")
    first = tls_material.wrap(socket.create_connection((server.host, server.port), timeout=10))
    second = socket.create_connection((server.host, server.port), timeout=10)
    try:
        server.wait_for_log(r"refused \S+: server full")
        assert read_until_eof(second) == b""  # no 'ERR server full' in the clear on a TLS port
    finally:
        first.close()
        second.close()
