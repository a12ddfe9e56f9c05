"""Tokens (`--token-file`): the file, the check, and the gate in front of the broadcast.

Pure parts first (the file format, the constant-time check, the AUTH line).
Then the gate in-process, on a real loopback socket, with the loop's clock
replaced so that the 5-second deadline can pass without waiting for it.
Then rat as a subprocess: right, wrong and missing tokens, a token sent one
byte at a time, a client that is not yet through receiving nothing, TLS with
tokens, and SIGHUP re-reading the file.
"""

from __future__ import annotations

import hmac
import re
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

import rat.auth
from conftest import ServerProcess, assert_silent, read_until_eof, recv_lines
from rat.auth import AUTH_TIMEOUT, TokenFileError, TokenGate, Tokens, parse_auth, read_tokens
from rat.config import Config
from rat.net import open_listeners
from rat.poller import make_poller
from rat.security import Security
from rat.server import Server
from test_integration import run_cli

StartServer = Callable[..., ServerProcess]

# --------------------------------------------------------------------------- the file


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_tokens_one_per_line_without_blanks_comments_or_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path / "t", "# staff\nalpha\n\n  beta  \r\n#gamma\ndelta\r\n")
    assert read_tokens(path) == [b"alpha", b"beta", b"delta"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "   \n#x\n"])
def test_a_file_without_tokens_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(TokenFileError, match="holds no tokens"):
        read_tokens(write(tmp_path / "t", text))


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"cannot read token file .*missing: No such file"):
        read_tokens(str(tmp_path / "missing"))


tokens_strategy = st.lists(
    st.binary(min_size=1, max_size=40).filter(
        lambda t: t.strip() == t and b"\n" not in t and not t.startswith(b"#")
    ),
    min_size=1,
    max_size=6,
)


@given(tokens=tokens_strategy, candidate=st.binary(max_size=40))
def test_check_accepts_exactly_the_tokens(tokens: list[bytes], candidate: bytes) -> None:
    checker = Tokens.__new__(Tokens)
    checker._digests = [rat.auth._digest(t) for t in tokens]
    for token in tokens:
        assert checker.check(token)
    assert checker.check(candidate) == (candidate in tokens)


def test_check_compares_with_every_token_even_after_a_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No early exit: the time taken must not say which token matched."""
    tokens = Tokens(write(tmp_path / "t", "first\nsecond\nthird\n"))
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert tokens.check(b"first")
    assert len(calls) == 3
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: lengths leak nothing
    calls.clear()
    assert not tokens.check(b"x" * 1000)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("line", "token"),
    [
        (b"AUTH s3cret\n", b"s3cret"),
        (b"AUTH s3cret\r\n", b"s3cret"),
        (b"auth s3cret\n", b"s3cret"),
        (b"AUTH  spaced  \n", b"spaced"),
        (b"AUTH\n", None),
        (b"AUTH \n", None),
        (b"hello\n", None),
        (b"AUTHs3cret\n", None),
        (b"\n", None),
    ],
)
def test_parse_auth(line: bytes, token: bytes | None) -> None:
    assert parse_auth(line) == token


def test_reload_keeps_the_old_tokens_when_the_new_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "t"
    tokens = Tokens(write(path, "old\n"))
    write(path, "new\n")
    assert tokens.reload()
    assert tokens.check(b"new")
    assert not tokens.check(b"old")
    write(path, "# emptied by mistake\n")
    assert not tokens.reload()
    assert tokens.check(b"new")


# --------------------------------------------------------------------------- in-process


class FakeClock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class Gated:
    """A Server with a TokenGate on a loopback listener, driven from the test thread."""

    def __init__(self, token_path: str) -> None:
        listeners = open_listeners("127.0.0.1", 0)
        self.port = listeners[0].getsockname()[1]
        self.server = Server(listeners, make_poller("auto"))
        self.clock = FakeClock()
        self.server.loop.clock = self.clock
        self.gate = TokenGate(Tokens(token_path))
        self.gate.install(self.server)
        self.socks: list[socket.socket] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.setblocking(False)
        self.socks.append(sock)
        self.turns(3)
        return sock

    def turns(self, count: int = 5) -> None:
        for _ in range(count):
            self.server.loop.run_once(0.01)

    def read(self, sock: socket.socket) -> bytes:
        """What arrived on `sock` (b"<EOF>" appended at EOF)."""
        got = b""
        for _ in range(50):
            self.turns(1)
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                if got:
                    break
                continue
            except ConnectionResetError:
                return got + b"<EOF>"
            if not chunk:
                return got + b"<EOF>"
            got += chunk
        return got

    def until(self, condition: Callable[[], bool], turns: int = 300) -> None:
        for _ in range(turns):
            if condition():
                return
            self.turns(1)
        raise AssertionError("condition not reached")

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.server.close()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Gated]:
    harness = Gated(write(tmp_path / "tokens", "right\n"))
    yield harness
    harness.close()


def test_no_auth_line_within_the_deadline_is_refused(gated: Gated) -> None:
    sock = gated.connect()
    gated.clock.offset += AUTH_TIMEOUT - 0.5
    gated.turns()
    assert sock in gated.socks and gated.server.clients == 1  # still waiting
    gated.clock.offset += 1.0
    assert gated.read(sock) == b"ERR auth failed\n<EOF>"
    gated.until(lambda: gated.server.clients == 0)
    assert gated.server.counters.closed == {"auth": 1}
    assert gated.gate.failed == 1


def test_a_partial_auth_line_at_the_deadline_is_refused(gated: Gated) -> None:
    sock = gated.connect()
    sock.send(b"AUTH rig")
    gated.turns()
    gated.clock.offset += AUTH_TIMEOUT + 0.1
    assert gated.read(sock) == b"ERR auth failed\n<EOF>"


def test_the_right_token_in_time_cancels_the_deadline(gated: Gated) -> None:
    sock = gated.connect()
    other = gated.connect()
    sock.send(b"AUTH right\n")
    assert gated.read(sock) == b"* ok\n"
    other.send(b"AUTH right\nhello\n")
    assert gated.read(other) == b"* ok\n"
    assert gated.read(sock) == b"hello\n"  # sent behind the AUTH line: relayed
    gated.clock.offset += 2 * AUTH_TIMEOUT
    gated.turns()
    assert gated.server.clients == 2
    assert not gated.gate.waiting


def test_waiting_client_is_no_member_and_gets_no_broadcast(gated: Gated) -> None:
    member = gated.connect()
    member.send(b"AUTH right\n")
    assert gated.read(member) == b"* ok\n"
    waiting = gated.connect()
    assert len(gated.server.hub.lobby) == 1
    member.send(b"not for the waiting one\n")
    gated.turns()
    assert gated.read(waiting) == b""
    waiting.send(b"AUTH right\n")
    assert gated.read(waiting) == b"* ok\n"
    assert len(gated.server.hub.lobby) == 2


def test_a_client_that_resets_while_waiting_is_forgotten(gated: Gated) -> None:
    sock = gated.connect()
    gated.socks.remove(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    gated.turns()
    gated.clock.offset += AUTH_TIMEOUT + 0.1
    gated.turns()
    assert not gated.gate.waiting
    assert gated.gate.failed == 0
    assert gated.server.clients == 0


# --------------------------------------------------------------------------- rat


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# who may talk\ns3cret-one\ns3cret-two\n")
    return path


def authed(server: ServerProcess, token: bytes = b"s3cret-one") -> socket.socket:
    sock = server.connect()
    sock.sendall(b"AUTH " + token + b"\n")
    assert recv_lines(sock, 1) == [b"* ok\n"]
    return sock


def sync(server: ServerProcess, members: list[socket.socket], token: bytes = b"s3cret-one") -> None:
    """Like conftest.sync_clients, through the gate."""
    probe = authed(server, token)
    try:
        probe.sendall(b"__sync__\n")
        for sock in members:
            assert recv_lines(sock, 1) == [b"__sync__\n"]
    finally:
        probe.close()


def test_right_token_gets_ok_and_joins(rat_server: StartServer, token_file: Path) -> None:
    server = rat_server("--token-file", str(token_file))
    a = authed(server, b"s3cret-one")
    b = authed(server, b"s3cret-two")
    try:
        sync(server, [a, b])
        a.sendall(b"hello\n")
        assert recv_lines(b, 1) == [b"hello\n"]
        assert_silent(a)
    finally:
        a.close()
        b.close()
    assert "AUTH required (2 tokens)" in server.stderr


@pytest.mark.parametrize(
    "first",
    [b"AUTH wrong\n", b"hello everyone\n", b"AUTH\n", b"AUTH s3cret-one-and-more\n"],
    ids=["wrong", "missing", "empty", "longer"],
)
def test_wrong_or_missing_token_gets_err_and_close_and_nothing_is_relayed(
    rat_server: StartServer, token_file: Path, first: bytes
) -> None:
    server = rat_server("--token-file", str(token_file), "--log-level", "debug")
    member = authed(server)
    try:
        sync(server, [member])
        intruder = server.connect()
        intruder.sendall(first + b"and a line behind it\n")
        assert read_until_eof(intruder) == b"ERR auth failed\n"
        intruder.close()
        assert_silent(member)
    finally:
        member.close()
    server.wait_for_log(r"disconnect \S+: auth failed")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert re.search(r"closed=\[.*auth=1", server.stderr), server.stderr
    assert "Traceback" not in server.stderr


def test_token_sent_one_byte_at_a_time(rat_server: StartServer, token_file: Path) -> None:
    server = rat_server("--token-file", str(token_file))
    member = authed(server)
    slow = server.connect()
    slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for byte in b"AUTH s3cret-two\n":
            slow.sendall(bytes([byte]))
            time.sleep(0.005)
        assert recv_lines(slow, 1) == [b"* ok\n"]
        sync(server, [member, slow])
        slow.sendall(b"made it\n")
        assert recv_lines(member, 1) == [b"made it\n"]
    finally:
        member.close()
        slow.close()


def test_no_broadcast_reaches_a_client_before_it_is_through(
    rat_server: StartServer, token_file: Path
) -> None:
    server = rat_server("--token-file", str(token_file))
    member = authed(server)
    waiting = server.connect()
    try:
        sync(server, [member])
        member.sendall(b"secret chatter\n")
        sync(server, [member])  # the line has been delivered by now
        assert_silent(waiting, wait=0.2)
        waiting.sendall(b"AUTH s3cret-one\n")
        assert recv_lines(waiting, 1) == [b"* ok\n"]
        assert_silent(waiting, wait=0.1)  # no history either
    finally:
        member.close()
        waiting.close()


def test_sighup_rereads_the_token_file(rat_server: StartServer, token_file: Path) -> None:
    server = rat_server("--token-file", str(token_file))
    kept = authed(server)
    try:
        token_file.write_text("fresh-token\n")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"tokens reloaded from .* \(1 token\)")
        old = server.connect()
        old.sendall(b"AUTH s3cret-one\n")
        assert read_until_eof(old) == b"ERR auth failed\n"
        old.close()
        fresh = authed(server, b"fresh-token")
        token_file.write_text("")
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"token reload failed, keeping the old 1 token: .*holds no tokens")
        again = authed(server, b"fresh-token")
        sync(server, [kept, fresh, again], b"fresh-token")  # the first one is still there
        fresh.close()
        again.close()
    finally:
        kept.close()
    assert server.proc.poll() is None


def test_bad_token_file_at_start_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "0", "--token-file", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "absent" in result.stderr
    (tmp_path / "empty").write_text("# nothing\n")
    result = run_cli("serve", "--port", "0", "--token-file", str(tmp_path / "empty"))
    assert result.returncode == 1
    assert "holds no tokens" in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_client_authenticates_inside_tls(
    rat_server: StartServer, token_file: Path, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server = rat_server(
        "--token-file",
        str(token_file),
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    socks = []
    try:
        for token in (b"s3cret-one", b"nope"):
            sock = context.wrap_socket(server.connect(), server_hostname="localhost")
            socks.append(sock)
            sock.sendall(b"AUTH " + token + b"\n")
        assert recv_lines(socks[0], 1) == [b"* ok\n"]
        assert read_until_eof(socks[1]) == b"ERR auth failed\n"
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize(
    ("addresses", "exposed"),
    [
        (["127.0.0.1:8080", "[::1]:8080"], None),
        (["127.0.0.1:8080", "unix /run/rat.sock", "admin 0.0.0.0:9100"], None),
        (["0.0.0.0:8080"], "0.0.0.0:8080"),
        (["[::]:8080"], "[::]:8080"),
        (["127.0.0.1:8080", "web 192.0.2.7:8081"], "web 192.0.2.7:8081"),
    ],
)
def test_exposure_warning_names_the_network_listeners(
    addresses: list[str], exposed: str | None
) -> None:
    warning = Security(Config()).exposure_warning(addresses)
    if exposed is None:
        assert warning is None
    else:
        assert warning is not None
        assert exposed in warning
        assert "anyone who can reach the port can read and write every line" in warning


def test_exposure_warning_is_off_with_tokens(token_file: Path) -> None:
    security = Security.load(Config(token_file=str(token_file)))
    assert security.exposure_warning(["0.0.0.0:8080"]) is None


def test_chat_mode_greets_only_after_ok(rat_server: StartServer, token_file: Path) -> None:
    server = rat_server("--chat", "--token-file", str(token_file))
    alice = server.connect()
    try:
        alice.sendall(b"AUTH s3cret-one\n")
        ok, greeting = recv_lines(alice, 2)
        assert ok == b"* ok\n"
        assert greeting.startswith(b"* ") and b"#lobby" in greeting
        alice.sendall(b"/nick alice\n")
        assert recv_lines(alice, 1) == [b"* you are now alice\n"]
        intruder = server.connect()
        intruder.sendall(b"AUTH nope\nhello\n")
        assert read_until_eof(intruder) == b"ERR auth failed\n"  # no greeting, nothing else
        intruder.close()
        bob = server.connect()
        bob.sendall(b"AUTH s3cret-two\n/nick bob\nhi all\n")
        assert recv_lines(bob, 3)[0] == b"* ok\n"
        # Alice hears bob join and speak; of the intruder, not a word.
        got = recv_lines(alice, 3)
        assert got[-1] == b"<bob> hi all\n", got
        assert not any(b"nope" in line or b"hello" in line for line in got)
        bob.close()
    finally:
        alice.close()
