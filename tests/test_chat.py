"""Chat mode over TCP: real `rat serve --chat` processes, several nc-style clients.

What users rely on: nicks and rooms, messages reaching exactly their room with
the sender's nick, replies and errors for the sender alone, history that
meets the live stream without a gap or a repeat under a flood, the announce
cut-off, rooms that disappear once empty, and v1's limits unchanged.  The
rules themselves are tested without sockets in test_chat_session.py.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from conftest import SRC, ServerProcess, assert_silent, recv_lines, terminate

pytestmark = pytest.mark.timeout(60)

StartServer = Callable[..., ServerProcess]


class Chatter:
    """One nc-style client: send lines, read lines."""

    def __init__(self, server: ServerProcess, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect(), so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((server.host, server.port))
        self.greeting = self.read(1)[0]
        args = server.args
        if "--history" in args and args[args.index("--history") + 1] != "0":
            self.history = self.read_until(b"* end of history")[:-1]  # the lobby's
        self.nick = re.search(rb"you are (\S+) in", self.greeting).group(1).decode()  # type: ignore[union-attr]

    def say(self, *lines: bytes) -> None:
        self.sock.sendall(b"".join(line + b"\n" for line in lines))

    def read(self, count: int) -> list[bytes]:
        """The next `count` lines, without their newlines."""
        return [line[:-1] for line in recv_lines(self.sock, count)]

    def read_until(self, last: bytes, limit: int = 100_000) -> list[bytes]:
        """Lines up to and including `last`."""
        got: list[bytes] = []
        while not got or got[-1] != last:
            assert len(got) < limit, f"no {last!r} in {got[:20]!r}..."
            got += self.read(1)
        return got

    def command(self, line: bytes, replies: int = 1) -> list[bytes]:
        self.say(line)
        return self.read(replies)

    def silent(self, wait: float = 0.3) -> None:
        assert_silent(self.sock, wait)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def chatters() -> Iterator[Callable[..., Chatter]]:
    opened: list[Chatter] = []

    def connect(server: ServerProcess, nick: str | None = None, **kw: int) -> Chatter:
        chatter = Chatter(server, **kw)
        opened.append(chatter)
        if nick is not None:
            assert chatter.command(b"/nick " + nick.encode()) == [b"* you are now " + nick.encode()]
            chatter.nick = nick
        return chatter

    yield connect
    for chatter in opened:
        chatter.close()


def test_greeting_then_messages_with_the_nick(
    rat_server: StartServer, backend: str, chatters: Callable[..., Chatter]
) -> None:
    server = rat_server("--chat", "--backend", backend)
    alice = chatters(server)
    assert alice.greeting.startswith(b"* ") and alice.nick == "guest1"
    assert b"#lobby" in alice.greeting and b"/help" in alice.greeting
    bob = chatters(server)
    assert alice.read(1) == [b"* guest2 joined #lobby"]
    alice.say(b"/nick alice")
    assert alice.read(1) == [b"* you are now alice"]
    assert bob.read(1) == [b"* guest1 is now alice"]

    alice.say(b"hello\r", b"//not a command", b"/ME waves", b"tab\tok \x1b[31mred\x07")
    assert bob.read(4) == [
        b"<alice> hello",
        b"<alice> /not a command",
        b"* alice waves",
        b"<alice> tab\tok ?[31mred?",
    ]
    bob.sock.sendall(b"caf\xc3\xa9 \xff\xfe\n")
    assert alice.read(1) == ["<guest2> café \ufffd\ufffd".encode()]
    alice.silent()
    bob.silent(0.05)


def test_two_rooms_each_line_reaches_only_its_room(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    server = rat_server("--chat", "--announce-max", "0")  # no join/leave lines to read
    lobby = [chatters(server) for _ in range(3)]
    rust = [chatters(server) for _ in range(2)]
    for count, member in enumerate(rust, 1):
        assert member.command(b"/join #Rust") == [b"* you joined #rust (%d here)" % count]

    for member in [*lobby, *rust]:
        member.say(b"from " + member.nick.encode())
    for room in (lobby, rust):
        for member in room:
            others = [m.nick.encode() for m in room if m is not member]
            got = member.read(len(others))
            assert sorted(got) == sorted(b"<%s> from %s" % (n, n) for n in others)
    for member in [*lobby, *rust]:
        member.silent(0.1)

    assert lobby[0].command(b"/rooms", 2) == [b"* #lobby 3", b"* #rust 2"]
    names = b" ".join(m.nick.encode() for m in rust)
    assert rust[1].command(b"/who") == [b"* 2 in #rust: " + names]
    assert lobby[0].command(b"/nick " + rust[0].nick.upper().encode()) == [
        b"ERR nick %s is taken: choose another with /nick NAME" % rust[0].nick.upper().encode()
    ]


def test_bad_commands_get_one_err_line_and_the_client_stays(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    server = rat_server("--chat")
    alice, bob = chatters(server, "alice"), chatters(server)
    alice.read(1)  # bob joined
    bad = [
        b"/nick",
        b"/nick " + b"x" * 33,
        b"/nick no spaces",
        b"/nick w!ld",
        b"/join",
        b"/join nohash",
        b"/join #bad.name",
        b"/join #" + b"r" * 65,
        b"/who everyone",
        b"/me",
        b"/launch rockets",
    ]
    bob.say(*bad)
    replies = bob.read(len(bad))
    assert all(reply.startswith(b"ERR ") for reply in replies), replies
    assert replies[-1].startswith(b"ERR unknown command /launch")
    assert b"taken" not in b"".join(replies)
    alice.silent()  # nothing was relayed
    bob.say(b"still here")
    assert alice.read(1) == [b"<guest2> still here"]


def test_history_meets_live_under_a_flood(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    """Joiners arrive while one client floods the room: each gets history, then live."""
    keep, total, batch = 20, 12_000, 400
    server = rat_server("--chat", "--history", str(keep))
    flooder = chatters(server, "flood")
    assert flooder.command(b"/join #flood", 2) == [
        b"* you joined #flood (1 here)",
        b"* end of history",
    ]
    joiners: list[Chatter] = []
    for start in range(0, total, batch):
        flooder.say(*(b"m%05d" % n for n in range(start, start + batch)))
        if start % (batch * 3) == 0:
            joiner = chatters(server)
            joiner.say(b"/join #flood")  # no wait: it lands somewhere in the flood
            joiners.append(joiner)
    last = b"<flood> m%05d" % (total - 1)
    for joiner in joiners:
        got = joiner.read_until(last)
        if b"* end of history" not in got:
            # It joined after the flood's last line: that line came in its history.
            got += joiner.read_until(b"* end of history")
        start = next(i for i, line in enumerate(got) if line.startswith(b"* you joined #flood"))
        end = got.index(b"* end of history", start)
        past = got[start + 1 : end]
        live = [line for line in got[end + 1 :] if line.startswith(b"<")]
        seen = [int(line[-5:]) for line in past + live]
        first = total - len(seen)
        assert seen == list(range(first, total)), "a gap or a repeat between history and live"
        assert len(past) == min(keep, first + len(past))


def test_announce_cut_off(rat_server: StartServer, chatters: Callable[..., Chatter]) -> None:
    server = rat_server("--chat", "--announce-max", "2")
    first = chatters(server)
    second = chatters(server)
    assert first.read(1) == [b"* guest2 joined #lobby"]  # 2 members: announced
    third = chatters(server)  # 3 > 2: not announced
    third.say(b"/quit")
    assert third.read(1) == [b"* bye"]
    second.say(b"/quit")  # 2 members again: announced
    assert first.read(1) == [b"* guest2 left #lobby"]  # and nothing about guest3 before it
    first.silent()


def test_an_emptied_room_disappears(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    server = rat_server("--chat", "--history", "5")
    watcher = chatters(server, "watcher")
    visitor = chatters(server, "visitor")
    visitor.say(b"/join #tmp", b"a line for the history")
    assert visitor.read_until(b"* end of history")[-2:] == [
        b"* you joined #tmp (1 here)",
        b"* end of history",
    ]
    assert watcher.read_until(b"* visitor left #lobby")[-1] == b"* visitor left #lobby"

    def rooms() -> list[bytes]:
        watcher.say(b"/rooms", b"/who")  # the /who line marks the end of the list
        return watcher.read_until(b"* 1 in #lobby: watcher")[:-1]

    assert rooms() == [b"* #lobby 1", b"* #tmp 1"]
    visitor.close()  # the last member goes: the room (and its history) with it
    deadline = time.monotonic() + 10
    while (listed := rooms()) != [b"* #lobby 1"]:
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)
    again = chatters(server)
    again.say(b"/join #tmp")
    assert again.read_until(b"* end of history")[-2:] == [
        b"* you joined #tmp (1 here)",
        b"* end of history",
    ]


def test_quit_says_bye_and_others_see_the_leave(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    server = rat_server("--chat")
    alice, bob = chatters(server, "alice"), chatters(server, "bob")
    assert alice.read(2) == [b"* guest2 joined #lobby", b"* guest2 is now bob"]
    bob.say(b"/QUIT", b"never relayed")
    assert bob.read(1) == [b"* bye"]
    assert bob.sock.recv(100) == b""  # closed
    assert alice.read(1) == [b"* bob left #lobby"]
    alice.silent()
    newcomer = chatters(server, "bob")  # the nick is free again
    assert newcomer.nick == "bob"


def test_limits_apply_as_in_v1(rat_server: StartServer, chatters: Callable[..., Chatter]) -> None:
    server = rat_server("--chat", "--max-line", "64")
    alice, bob = chatters(server), chatters(server)
    alice.read(1)
    bob.say(b"fine", b"y" * 100)
    assert alice.read(1) == [b"<guest2> fine"]
    assert bob.read(1) == [b"ERR line too long"]
    assert bob.sock.recv(100) == b""
    assert alice.read(1) == [b"* guest2 left #lobby"]


@pytest.mark.slow
def test_a_slow_consumer_dropped_at_delivery_is_announced_at_once(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    """v1's slow-consumer rule in chat mode; the room hears of the drop at once.

    Each line is smaller than a turn's early-delivery size, so it is delivered
    at the end of its turn, and the drop happens in that delivery.  The sender
    waits for each line to reach the reader before the next, and stops once
    the drop is logged: nothing but the server itself delivers the leave
    notice.  (Were it left for the next event, it would come with the dropped
    client's 2-second linger timer, which also gives up on its last line.)
    """
    server = rat_server("--chat", "--max-pending", str(1 << 20))
    reader, sender = chatters(server), chatters(server)
    slow = chatters(server, rcvbuf=4096)  # reads nothing from now on
    reader.read(2)
    sender.read(1)
    message = b"<guest2> " + b"z" * 60_000
    for _ in range(2000):  # a bound: the drop comes after a few MB
        sender.say(message[9:])
        assert reader.read(1) == [message]
        time.sleep(0.02)  # let the log line arrive
        if "slow consumer" in server.stderr:
            break
    assert "slow consumer" in server.stderr, "the slow client was never dropped"
    assert reader.read(1) == [b"* guest3 left #lobby"]
    # The dropped client got whole lines (maybe the reason), then EOF.
    rest = bytearray()
    while chunk := slow.sock.recv(1 << 16):
        rest += chunk
    lines = bytes(rest).split(b"\n")
    assert lines.pop() == b"", "the stream ends inside a line"
    if lines and lines[0] == b"* guest2 joined #lobby":  # accepted in guest2's turn
        lines.pop(0)
    if lines and lines[-1] == b"ERR slow consumer":  # best effort: there may be no room
        lines.pop()
    assert lines and all(line == message for line in lines)


def test_sigterm_stops_a_chat_server_as_in_v1(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    server = rat_server("--chat")
    alice, bob = chatters(server), chatters(server)
    alice.read(1)
    bob.say(b"/join #elsewhere")
    bob.read(1)
    alice.read(1)  # guest2 left #lobby
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    for who in (alice, bob):
        assert who.sock.recv(100) == b""  # a clean close, no notices on the way out
    assert "Traceback" not in server.stderr


def test_plain_mode_is_untouched_and_never_imports_chat(
    rat_server: StartServer, chatters: Callable[..., Chatter]
) -> None:
    def imported(*flags: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "rat", "serve", "--port", "0", *flags],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        )
        assert proc.stderr is not None
        lines = []
        for raw in proc.stderr:
            lines.append(raw.decode())
            if "listening on" in lines[-1]:
                break
        terminate(proc)
        proc.stderr.close()
        return "".join(lines)

    assert "rat.chat" not in imported()
    assert "rat.chat.session" in imported("--chat")

    server = rat_server()
    a, b = server.connect(), server.connect()
    try:
        # No greeting, no nick: raw lines, verbatim.
        probe = server.connect()
        probe.sendall(b"__sync__\n")
        assert recv_lines(a, 1) == [b"__sync__\n"] and recv_lines(b, 1) == [b"__sync__\n"]
        probe.close()
        a.sendall(b"/nick x\r\n\x00raw\n")
        assert recv_lines(b, 2) == [b"/nick x\r\n", b"\x00raw\n"]
        assert_silent(a)
    finally:
        a.close()
        b.close()


def test_chat_options_need_chat_mode() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rat", "serve", "--port", "0", "--history", "10"],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"--history (or RAT_HISTORY) applies only in chat mode" in result.stderr
