"""Chat mode's rules: nicks, rooms, commands, history.  Lines in; publishes and replies out.

Theory of operation
===================
`Chat` is told three things about a client: it connected (`connect`), it
sent complete lines (`receive`), it is gone (`disconnect`).  It answers in
two ways, and only these:

- *publishes*: bytes for the other members of a room, handed to the hub
  (`Hub.publish`), which the server delivers at the end of the turn exactly
  as it delivers raw lines (one shared `bytes` per turn, one `send` per
  receiver);
- *replies*: lines for the client alone (`client.send_lines`), which the
  connection queues, encoded by its layer if it has one (a WebSocket frames
  them).

It never sees a socket, so the same rules serve `nc` and the browser, and
the tests drive it with fake clients and a real `Hub`.

A client's state is its `ChatSession` (the connection's `session` slot:
its nick, and the prefix that nick puts on messages) and its room (the
connection's `room` slot, a `rat.hub.Room`).  Server-wide state is the set
of nicks in use and the next guest number.  Under `--workers N` the nicks
and rooms are the whole server's: each worker counts its own guest numbers
(worker k: k, k + N, ...), a nick a client chooses is first asked of the
supervisor's tables (a `NickRegistry`), which also hear of every join and
leave and answer `/who` and `/rooms`; while a client waits for an answer
its input is held, and read after it.  Rooms are the hub's: created on
first join, forgotten when the last member leaves (the lobby stays).

The prefix is added once per message
------------------------------------
`hello\\n` from alice is published as `<alice> hello\\n`: the prefix is
glued on once, when the message is published, so the hub still joins the
turn's lines into one `bytes` object that every receiver shares.  Adding a
prefix per receiver (or per receiver's nick, or per transport) would turn a
fan-out of N pointer appends into N copies.  Consecutive messages of one
block are published together: one `publish` per block, as in raw mode.

History without loss or duplicates
----------------------------------
With `--history N` every room keeps a ring of its last N messages
(`Room.history`), appended to when a message is *published*.  A joiner gets
the ring, `* end of history`, and from then on the room's live lines.  The
ring and the live stream meet cleanly only if everything in the ring has
been delivered: a line published to the room earlier in this turn is in the
ring but not yet delivered, and the joiner, already a member at delivery,
would get it twice.  So a join into a room with undelivered lines first
asks the server to deliver them (`deliver_pending`): then the ring is
exactly what the room has been sent, and whatever is published after the
join reaches the joiner live.  Joins are rare next to messages; a flood
costs one early delivery per join, never a lost or doubled line.

Replies come after what was published before the command
-------------------------------------------------------
A reply goes straight to the client's queue, while published lines wait for
the end of the turn (or longer, with --coalesce-ms).  So before a command
runs, whatever is still undelivered is delivered (`deliver_pending`): the
client then sees every line published before its command, then the reply,
and a client that leaves a room (`/join`, `/quit`) still gets what was said
while it was there.  Commands are rare next to messages, and a block of many
commands costs one early delivery, since after it nothing is pending.

Notices
-------
Joins, leaves and nick changes are published to the room with the client as
the sender, so the hub leaves the client out (it gets a reply instead), and
`--echo` keeps meaning "the sender gets it too".  A room with more than
`announce_max` members, counting the one who joins or leaves, gets no
join/leave notices: in a room of 10,000, each connection would otherwise
cost 10,000 deliveries.  Notices are not messages: they are not kept in the
history.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Protocol

from rat.chat.text import (
    NICK_MAX,
    ROOM_MAX,
    clean,
    clean_message,
    clean_messages,
    fold,
    name_problem,
    shorten,
)
from rat.config import DEFAULT_ANNOUNCE_MAX
from rat.hub import DEFAULT_ROOM, Hub, Room

END_OF_HISTORY = b"* end of history\n"
BYE = b"* bye\n"
WHO_PER_LINE = 50  # nicks per /who line

NICK_RULE = f"1-{NICK_MAX} of A-Z a-z 0-9 _ -"
ROOM_RULE = f"# and 1-{ROOM_MAX} of A-Z a-z 0-9 _ -"

HELP = (
    "* commands (upper or lower case):",
    f"*   /nick NAME    change your nick ({NICK_RULE})",
    f"*   /join #room   leave this room for #room ({ROOM_RULE})",
    "*   /rooms        list the rooms, with how many are in each",
    "*   /who          list who is in this room",
    "*   /me TEXT      send an action (/me waves: * alice waves)",
    "*   //TEXT        send a message that starts with /",
    "*   /help         this list",
    "*   /quit         leave",
    "* any other line is a message to everyone in your room",
)

# "/NAME  args..." -> NAME, args (leading blanks dropped, the rest kept as is).
_COMMAND = re.compile(r"/(\S*)\s*(.*)", re.DOTALL)
# A nick the guest counter can hand out: guest<N>, N without leading zeros.
_GUEST = re.compile(r"guest([1-9][0-9]*)")
# What a client may send while a command waits for another process's answer
# (held, then read as if it came after the answer; more than this closes it).
HOLD_MAX = 1 << 20


class NickRegistry(Protocol):
    """Nicks and rooms across processes (`--workers`: the supervisor's tables).

    Chat mode asks it before a client takes a nick that another worker could
    also hand out (guest nicks need no question: each worker counts its
    own), tells it who is in which room, and asks it for `/who` and `/rooms`.
    Every `answer` is called later, once.
    """

    def claim(self, key: str, answer: Callable[[bool], None]) -> None:
        """Ask for `key` (a folded nick); `answer(granted)`."""

    def release(self, key: str) -> None:
        """`key`, granted before, is free again."""

    def entered(self, room: str, nick: str) -> None:
        """`nick` is in `room` now."""

    def left(self, room: str, nick: str) -> None:
        """`nick` is no longer in `room`."""

    def who(self, room: str, answer: Callable[[list[str]], None]) -> None:
        """The nicks in `room`, on every process."""

    def rooms(self, answer: Callable[[dict[str, int]], None]) -> None:
        """Every room with members, and how many, on every process."""


class Client(Protocol):
    """What the chat needs of a connection (a `rat.connection.Conn`, or a test's fake)."""

    session: object | None
    room: Room | None

    def __hash__(self) -> int:
        """Clients are room members: hashable (by identity)."""

    @property
    def layered(self) -> bool:
        """Is it in the room's `layered` member set (rat.hub)?"""

    def send_lines(self, block: bytes) -> None:
        """Queue whole lines for this client alone."""

    def close_gracefully(self, reason: str, message: bytes = b"") -> None:
        """Send what is queued and `message`, then close."""


class ChatSession:
    """One client's chat state: its nick, and the prefix that nick puts on messages."""

    __slots__ = ("held", "nick", "prefix")

    def __init__(self, nick: str) -> None:
        self.nick = nick
        self.prefix = b""
        # Input that came while a command waits for the registry; None: no wait.
        self.held: bytearray | None = None
        self.rename(nick)

    def rename(self, nick: str) -> None:
        self.nick = nick
        self.prefix = b"<%s> " % nick.encode()

    def __repr__(self) -> str:
        return f"<ChatSession {self.nick}>"


class Chat:
    """The chat rules for every client of one server (see the module doc)."""

    def __init__(
        self,
        hub: Hub,
        deliver_pending: Callable[[], None],
        history: int = 0,
        announce_max: int = DEFAULT_ANNOUNCE_MAX,
        history_budget: int | None = None,
        *,
        first_guest: int = 1,
        guest_step: int = 1,
    ) -> None:
        """`deliver_pending()` must deliver every line published so far (rat.server).

        `history` is the ring size per room (0: no history).  A join is sent
        at most `history_budget` bytes of it, the newest messages (the server
        passes half of --max-pending: history alone never makes a joiner a
        slow consumer).  Guest nicks are guest<first_guest>, then every
        `guest_step`-th number after it.
        """
        self.hub = hub
        self.deliver_pending = deliver_pending
        self.history = history
        self.announce_max = announce_max
        self.history_budget = history_budget
        self.nicks: set[str] = set()  # fold(nick) of every client
        # guest<N> numbers: first, first + step, ...  Each worker of --workers N
        # takes its own residue (worker k: k, k + N, ...), so two workers never
        # hand out the same guest nick; one process counts 1, 2, 3, ...
        self.next_guest = first_guest
        self.guest_step = guest_step
        # Other processes' nicks (--workers sets it); None: this process is the server.
        self.registry: NickRegistry | None = None
        self.commands: dict[str, Callable[[Client, ChatSession, str], None]] = {
            "nick": self._nick,
            "join": self._join,
            "rooms": self._rooms,
            "who": self._who,
            "me": self._me,
            "help": self._help,
            "quit": self._quit,
        }

    # ------------------------------------------------------------ clients

    def connect(self, client: Client) -> None:
        """A new client: a guest nick, a greeting, the lobby (and its history)."""
        nick = self._guest_nick()
        session = ChatSession(nick)
        client.session = session
        self.nicks.add(fold(nick))
        self._enter(client, session, DEFAULT_ROOM, greeting=True)

    def disconnect(self, client: Client, announce: bool = True) -> None:
        """`client` is leaving (closing): free its nick, leave its room.

        `announce=False` (the server is stopping) skips the leave notice:
        everyone is leaving.  Calling it again, or for a client that never
        connected, does nothing.
        """
        session = client.session
        if not isinstance(session, ChatSession):
            return
        client.session = None
        key = fold(session.nick)
        self.nicks.discard(key)
        registry = self._registry_of(key)
        if registry is not None:
            registry.release(key)
        if client.room is not None:
            self._leave(client, session, client.room, announce)

    def _registry_of(self, key: str) -> NickRegistry | None:
        """The registry that holds `key` for this process (None: this process alone does)."""
        return self.registry if self._guest_owner(key) is None else None

    def _guest_owner(self, key: str) -> bool | None:
        """For a guest<N> nick: is N one this process hands out?  None: no guest nick."""
        match = _GUEST.fullmatch(key)
        if match is None:
            return None
        return (int(match.group(1)) - self.next_guest) % self.guest_step == 0

    def _guest_nick(self) -> str:
        while True:  # skip a guest<N> someone chose for themselves
            nick = f"guest{self.next_guest}"
            self.next_guest += self.guest_step
            if nick not in self.nicks:
                return nick

    # -------------------------------------------------------------- lines

    def receive(self, client: Client, block: bytes) -> None:
        """Complete lines (`block`, each ending in b"\\n") from `client`."""
        session = client.session
        room = client.room
        if not isinstance(session, ChatSession) or room is None:
            return  # closing: a last fragment after its leave
        if session.held is not None:  # it waits for the registry's answer
            self._hold(client, session, block)
            return
        prefix = session.prefix
        ring = room.history
        # Fast paths: a block of plain messages (no command, no empty line, no
        # CR, ASCII) is cleaned and prefixed without a Python loop over lines.
        if block.find(b"\n") == len(block) - 1:  # one line: most chat lines
            text = clean_message(block)
            if text is not None:
                message = prefix + text
                if ring is not None:
                    ring.append(message)
                self.hub.publish(client, message, room)
                return
        else:
            text = clean_messages(block)
            if text is not None:
                joined = prefix + text[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
                if ring is not None:
                    ring.extend(line + b"\n" for line in joined[:-1].split(b"\n"))
                self.hub.publish(client, joined, room)
                return
        messages: list[bytes] = []  # this block's messages, published together
        raws = block[:-1].split(b"\n")
        for index, raw in enumerate(raws):
            text = clean(raw)
            if text[:1] == b"/":
                if text[:2] == b"//":
                    text = text[1:]  # the escape: a message that starts with '/'
                else:
                    if messages:
                        self._publish(client, messages, room)
                        messages = []
                    if self.hub.size:
                        # A reply must not overtake what was published before
                        # the command (see "Replies come after" above).
                        self.deliver_pending()
                        if client.session is not session:
                            return  # that delivery found this client's socket gone
                    self._command(client, session, text)
                    if client.session is not session or client.room is None:
                        return  # it quit, or a reply made it a slow consumer
                    if session.held is not None:  # the command asked the registry: wait
                        rest = raws[index + 1 :]
                        if rest:
                            self._hold(client, session, b"\n".join(rest) + b"\n")
                        return
                    room = client.room
                    prefix = session.prefix
                    ring = room.history
                    continue
            elif not text:
                continue  # an empty line is no message
            message = prefix + text + b"\n"
            messages.append(message)
            if ring is not None:
                ring.append(message)
        if messages:
            self._publish(client, messages, room)

    def _publish(self, client: Client, messages: list[bytes], room: Room) -> None:
        self.hub.publish(client, messages[0] if len(messages) == 1 else b"".join(messages), room)

    def _command(self, client: Client, session: ChatSession, text: bytes) -> None:
        match = _COMMAND.fullmatch(text.decode())
        assert match is not None  # the pattern matches any text that starts with '/'
        name, args = match.group(1), match.group(2)
        command = self.commands.get(name.lower())
        if command is None:
            self._error(
                client,
                f"unknown command /{shorten(name)}: /help lists the commands"
                " (start a line with // to send it as a message)",
            )
            return
        command(client, session, args)

    # ----------------------------------------------------------- commands

    def _nick(self, client: Client, session: ChatSession, args: str) -> None:
        nick = self._one_word(client, args, f"/nick NAME ({NICK_RULE})")
        if nick is None:
            return
        problem = name_problem("nick", nick, NICK_MAX)
        if problem is not None:
            self._error(client, f"{problem}; usage: /nick NAME ({NICK_RULE})")
            return
        old = session.nick
        if nick == old:
            self._say(client, f"* you are already {nick}")
            return
        key, old_key = fold(nick), fold(old)
        if key != old_key and key in self.nicks:
            self._error(client, f"nick {nick} is taken: choose another with /nick NAME")
            return
        if key != old_key and self._guest_owner(key) is False:
            self._error(
                client,
                f"nick {nick} is kept for another worker's guests: choose another with /nick NAME",
            )
            return
        registry = self._registry_of(key)
        if key == old_key or registry is None:
            self._renamed(client, session, nick)
            return
        # Another worker could hand this nick out too: ask first.  It is kept
        # here meanwhile, and what the client sends is held until the answer.
        self.nicks.add(key)
        answered = self._wait(client, session)
        registry.claim(key, lambda granted: self._claimed(client, session, nick, granted, answered))

    def _renamed(self, client: Client, session: ChatSession, nick: str) -> None:
        """`client` is `nick` from now on: the old nick is free, the room is told."""
        old = session.nick
        old_key = fold(old)
        self.nicks.discard(old_key)
        self.nicks.add(fold(nick))
        if old_key != fold(nick):
            registry = self._registry_of(old_key)
            if registry is not None:
                registry.release(old_key)
        session.rename(nick)
        self._say(client, f"* you are now {nick}")
        room = client.room
        if room is not None and self.registry is not None:
            self.registry.left(room.name, old)
            self.registry.entered(room.name, nick)
        if room is not None and len(room) > 1:
            self.hub.publish(client, f"* {old} is now {nick}\n".encode(), room)

    def _claimed(
        self,
        client: Client,
        session: ChatSession,
        nick: str,
        granted: bool,
        answered: Callable[[Callable[[], None]], None],
    ) -> None:
        """The registry's answer to `client`'s /nick `nick`."""
        key = fold(nick)
        if not granted or client.session is not session:  # refused, or it left meanwhile
            self.nicks.discard(key)
            if granted and self.registry is not None:
                self.registry.release(key)
        taken = f"nick {nick} is taken: choose another with /nick NAME"
        answered(
            (lambda: self._renamed(client, session, nick))
            if granted
            else (lambda: self._error(client, taken))
        )

    def _wait(self, client: Client, session: ChatSession) -> Callable[[Callable[[], None]], None]:
        """Hold `client`'s input until the registry answers (`/nick`, `/who`, `/rooms`).

        Returns what the answer calls with the reply to give: unless the
        client has gone meanwhile, it replies, then reads what was held.
        """
        session.held = bytearray()

        def answered(reply: Callable[[], None]) -> None:
            if client.session is not session:
                return
            reply()
            held, session.held = session.held, None
            if held and client.session is session:
                self.receive(client, bytes(held))

        return answered

    def _hold(self, client: Client, session: ChatSession, block: bytes) -> None:
        """Keep `block` until the registry answers `client` (a bounded wait)."""
        held = session.held
        assert held is not None
        if len(held) + len(block) > HOLD_MAX:
            self.disconnect(client)
            client.close_gracefully(
                "too_much_input",
                b"ERR more than %d bytes sent while waiting for the server's answer\n" % HOLD_MAX,
            )
            return
        held += block

    def _join(self, client: Client, session: ChatSession, args: str) -> None:
        word = self._one_word(client, args, f"/join #room ({ROOM_RULE})")
        if word is None:
            return
        if not word.startswith("#"):
            hint = f"/join #{word}" if name_problem("", word, ROOM_MAX) is None else "/join #room"
            self._error(client, f"room names start with #: try {hint}")
            return
        problem = name_problem("room name", word[1:], ROOM_MAX)
        if problem is not None:
            self._error(client, f"{problem}; usage: /join #room ({ROOM_RULE})")
            return
        name = word.lower()  # rooms ignore case: #Rust is #rust
        if client.room is not None and client.room.name == name:
            self._say(client, f"* you are already in {name}")
            return
        self._enter(client, session, name, greeting=False)

    def _rooms(self, client: Client, session: ChatSession, args: str) -> None:
        if not self._no_arguments(client, "rooms", args):
            return
        if self.registry is not None:  # every worker's rooms
            answered = self._wait(client, session)
            self.registry.rooms(lambda counts: answered(lambda: self._say_rooms(client, counts)))
            return
        self._say_rooms(client, {name: len(room) for name, room in self.hub.rooms.items()})

    def _say_rooms(self, client: Client, counts: dict[str, int]) -> None:
        names = [DEFAULT_ROOM, *sorted(name for name in counts if name != DEFAULT_ROOM)]
        self._say(client, *(f"* {name} {counts.get(name, 0)}" for name in names))

    def _who(self, client: Client, session: ChatSession, args: str) -> None:
        room = client.room
        if room is None or not self._no_arguments(client, "who", args):
            return
        if self.registry is not None:  # every worker's members
            answered = self._wait(client, session)
            name = room.name
            self.registry.who(
                name, lambda nicks: answered(lambda: self._say_who(client, name, nicks))
            )
            return
        nicks = [
            member.session.nick
            for members in (room.plain, room.layered)
            for member in members
            if isinstance(member.session, ChatSession)
        ]
        self._say_who(client, room.name, nicks)

    def _say_who(self, client: Client, name: str, nicks: list[str]) -> None:
        lines = [
            " ".join(nicks[start : start + WHO_PER_LINE])
            for start in range(0, len(nicks), WHO_PER_LINE)
        ]
        if not lines:  # (a member asks, so only a registry that lost track gives none)
            lines = [""]
        lines[0] = f"{len(nicks)} in {name}: {lines[0]}"
        self._say(client, *(f"* {line}" for line in lines))

    def _me(self, client: Client, session: ChatSession, args: str) -> None:
        room = client.room
        if not args.strip():
            self._error(client, "usage: /me TEXT (sends '* yournick TEXT' to the room)")
            return
        if room is None:
            return
        message = f"* {session.nick} {args}\n".encode()
        if room.history is not None:
            room.history.append(message)
        self.hub.publish(client, message, room)

    def _help(self, client: Client, session: ChatSession, args: str) -> None:
        del session
        if self._no_arguments(client, "help", args):
            self._say(client, *HELP)

    def _quit(self, client: Client, session: ChatSession, args: str) -> None:
        del session
        if self._no_arguments(client, "quit", args):
            self.disconnect(client)
            client.close_gracefully("quit", BYE)

    # ------------------------------------------------------------- rooms

    def _enter(self, client: Client, session: ChatSession, name: str, greeting: bool) -> None:
        """Move `client` into room `name`: reply, history, then a join notice."""
        hub = self.hub
        target = hub.rooms.get(name)
        if self.history and target is not None and target.size:
            # Lines published to the room this turn are in its ring but not
            # yet delivered (see "History" in the module doc).
            self.deliver_pending()
            if client.session is not session:
                return  # that delivery found this client's socket gone
        if client.room is not None:
            self._leave(client, session, client.room, announce=True)
        room = hub.room(name)  # looked up after the delivery, which may forget rooms
        client.room = room
        hub.join(client, room, layered=client.layered)
        if self.registry is not None:
            self.registry.entered(name, session.nick)
        members = len(room)
        if greeting:
            head = (
                f"* welcome, you are {session.nick} in {name} ({members} here);"
                " /nick NAME to change your nick, /help for the commands"
            )
        else:
            head = f"* you joined {name} ({members} here)"
        reply = [head.encode() + b"\n"]
        if self.history:
            ring = room.history
            if ring is None:
                ring = room.history = deque(maxlen=self.history)
            reply += self._recent(ring)
            reply.append(END_OF_HISTORY)
        client.send_lines(b"".join(reply))
        if client.session is not session:
            return  # the reply made it a slow consumer
        if 1 < members <= self.announce_max:
            hub.publish(client, f"* {session.nick} joined {name}\n".encode(), room)

    def _leave(self, client: Client, session: ChatSession, room: Room, announce: bool) -> None:
        if announce and 1 < len(room) <= self.announce_max:
            self.hub.publish(client, f"* {session.nick} left {room.name}\n".encode(), room)
        self.hub.leave(client, room)  # forgets the room (and its ring) if it is now empty
        client.room = None
        if self.registry is not None:
            self.registry.left(room.name, session.nick)

    def _recent(self, ring: deque[bytes]) -> list[bytes]:
        """The ring's messages, oldest first, at most `history_budget` bytes of the newest."""
        budget = self.history_budget
        if budget is None:
            return list(ring)
        kept: list[bytes] = []
        for message in reversed(ring):
            budget -= len(message)
            if budget < 0:
                break
            kept.append(message)
        kept.reverse()
        return kept

    # ----------------------------------------------------------- replies

    def _one_word(self, client: Client, args: str, usage: str) -> str | None:
        """The command's one argument; or None, after telling the client how to use it."""
        words = args.split()
        if len(words) != 1:
            self._error(client, f"usage: {usage}")
            return None
        return words[0]

    def _no_arguments(self, client: Client, command: str, args: str) -> bool:
        if args.strip():
            self._error(client, f"/{command} takes no arguments: type just /{command}")
            return False
        return True

    def _say(self, client: Client, *lines: str) -> None:
        client.send_lines("".join(line + "\n" for line in lines).encode())

    def _error(self, client: Client, text: str) -> None:
        client.send_lines(b"ERR %s\n" % text.encode())
