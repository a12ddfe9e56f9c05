"""`rat serve --chat --web`: a WebSocket client (the `websockets` library) is a chat client.

Chat mode's rules are tested without sockets in test_chat_session.py and over
TCP in test_chat.py; here a real server gets a real WebSocket client next
to an nc-style TCP client, and the test checks what only the web side can
get wrong: every reply line (greeting, notice, ERR) is one text message,
messages from the page are chat input like TCP lines, the history arrives
as messages, and /quit ends the WebSocket with a clean close (1000).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

from conftest import ServerProcess, assert_silent, recv_lines

pytestmark = pytest.mark.timeout(60)

StartServer = Callable[..., ServerProcess]
WEB = re.compile(r"web 127\.0\.0\.1:(\d+)")
GREETING = (  # rat.chat.session, `Chat._enter`
    "* welcome, you are {} in #lobby ({} here);"
    " /nick NAME to change your nick, /help for the commands"
)
UNKNOWN = (
    "ERR unknown command /{}: /help lists the commands"
    " (start a line with // to send it as a message)"
)


class Clients:
    """WebSocket and TCP clients of one `--chat --web` server, closed at the end."""

    def __init__(self, server: ServerProcess, opened: ExitStack) -> None:
        self.server = server
        match = WEB.search(server.stderr)
        assert match, server.stderr
        self.url = f"ws://127.0.0.1:{match.group(1)}/ws"
        self.opened = opened

    def ws(self) -> ClientConnection:
        return self.opened.enter_context(connect(self.url, open_timeout=10))

    def tcp(self) -> socket.socket:
        sock = self.opened.enter_context(socket.socket())
        sock.settimeout(10)
        sock.connect((self.server.host, self.server.port))
        return sock


@pytest.fixture
def clients(rat_server: StartServer) -> Iterator[Callable[..., Clients]]:
    with ExitStack() as opened:
        yield lambda *flags: Clients(rat_server("--chat", "--web", "0", *flags), opened)


def messages(ws: ClientConnection, count: int) -> list[str | bytes]:
    return [ws.recv(timeout=10) for _ in range(count)]


def test_a_websocket_client_chats_with_a_tcp_client(clients: Callable[..., Clients]) -> None:
    chat = clients()
    ws = chat.ws()
    assert messages(ws, 1) == [GREETING.format("guest1", 1)]  # text, without the newline
    ws.send("/nick alice")
    assert messages(ws, 1) == ["* you are now alice"]

    tcp = chat.tcp()
    assert recv_lines(tcp, 1) == [GREETING.format("guest2", 2).encode() + b"\n"]
    assert messages(ws, 1) == ["* guest2 joined #lobby"]
    tcp.sendall(b"/join #kitchen\n")
    assert recv_lines(tcp, 1) == [b"* you joined #kitchen (1 here)\n"]
    assert messages(ws, 1) == ["* guest2 left #lobby"]
    ws.send("/join #Kitchen")  # rooms ignore case
    assert messages(ws, 1) == ["* you joined #kitchen (2 here)"]
    assert recv_lines(tcp, 1) == [b"* alice joined #kitchen\n"]

    # A message is a line (or several); each gets the nick, as from TCP.
    ws.send("hello")
    ws.send("one\ntwo\n")
    assert recv_lines(tcp, 3) == [b"<alice> hello\n", b"<alice> one\n", b"<alice> two\n"]
    tcp.sendall(b"hi alice\n/me waves\n")
    assert messages(ws, 2) == ["<guest2> hi alice", "* guest2 waves"]
    with pytest.raises(TimeoutError):  # the sender gets nothing back
        ws.recv(timeout=0.3)
    assert_silent(tcp)


def test_history_arrives_as_messages_then_the_live_room(clients: Callable[..., Clients]) -> None:
    chat = clients("--history", "3")
    tcp = chat.tcp()
    assert recv_lines(tcp, 2) == [
        GREETING.format("guest1", 1).encode() + b"\n",
        b"* end of history\n",
    ]
    tcp.sendall(b"".join(b"m%d\n" % i for i in range(1, 5)))
    tcp.sendall(b"/who\n")  # its reply comes after every message was published
    assert recv_lines(tcp, 1) == [b"* 1 in #lobby: guest1\n"]

    ws = chat.ws()
    assert messages(ws, 5) == [
        GREETING.format("guest2", 2),
        "<guest1> m2",
        "<guest1> m3",
        "<guest1> m4",
        "* end of history",
    ]
    assert recv_lines(tcp, 1) == [b"* guest2 joined #lobby\n"]
    tcp.sendall(b"live\n")
    assert messages(ws, 1) == ["<guest1> live"]


def test_a_bad_command_gets_one_err_message(clients: Callable[..., Clients]) -> None:
    chat = clients()
    ws = chat.ws()
    messages(ws, 1)  # the greeting
    tcp = chat.tcp()
    recv_lines(tcp, 1)
    assert messages(ws, 1) == ["* guest2 joined #lobby"]

    ws.send("/launch rockets")
    assert messages(ws, 1) == [UNKNOWN.format("launch")]
    ws.send("/join nohash\n/nick")  # two commands in one message: two replies
    assert messages(ws, 2) == [
        "ERR room names start with #: try /join #nohash",
        "ERR usage: /nick NAME (1-32 of A-Z a-z 0-9 _ -)",
    ]
    ws.send("/who")  # the next message is the next reply: each ERR was one message
    assert messages(ws, 1) == ["* 2 in #lobby: guest2 guest1"]  # TCP members first
    assert_silent(tcp)  # nothing of that reached the room
    ws.send("still here")
    assert recv_lines(tcp, 1) == [b"<guest1> still here\n"]


def test_quit_says_bye_and_closes_the_websocket_cleanly(
    clients: Callable[..., Clients],
) -> None:
    chat = clients()
    ws = chat.ws()
    messages(ws, 1)
    ws.send("/nick alice")
    assert messages(ws, 1) == ["* you are now alice"]
    tcp = chat.tcp()
    recv_lines(tcp, 1)
    assert messages(ws, 1) == ["* guest2 joined #lobby"]

    ws.send("/QUIT\nnever relayed")
    assert messages(ws, 1) == ["* bye"]
    with pytest.raises(ConnectionClosedOK) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "quit")
    assert closed.value.rcvd_then_sent  # the server closed; the client answered
    assert recv_lines(tcp, 1) == [b"* alice left #lobby\n"]
    assert_silent(tcp)  # what followed /quit was not relayed
    again = chat.ws()  # the nick is free again
    assert messages(again, 1) == [GREETING.format("guest3", 2)]
    again.send("/nick alice")
    assert messages(again, 1) == ["* you are now alice"]
