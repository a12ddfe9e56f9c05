"""Chat mode's rules, pure: fake clients, a real Hub, no sockets.

`Harness` plays the server's part: it hands lines to `Chat.receive` and, when
told to (the end of a turn), delivers each room's turn to its members exactly
as `Server.deliver` does (`Turn.chunks_for`).  Each fake client keeps the one
ordered stream of bytes a real connection would carry: replies, notices and
messages, in the order they were queued.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rat.chat.session import END_OF_HISTORY, HOLD_MAX, Chat, ChatSession
from rat.chat.text import (
    NICK_MAX,
    ROOM_MAX,
    clean,
    clean_message,
    clean_messages,
    fold,
    name_problem,
)
from rat.cluster.workers import NickTable, Roster
from rat.hub import DEFAULT_ROOM, Hub, Room


class FakeClient:
    """A connection as the chat sees it: a stream of received bytes, a close."""

    layered = False

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.session: object | None = None
        self.room: Room | None = None
        self.stream = bytearray()
        self.closed = ""  # the close reason, once closed

    def __hash__(self) -> int:
        return id(self)

    def send_lines(self, block: bytes) -> None:
        assert block.endswith(b"\n")
        if not self.closed:
            self.stream += block

    def close_gracefully(self, reason: str, message: bytes = b"") -> None:
        if not self.closed:
            self.harness.chat.disconnect(self)  # what Server.on_leave does
            self.closed = reason
            self.stream += message

    @property
    def nick(self) -> str:
        assert isinstance(self.session, ChatSession)
        return self.session.nick

    def lines(self) -> list[bytes]:
        """What it has received so far, as lines (without newlines)."""
        assert self.stream.endswith(b"\n") or not self.stream
        return bytes(self.stream).split(b"\n")[:-1]

    def take(self) -> list[bytes]:
        """The lines received since the last `take`."""
        got = self.lines()
        self.stream.clear()
        return got


class Harness:
    """The server's part: connect, lines in, deliveries at the end of a turn."""

    def __init__(
        self,
        history: int = 0,
        announce_max: int = 100,
        echo: bool = False,
        guests: tuple[int, int] = (1, 1),
    ) -> None:
        self.hub = Hub(echo)
        self.chat = Chat(
            self.hub,
            self.deliver,
            history=history,
            announce_max=announce_max,
            first_guest=guests[0],
            guest_step=guests[1],
        )
        self.published: dict[str, list[bytes]] = {}  # room -> every line delivered to it

    def connect(self) -> FakeClient:
        client = FakeClient(self)
        self.chat.connect(client)
        return client

    def send(self, client: FakeClient, *lines: bytes) -> None:
        self.chat.receive(client, b"".join(line + b"\n" for line in lines))

    def deliver(self) -> None:
        for room, turn in self.hub.take_turns():
            self.published.setdefault(room.name, []).extend(turn.data.split(b"\n")[:-1])
            for member in [*room.plain, *room.layered]:
                chunks, _ = turn.chunks_for(member)
                for chunk in chunks:
                    member.stream += chunk

    def turn(self, client: FakeClient, *lines: bytes) -> None:
        """`client` sends `lines` in one turn; the turn is delivered."""
        self.send(client, *lines)
        self.deliver()


def greeted(harness: Harness, count: int) -> list[FakeClient]:
    """`count` connected clients, greetings and join notices read and dropped."""
    clients = [harness.connect() for _ in range(count)]
    harness.deliver()
    for client in clients:
        client.take()
    return clients


# ------------------------------------------------------------------- text


def test_clean_drops_a_trailing_cr_and_masks_controls() -> None:
    assert clean(b"hello\r") == b"hello"
    assert clean(b"a\rb\r\r") == b"a?b?"  # only one trailing \r is dropped
    assert clean(b"tab\there") == b"tab\there"
    assert clean(b"\x1b[2Jbell\x07\x00\x7f") == b"?[2Jbell???"
    assert clean(b"caf\xc3\xa9") == "café".encode()
    assert clean(b"bad \xff\xfe utf8") == "bad \ufffd\ufffd utf8".encode()
    assert clean("c1 \u0085 \u009b".encode()) == b"c1 ? ?"


@given(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")))
def test_clean_always_yields_text_without_controls(raw: bytes) -> None:
    text = clean(raw).decode()  # valid UTF-8
    assert all(ch == "\t" or not (ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F) for ch in text)


any_line = st.one_of(
    st.binary(max_size=30),
    st.text(alphabet="ab /\r\t\x1b", max_size=8).map(str.encode),
).map(lambda b: b.replace(b"\n", b""))


@given(st.lists(any_line, min_size=1, max_size=8))
def test_the_fast_paths_clean_as_clean_does(lines: list[bytes]) -> None:
    block = b"".join(line + b"\n" for line in lines)
    plain = [clean(line) for line in lines]
    expected = b"".join(text + b"\n" for text in plain)
    fast = clean_message(block) if len(lines) == 1 else clean_messages(block)
    if fast is not None:
        assert fast == expected
        assert all(text and text[:1] != b"/" for text in plain)  # messages only
    elif all(line.isascii() and b"\r" not in line for line in lines):
        assert any(not text or text[:1] == b"/" for text in plain)  # not taken for no reason


@given(st.lists(any_line, min_size=1, max_size=8), st.integers(0, 2))
def test_a_block_means_what_its_lines_mean_one_by_one(lines: list[bytes], history: int) -> None:
    together, one_by_one = Harness(history=history), Harness(history=history)
    outcomes = []
    for harness, blocks in ((together, [lines]), (one_by_one, [[line] for line in lines])):
        sender, other = greeted(harness, 2)
        for block in blocks:
            harness.send(sender, *block)
        harness.deliver()
        ring = harness.hub.lobby.history
        outcomes.append((sender.take(), other.take(), list(ring) if ring is not None else None))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("alice", None),
        ("A-b_9", None),
        ("x" * NICK_MAX, None),
        ("", "nick missing"),
        ("x" * (NICK_MAX + 1), "nick too long (33 characters, at most 32)"),
        ("a.b", "nick 'a.b' has '.': only letters A-Z a-z, digits, _ and - are allowed"),
        ("émile", "has 'é'"),
    ],
)
def test_nick_rules(name: str, problem: str | None) -> None:
    found = name_problem("nick", name, NICK_MAX)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_fold_shares_a_lowercase_nick() -> None:
    nick = "guest12"
    assert fold(nick) is nick
    assert fold("Alice") == "alice"


# -------------------------------------------------------------- basics


def test_greeting_names_the_guest_nick_the_lobby_and_help() -> None:
    harness = Harness()
    client = harness.connect()
    (greeting,) = client.take()
    assert greeting.startswith(b"* ")
    assert b"guest1" in greeting and b"#lobby" in greeting and b"/help" in greeting
    assert client.room is harness.hub.lobby


def test_messages_get_the_nick_once_and_reach_the_others() -> None:
    harness = Harness()
    alice, bob, carol = greeted(harness, 3)
    harness.turn(alice, b"/nick alice")
    bob.take(), carol.take(), alice.take()
    harness.turn(alice, b"hello", b"//slash", b"/me waves", b"", b"trail\r")
    expected = [b"<alice> hello", b"<alice> /slash", b"* alice waves", b"<alice> trail"]
    assert bob.take() == expected
    assert carol.take() == expected
    assert alice.take() == []  # no echo


def test_one_shared_bytes_object_for_every_receiver() -> None:
    hub_harness = Harness()
    alice, *_ = greeted(hub_harness, 4)
    hub_harness.send(alice, b"one", b"two")
    ((room, turn),) = hub_harness.hub.take_turns()
    assert turn.data == b"<guest1> one\n<guest1> two\n"
    for member in room.plain:
        if member is not alice:
            chunks, lines = turn.chunks_for(member)
            assert chunks == [turn.data] and chunks[0] is turn.data and lines == 2


def test_echo_gives_the_sender_its_own_message() -> None:
    harness = Harness(echo=True)
    alice, _bob = greeted(harness, 2)
    harness.turn(alice, b"hi")
    assert alice.take() == [b"<guest1> hi"]


def test_commands_ignore_case() -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.turn(alice, b"/NICK alice", b"/Join #Rust", b"/WHO")
    assert alice.take() == [
        b"* you are now alice",
        b"* you joined #rust (1 here)",
        b"* 1 in #rust: alice",
    ]
    assert bob.take() == [b"* guest1 is now alice", b"* alice left #lobby"]


def test_help_lists_every_command() -> None:
    harness = Harness()
    (alice,) = greeted(harness, 1)
    harness.turn(alice, b"/help")
    reply = alice.take()
    assert reply[0] == b"* commands (upper or lower case):"
    listed = b"\n".join(reply)
    for command in (b"/nick", b"/join", b"/rooms", b"/who", b"/me", b"//", b"/help", b"/quit"):
        assert command in listed
    harness.turn(alice, b"/help me")
    assert alice.take() == [b"ERR /help takes no arguments: type just /help"]


def test_a_reply_comes_after_the_lines_published_before_the_command() -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.send(bob, b"before you left")  # published; the turn is not over yet
    harness.send(alice, b"/join #rust")
    harness.deliver()
    assert alice.take() == [b"<guest2> before you left", b"* you joined #rust (1 here)"]
    harness.send(bob, b"still there?")
    harness.send(alice, b"/who", b"/bogus")  # two replies: one early delivery, nothing lost
    harness.deliver()
    assert alice.take()[0] == b"* 1 in #rust: guest1"
    assert bob.take() == [b"* guest1 left #lobby"]


def test_nick_change_is_announced_and_the_old_nick_is_free() -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.turn(alice, b"/nick alice")
    assert alice.take() == [b"* you are now alice"]
    assert bob.take() == [b"* guest1 is now alice"]
    harness.turn(bob, b"/nick guest1")
    assert bob.take() == [b"* you are now guest1"]
    assert alice.take() == [b"* guest2 is now guest1"]
    harness.turn(alice, b"/nick Alice")  # the same nick in another case: still hers
    assert alice.take() == [b"* you are now Alice"]


def test_nicks_are_unique_on_the_server_whatever_the_case_and_room() -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.turn(alice, b"/nick alice", b"/join #elsewhere")
    alice.take()
    bob.take()
    harness.turn(bob, b"/nick ALICE")
    assert bob.take() == [b"ERR nick ALICE is taken: choose another with /nick NAME"]
    assert bob.nick == "guest2"
    assert alice.take() == []


def test_guest_numbers_skip_a_taken_guest_nick() -> None:
    harness = Harness()
    (alice,) = greeted(harness, 1)
    harness.turn(alice, b"/nick guest2")
    newcomer = harness.connect()
    assert newcomer.nick == "guest3"


@settings(max_examples=50)
@given(workers=st.integers(1, 8), each=st.integers(1, 30))
def test_workers_never_hand_out_the_same_guest_nick(workers: int, each: int) -> None:
    # --workers N: worker k (1..N) counts guest<k>, guest<k+N>, ... (rat.chat.server)
    handed: list[str] = []
    for worker in range(1, workers + 1):
        harness = Harness(guests=(worker, workers))
        handed += [harness.connect().nick for _ in range(each)]
    assert len(set(handed)) == len(handed)
    assert {int(nick.removeprefix("guest")) for nick in handed} == set(range(1, workers * each + 1))


def test_a_worker_skips_a_guest_nick_taken_on_it() -> None:
    harness = Harness(guests=(2, 3))
    (alice,) = greeted(harness, 1)
    assert alice.nick == "guest2"
    harness.turn(alice, b"/nick guest5")
    assert harness.connect().nick == "guest8"


def test_rooms_lists_the_lobby_first_and_who_lists_members() -> None:
    harness = Harness()
    a, b, c = greeted(harness, 3)
    harness.turn(a, b"/join #zeta")
    harness.turn(b, b"/join #alpha")
    a.take(), b.take(), c.take()
    harness.turn(c, b"/rooms")
    assert c.take() == [b"* #lobby 1", b"* #alpha 1", b"* #zeta 1"]
    harness.turn(c, b"/join #zeta", b"/who")
    assert c.take() == [b"* you joined #zeta (2 here)", b"* 2 in #zeta: guest1 guest3"]


def test_who_splits_a_long_list() -> None:
    harness = Harness(announce_max=0)
    clients = greeted(harness, 120)
    harness.turn(clients[0], b"/who")
    lines = clients[0].take()
    assert len(lines) == 3
    assert lines[0].startswith(b"* 120 in #lobby: guest1 guest2 ")
    named = b" ".join(line.split(b": ", 1)[-1].removeprefix(b"* ") for line in lines).split()
    assert named == [f"guest{n}".encode() for n in range(1, 121)]


def test_a_room_is_forgotten_when_its_last_member_leaves() -> None:
    harness = Harness(history=5)
    alice, bob = greeted(harness, 2)
    harness.turn(alice, b"/join #tmp", b"kept in history")
    ring = harness.hub.rooms["#tmp"].history
    assert ring is not None and list(ring) == [b"<guest1> kept in history\n"]
    harness.turn(alice, b"/join #lobby")
    assert "#tmp" not in harness.hub.rooms
    harness.turn(bob, b"/join #tmp")  # a new room: the old history went with the old one
    assert bob.take()[-2:] == [b"* you joined #tmp (1 here)", b"* end of history"]


def test_a_room_emptied_with_lines_pending_is_forgotten_at_delivery() -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.turn(alice, b"/join #tmp")
    harness.send(alice, b"last words", b"/quit")  # published, then gone: the turn holds it
    harness.deliver()
    assert "#tmp" not in harness.hub.rooms
    assert set(harness.hub.rooms) == {DEFAULT_ROOM}
    assert alice.closed == "quit" and alice.lines()[-1] == b"* bye"
    assert bob.session is not None


def test_quit_closes_with_bye_announces_and_ignores_the_rest() -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.turn(alice, b"/quit", b"not relayed")
    assert alice.closed == "quit"
    assert alice.take() == [b"* bye"]
    assert bob.take() == [b"* guest1 left #lobby"]
    assert harness.chat.nicks == {"guest2"}


def test_disconnect_twice_or_before_connect_is_harmless() -> None:
    harness = Harness()
    (alice,) = greeted(harness, 1)
    harness.chat.disconnect(alice)
    harness.chat.disconnect(alice)
    harness.chat.disconnect(FakeClient(harness))
    harness.send(alice, b"after leaving")  # a last fragment after the leave: dropped
    assert harness.hub.size == 0 and not harness.chat.nicks


def test_announce_max_cuts_join_and_leave_notices_off() -> None:
    harness = Harness(announce_max=2)
    first = harness.connect()
    second = harness.connect()  # 2 members: announced
    harness.deliver()
    assert first.take()[-1] == b"* guest2 joined #lobby"
    second.take()
    third = harness.connect()  # 3 > 2: silent
    harness.deliver()
    assert first.take() == [] and second.take() == []
    harness.turn(third, b"/quit")  # 3 > 2 before it leaves: silent
    assert first.take() == [] and second.take() == []
    harness.turn(second, b"/nick bob")  # nick changes are always announced
    assert first.take() == [b"* guest2 is now bob"]
    harness.turn(second, b"/quit")  # 2 members: announced
    assert first.take() == [b"* bob left #lobby"]


# ------------------------------------------------------------ bad input

BAD_COMMANDS = [
    (b"/nick", b"ERR usage: /nick NAME (1-32 of A-Z a-z 0-9 _ -)"),
    (b"/nick a b", b"ERR usage: /nick NAME (1-32 of A-Z a-z 0-9 _ -)"),
    (b"/nick " + b"n" * 33, b"ERR nick too long (33 characters, at most 32); usage:"),
    (b"/nick al!ce", b"ERR nick 'al!ce' has '!': only letters"),
    (b"/nick \xc3\xa9mile", b"ERR nick '\xc3\xa9mile' has '\xc3\xa9': only letters"),
    (b"/join", b"ERR usage: /join #room (# and 1-64 of A-Z a-z 0-9 _ -)"),
    (b"/join #a #b", b"ERR usage: /join #room"),
    (b"/join rust", b"ERR room names start with #: try /join #rust"),
    (b"/join r.st", b"ERR room names start with #: try /join #room"),
    (b"/join #", b"ERR room name missing; usage: /join #room"),
    (b"/join #" + b"r" * 65, b"ERR room name too long (65 characters, at most 64)"),
    (b"/join #r\x01st", b"ERR room name 'r?st' has '?': only letters"),
    (b"/rooms all", b"ERR /rooms takes no arguments: type just /rooms"),
    (b"/who me", b"ERR /who takes no arguments: type just /who"),
    (b"/help nick", b"ERR /help takes no arguments: type just /help"),
    (b"/quit now", b"ERR /quit takes no arguments: type just /quit"),
    (b"/me", b"ERR usage: /me TEXT"),
    (b"/me   ", b"ERR usage: /me TEXT"),
    (b"/frobnicate", b"ERR unknown command /frobnicate: /help lists the commands"),
    (b"/", b"ERR unknown command /: /help lists the commands"),
    (b"/ hello", b"ERR unknown command /: /help lists the commands"),
    (b"/" + b"x" * 1000, b"ERR unknown command /" + b"x" * 40 + b"...: /help"),
]


@pytest.mark.parametrize(("line", "error"), BAD_COMMANDS)
def test_bad_input_gets_one_err_line_and_nothing_is_relayed(line: bytes, error: bytes) -> None:
    harness = Harness()
    alice, bob = greeted(harness, 2)
    harness.send(alice, line)
    assert harness.hub.size == 0  # nothing published
    harness.deliver()
    (reply,) = alice.take()
    assert reply.startswith(error)
    assert bob.take() == []
    assert alice.session is not None and not alice.closed
    assert alice.nick == "guest1" and alice.room is harness.hub.lobby


def test_already_there_is_a_reply_not_an_error() -> None:
    harness = Harness()
    (alice,) = greeted(harness, 1)
    harness.turn(alice, b"/join #LOBBY", b"/nick guest1")
    assert alice.take() == [b"* you are already in #lobby", b"* you are already guest1"]


# --------------------------------------------------------------- history


def test_history_then_end_then_live() -> None:
    harness = Harness(history=2)
    (alice,) = greeted(harness, 1)
    harness.turn(alice, b"one", b"two", b"/me three")
    bob = harness.connect()
    assert bob.take()[1:] == [b"<guest1> two", b"* guest1 three", b"* end of history"]
    harness.turn(alice, b"four")
    assert bob.take() == [b"<guest1> four"]


def test_join_after_undelivered_lines_gets_them_once() -> None:
    """Lines published earlier in the join's turn: in the history, not again live."""
    harness = Harness(history=10)
    alice, bob = greeted(harness, 2)
    harness.turn(bob, b"/join #x")
    harness.send(alice, b"/join #x")
    harness.deliver()
    alice.take()
    harness.send(alice, b"before bob")  # published, not yet delivered...
    harness.send(bob, b"/join #lobby", b"/join #x")  # ...when bob comes back
    harness.send(alice, b"after bob")
    harness.deliver()
    got = bob.take()
    joined = got.index(b"* you joined #x (2 here)")
    assert got[joined + 1 :] == [
        b"<guest1> before bob",
        END_OF_HISTORY[:-1],
        b"<guest1> after bob",
    ]


def test_history_sent_to_a_joiner_fits_in_half_its_queue_limit() -> None:
    hub = Hub()
    chat = Chat(hub, lambda: None, history=100, history_budget=3 * len(b"<guest1> 00\n"))
    harness = Harness()
    harness.hub, harness.chat = hub, chat
    (alice,) = greeted(harness, 1)
    harness.turn(alice, *(b"%02d" % n for n in range(10)))
    bob = harness.connect()
    assert bob.take()[1:] == [b"<guest1> 07", b"<guest1> 08", b"<guest1> 09", b"* end of history"]


# ------------------------------------------------------------ properties

NICKS = ["alice", "Alice", "bob", "guest2", "guest5", "x" * 33, "b@d", ""]
ROOMS = ["#lobby", "#a", "#A", "#b", "b", "#", "#" + "r" * 65]
text_lines = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))
commands = st.one_of(
    st.sampled_from(NICKS).map(lambda n: b"/nick " + n.encode()),
    st.sampled_from(NICKS[:3]).map(lambda n: b"/Nick " + n.encode()),
    st.sampled_from(ROOMS).map(lambda r: b"/JOIN " + r.encode()),
    st.sampled_from([b"/rooms", b"/who", b"/help", b"/quit", b"/me hi", b"/me", b"/x", b"//s"]),
    text_lines.map(lambda b: b"/" + b),
    text_lines,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.integers(0, 7)),
        st.tuples(st.just("drop"), st.integers(0, 7)),
        st.tuples(st.just("send"), st.integers(0, 7), st.lists(commands, min_size=1, max_size=4)),
        st.tuples(st.just("deliver"), st.integers(0, 7)),
    ),
    max_size=60,
)


def check_invariants(harness: Harness, clients: list[FakeClient]) -> None:
    live = [c for c in clients if c.session is not None]
    keys = [fold(c.nick) for c in live]
    assert len(keys) == len(set(keys)), "two clients share a nick"
    assert set(keys) == harness.chat.nicks
    for client in live:
        assert name_problem("nick", client.nick, NICK_MAX) is None
        room = client.room
        assert room is not None and harness.hub.rooms[room.name] is room
        assert client in room.plain
        assert name_problem("room", room.name[1:], ROOM_MAX) is None
    members = Counter(m for room in harness.hub.rooms.values() for m in room.plain)
    assert set(members) == set(live) and all(n == 1 for n in members.values())


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(0, 3), st.integers(0, 3), st.booleans())
def test_random_sessions_never_raise_and_keep_the_rules(
    ops: list[tuple[Any, ...]], history: int, announce_max: int, echo: bool
) -> None:
    harness = Harness(history=history, announce_max=announce_max, echo=echo)
    clients = [harness.connect() for _ in range(3)]
    for op in ops:
        kind, index = op[0], op[1]
        if kind == "connect":
            clients.append(harness.connect())
            continue
        client = clients[index % len(clients)]
        if kind == "drop":
            harness.chat.disconnect(client)  # a reset: no /quit
            client.closed = client.closed or "reset"
        elif kind == "send":
            harness.send(client, *op[2])
        else:
            harness.deliver()
        check_invariants(harness, clients)
    harness.deliver()
    # Emptied rooms are gone once delivered (the lobby stays).
    assert all(len(room) or name == DEFAULT_ROOM for name, room in harness.hub.rooms.items())
    for client in clients:
        for line in client.lines():
            assert line.startswith((b"* ", b"ERR ", b"<")), line
            line.decode()  # every line is text


chatter = st.lists(
    st.tuples(
        st.integers(0, 4),  # who
        st.sampled_from(["say", "say", "say", "deliver", "move"]),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(chatter)
def test_members_see_their_room_in_one_order_minus_their_own(script: list[tuple[int, str]]) -> None:
    """Clients 0-1 stay in the lobby, 2-4 wander between #lobby and #x."""
    harness = Harness()
    clients = greeted(harness, 5)
    sent: dict[bytes, str] = {}  # message -> the room it was sent to
    for step, (who, action) in enumerate(script):
        client = clients[who]
        if action == "say":
            message = b"m%d" % step
            harness.send(client, message)
            assert client.room is not None
            sent[b"<%s> %s" % (client.nick.encode(), message)] = client.room.name
        elif action == "deliver":
            harness.deliver()
        elif who >= 2:
            assert client.room is not None
            harness.send(
                client, b"/join #x" if client.room.name == DEFAULT_ROOM else b"/join #lobby"
            )
    harness.deliver()
    order = {
        room: [line for line in lines if line in sent] for room, lines in harness.published.items()
    }
    for room, lines in order.items():
        assert all(sent[line] == room for line in lines), "a message reached the wrong room"
        assert len(lines) == len(set(lines))
    received = [[line for line in c.lines() if line.startswith(b"<")] for c in clients]
    position = {line: i for lines in order.values() for i, line in enumerate(lines)}
    for client, lines in zip(clients, received, strict=True):
        own = b"<%s> " % client.nick.encode()
        assert not any(line.startswith(own) for line in lines), "no echo"
        assert len(lines) == len(set(lines)), "a message arrived twice"
        by_room: dict[str, list[int]] = {}
        for line in lines:
            by_room.setdefault(sent[line], []).append(position[line])
        for positions in by_room.values():
            assert positions == sorted(positions), "out of the room's order"
    lobby = order.get(DEFAULT_ROOM, [])
    for stayer in (0, 1):  # never moved: every lobby message but its own, in order
        own = b"<%s> " % clients[stayer].nick.encode()
        assert received[stayer] == [line for line in lobby if not line.startswith(own)]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(st.sampled_from(["say", "say", "say", "deliver", "join"]), max_size=80),
)
def test_history_and_live_meet_without_loss_or_duplicates(size: int, script: list[str]) -> None:
    """Joiners arrive at any point of a flood, mid-turn included."""
    harness = Harness(history=size)
    (speaker,) = greeted(harness, 1)
    harness.turn(speaker, b"/join #x")
    joiners: list[FakeClient] = []
    for step, action in enumerate(script):
        if action == "say":
            harness.send(speaker, b"m%d" % step)
        elif action == "deliver":
            harness.deliver()
        else:
            joiner = harness.connect()
            harness.send(joiner, b"/join #x")
            joiners.append(joiner)
    harness.deliver()
    flood = [line for line in harness.published.get("#x", []) if line.startswith(b"<")]
    for joiner in joiners:
        got = joiner.lines()
        start = next(i for i, line in enumerate(got) if line.startswith(b"* you joined #x"))
        end = got.index(END_OF_HISTORY[:-1], start)
        past = got[start + 1 : end]
        live = [line for line in got[end + 1 :] if line.startswith(b"<")]
        seen = past + live
        assert seen == flood[len(flood) - len(seen) :], "a gap or a repeat"
        assert len(past) == min(size, len(flood) - len(live))


# ------------------------------------------- nicks across workers (--workers)


class WorkerRegistry:
    """A worker's `NickRegistry` on the supervisor's tables, answering when told to."""

    def __init__(self, table: NickTable, roster: Roster, slot: int) -> None:
        self.table = table
        self.roster = roster
        self.slot = slot
        self.questions: list[Callable[[], None]] = []
        self.asked: list[str] = []
        self.released: list[str] = []

    def claim(self, key: str, answer: Callable[[bool], None]) -> None:
        self.asked.append(key)
        self.questions.append(lambda: answer(self.table.claim(key.encode(), self.slot)))

    def release(self, key: str) -> None:
        self.released.append(key)
        self.table.release(key.encode(), self.slot)

    def entered(self, room: str, nick: str) -> None:
        self.roster.entered(self.slot, room.encode(), nick.encode())

    def left(self, room: str, nick: str) -> None:
        self.roster.left(self.slot, room.encode(), nick.encode())

    def who(self, room: str, answer: Callable[[list[str]], None]) -> None:
        self.questions.append(
            lambda: answer([nick.decode() for nick in self.roster.who(room.encode())])
        )

    def rooms(self, answer: Callable[[dict[str, int]], None]) -> None:
        self.questions.append(
            lambda: answer({room.decode(): n for room, n in self.roster.counts().items()})
        )

    def answer(self) -> None:
        """The supervisor answers every question, in order (and those its answers lead to)."""
        while self.questions:
            self.questions.pop(0)()


def workers(count: int = 2) -> tuple[NickTable, list[Harness], list[WorkerRegistry]]:
    table, roster = NickTable(), Roster()
    harnesses = [Harness(guests=(slot, count)) for slot in range(1, count + 1)]
    registries = [WorkerRegistry(table, roster, slot) for slot in range(1, count + 1)]
    for harness, registry in zip(harnesses, registries, strict=True):
        harness.chat.registry = registry
    return table, harnesses, registries


def test_a_chosen_nick_waits_for_the_supervisor_and_input_waits_with_it() -> None:
    _, (one, _), (registry, _) = workers()
    alice, bob = greeted(one, 2)
    one.turn(alice, b"/nick alice", b"hello", b"/me waves")
    assert registry.asked == ["alice"]
    assert alice.take() == [] and bob.take() == []  # no reply, nothing relayed yet
    one.send(alice, b"still here")  # a later read: held too
    one.deliver()
    assert bob.take() == []
    registry.answer()
    one.deliver()
    assert alice.take() == [b"* you are now alice"]
    assert bob.take() == [
        b"* guest1 is now alice",
        b"<alice> hello",
        b"* alice waves",
        b"<alice> still here",
    ]


def test_a_nick_held_on_another_worker_is_refused_and_the_old_one_stays() -> None:
    _, (one, two), (first, second) = workers()
    (alice,) = greeted(one, 1)
    (other, bob) = greeted(two, 2)
    one.turn(alice, b"/nick alice")
    first.answer()
    two.turn(other, b"/nick Alice", b"hi")
    second.answer()
    two.deliver()
    assert other.take() == [b"ERR nick Alice is taken: choose another with /nick NAME"]
    assert bob.take() == [b"<guest2> hi"]
    assert other.nick == "guest2"
    assert "alice" not in two.chat.nicks  # the reservation is gone with the refusal


def test_chosen_nicks_are_free_again_after_a_rename_or_a_leave() -> None:
    _, (one, two), (first, second) = workers()
    (alice,) = greeted(one, 1)
    (other,) = greeted(two, 1)
    one.turn(alice, b"/nick alice")
    first.answer()
    one.turn(alice, b"/nick alicia")
    first.answer()
    assert first.released == ["alice"]
    two.turn(other, b"/nick alice")
    second.answer()
    assert other.nick == "alice"
    one.chat.disconnect(alice)
    assert first.released == ["alice", "alicia"]
    two.turn(other, b"/nick alicia")
    second.answer()
    assert other.nick == "alicia"


def test_a_client_that_leaves_while_it_waits_frees_what_it_was_granted() -> None:
    table, (one, _), (registry, _) = workers()
    (alice,) = greeted(one, 1)
    one.turn(alice, b"/nick alice")
    one.chat.disconnect(alice)
    registry.answer()
    assert registry.released == ["alice"]
    assert table.holder == {}
    assert "alice" not in one.chat.nicks


def test_guest_nicks_and_case_changes_need_no_question() -> None:
    _, (one, _), (registry, _) = workers()
    (alice,) = greeted(one, 1)  # guest1: worker 1 of 2 hands out 1, 3, 5, ...
    one.turn(alice, b"/nick guest3")
    assert alice.nick == "guest3" and registry.asked == []
    one.turn(alice, b"/nick guest2")
    assert alice.take()[-1] == (
        b"ERR nick guest2 is kept for another worker's guests: choose another with /nick NAME"
    )
    one.turn(alice, b"/nick alice")
    registry.answer()
    one.turn(alice, b"/nick ALICE")
    assert alice.nick == "ALICE" and registry.asked == ["alice"]


def test_input_held_past_its_bound_closes_the_client_with_a_reason() -> None:
    _, (one, _), _ = workers()
    (alice,) = greeted(one, 1)
    one.turn(alice, b"/nick alice")
    line = b"x" * 1000
    for _ in range(HOLD_MAX // 1001 + 1):
        one.send(alice, line)
    assert alice.closed == "too_much_input"
    assert alice.lines()[-1].startswith(b"ERR more than")


def test_who_and_rooms_count_every_worker() -> None:
    _, (one, two), (first, second) = workers()
    (alice, bob) = greeted(one, 2)
    (carol,) = greeted(two, 1)
    two.turn(carol, b"/join #ops")
    one.turn(bob, b"/join #ops")
    for client in (alice, bob, carol):
        client.take()
    one.turn(alice, b"/who", b"/rooms", b"hi")
    assert alice.take() == []  # held until the supervisor answers
    first.answer()
    one.deliver()
    assert alice.take() == [b"* 1 in #lobby: guest1", b"* #lobby 1", b"* #ops 2"]
    two.turn(carol, b"/who")
    second.answer()
    assert carol.take() == [b"* 2 in #ops: guest3 guest2"]
    one.chat.disconnect(bob)
    two.turn(carol, b"/who")
    second.answer()
    assert carol.take()[-1] == b"* 1 in #ops: guest2"


def test_the_roster_follows_joins_leaves_and_a_dead_worker() -> None:
    roster = Roster()
    roster.entered(1, b"#lobby", b"alice")
    roster.entered(2, b"#lobby", b"bob")
    roster.entered(2, b"#ops", b"carol")
    assert roster.who(b"#lobby") == [b"alice", b"bob"]
    assert roster.counts() == {b"#lobby": 2, b"#ops": 1}
    roster.left(2, b"#ops", b"carol")
    roster.left(1, b"#ops", b"nobody")  # harmless
    assert roster.counts() == {b"#lobby": 2}
    roster.forget(1)
    assert roster.who(b"#lobby") == [b"bob"]
    roster.forget(2)
    assert roster.rooms == {}


def test_the_supervisor_table_frees_a_dead_worker_s_nicks() -> None:
    table = NickTable()
    assert table.claim(b"alice", 1) and table.claim(b"bob", 1) and table.claim(b"carol", 2)
    assert not table.claim(b"alice", 2)
    assert table.claim(b"alice", 1)  # its own: still yes
    table.release(b"carol", 1)  # not worker 1's to release
    table.forget(1)
    assert table.holder == {b"carol": 2}
    assert table.claim(b"alice", 2)


names = st.sampled_from(["alice", "Alice", "bob", "guest1", "guest2", "guest4", "x"])
cross_ops = st.lists(
    st.one_of(
        st.tuples(st.just("nick"), st.integers(0, 5), names),
        st.tuples(st.just("say"), st.integers(0, 5), st.just("")),
        st.tuples(st.just("answer"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("drop"), st.integers(0, 5), st.just("")),
        st.tuples(st.just("connect"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("join"), st.integers(0, 5), st.sampled_from(["#lobby", "#x"])),
        st.tuples(st.just("who"), st.integers(0, 5), st.sampled_from(["/who", "/rooms"])),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(cross_ops)
def test_nicks_are_unique_across_workers_whatever_the_order_of_answers(
    ops: list[tuple[str, int, str]],
) -> None:
    _, harnesses, registries = workers()
    clients: list[tuple[int, FakeClient]] = [
        (0, harnesses[0].connect()),
        (1, harnesses[1].connect()),
    ]
    for kind, index, name in ops:
        if kind == "connect":
            clients.append((index, harnesses[index].connect()))
        elif kind == "answer":
            registries[index].answer()
        else:
            worker, client = clients[index % len(clients)]
            if kind == "nick":
                harnesses[worker].send(client, f"/nick {name}".encode())
            elif kind == "say":
                harnesses[worker].send(client, b"hi")
            elif kind == "join":
                harnesses[worker].send(client, f"/join {name}".encode())
            elif kind == "who":
                harnesses[worker].send(client, name.encode())
            else:
                harnesses[worker].chat.disconnect(client)
                client.closed = client.closed or "reset"
        connected = [fold(client.nick) for _, client in clients if client.session is not None]
        assert len(connected) == len(set(connected)), connected
    for registry in registries:
        registry.answer()
    connected = [fold(client.nick) for _, client in clients if client.session is not None]
    assert len(connected) == len(set(connected)), connected
    # The supervisor's roster is exactly who is where, on both workers.
    actual: dict[str, set[str]] = {}
    for _, client in clients:
        if client.session is not None and client.room is not None:
            actual.setdefault(client.room.name, set()).add(client.nick)
    roster = registries[0].roster
    assert {
        room.decode(): {n.decode() for n in roster.who(room)} for room in roster.rooms
    } == actual
