"""Who receives what: rooms and the broadcast rule, kept apart from moving bytes.

Members belong to rooms.  Without `--chat` there is one room, the lobby, and
every client is in it: exactly v1's broadcast.  During one loop turn every
sender's complete lines are `publish`ed to its room.  At the end of the turn
the server calls `take_turns()` and, for each room that got lines, asks the
resulting `Turn` which bytes each member should get.

All lines published to a room in a turn are joined, in publish order, into
one immutable `bytes` object.  Every member that did not publish gets that
very object appended to its queue: a fan-out to N members is N pointer
appends and, later, one `send` per member, however many lines the turn held.
A member that did publish gets the same bytes minus its own lines (unless
`echo` is on), as `memoryview` slices of the shared object: still no copy,
unless its share is a small part of a big turn (see `Turn.chunks_for`).

A room keeps two member sets: `plain` members take bytes as they are (a TCP
connection), `layered` ones need them encoded (a WebSocket frames them, TLS
encrypts them).  A turn memoises encodings (`Turn.encoded`), so that the
frames for one turn's lines are built once and shared by every WebSocket
receiver, just as the joined bytes are shared by every TCP receiver.

Guarantees that follow from this shape:
- atomic lines: a block holds only whole lines, and blocks are never split
  except around a sender's own blocks, which are whole lines too;
- per-sender order and one global order per room: every receiver gets the
  blocks in the same (publish) order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rat.metrics import Observer

Chunk = bytes | memoryview
DEFAULT_ROOM = "#lobby"
# The sender of lines that came from another node (rat.cluster): no local
# member is it, so every member receives them.
REMOTE = "<remote>"

# A sender's share of a turn is copied out instead of sliced when it is less
# than this fraction of the turn: a small slice would otherwise keep the whole
# turn alive in the sender's queue while being charged only its own length.
COPY_SHARE_BELOW = 0.5


@dataclass(slots=True)
class Turn:
    """The lines published to one room during one loop turn, ready to hand out."""

    data: bytes
    lines: int
    echo: bool
    # sender -> (its [start, end) spans within `data`, its line count)
    own: dict[Hashable, tuple[list[tuple[int, int]], int]] = field(default_factory=dict)
    _encoded: dict[str, Any] | None = None

    def chunks_for(self, receiver: Hashable) -> tuple[list[Chunk], int]:
        """The chunks `receiver` gets this turn, and how many lines they hold.

        What a receiver's queue keeps alive is what it is charged for: a
        sender whose share is under half the turn gets its share copied into
        one new `bytes` (a 20-byte chat line must not pin a 256 KiB turn of
        the sender's own flood); otherwise it gets zero-copy slices, which
        keep at most twice their length alive.
        """
        mine = None if self.echo else self.own.get(receiver)
        if mine is None:
            return [self.data], self.lines
        spans, own_lines = mine
        data = self.data
        size = len(data)
        own_size = 0
        for start, end in spans:
            own_size += end - start
        share = size - own_size
        if not share:
            return [], 0
        if share < size * COPY_SHARE_BELOW:
            # Copy the share out: it must not keep the whole turn alive.
            parts = []
            pos = 0
            for start, end in spans:
                parts.append(data[pos:start])
                pos = end
            parts.append(data[pos:])
            return [b"".join(parts)], self.lines - own_lines
        view = memoryview(data)
        chunks: list[Chunk] = []
        pos = 0
        for start, end in spans:
            if start > pos:
                chunks.append(view[pos:start])
            pos = end
        if pos < size:
            chunks.append(view[pos:])
        return chunks, self.lines - own_lines

    def encoded(self, key: str, encode: Callable[[Turn], Any]) -> Any:
        """`encode(self)`, computed once per turn and key, then shared."""
        memo = self._encoded
        if memo is None:
            memo = self._encoded = {}
        try:
            return memo[key]
        except KeyError:
            value = memo[key] = encode(self)
            return value


class Room:
    """A set of members and the lines published to them this turn."""

    __slots__ = (
        "_blocks",
        "_lines",
        "_own",
        "_size",
        "echo",
        "history",
        "layered",
        "name",
        "plain",
    )

    def __init__(self, name: str, echo: bool = False) -> None:
        self.name = name
        self.echo = echo
        # Members, in join order (dicts: ordered sets with O(1) removal).
        self.plain: dict[Any, None] = {}
        self.layered: dict[Any, None] = {}
        self._blocks: list[bytes] = []
        self._own: dict[Hashable, tuple[list[tuple[int, int]], int]] = {}
        self._size = 0
        self._lines = 0
        # Chat mode's ring of the room's last `--history` messages (rat.chat).
        # It lives here so that it is forgotten with the room.
        self.history: deque[bytes] | None = None

    def __len__(self) -> int:
        """How many members."""
        return len(self.plain) + len(self.layered)

    @property
    def size(self) -> int:
        """Bytes published since the last `take_turn`."""
        return self._size

    def publish(self, sender: Hashable, block: bytes) -> int:
        """Queue `block` (complete lines) from `sender`; return its line count."""
        lines = block.count(b"\n")
        start = self._size
        self._size += len(block)
        self._lines += lines
        self._blocks.append(block)
        if not self.echo:
            mine = self._own.get(sender)
            if mine is None:
                self._own[sender] = ([(start, self._size)], lines)
            else:
                spans, count = mine
                if spans[-1][1] == start:  # adjacent to its previous block
                    spans[-1] = (spans[-1][0], self._size)
                else:
                    spans.append((start, self._size))
                self._own[sender] = (spans, count + lines)
        return lines

    def take_turn(self) -> Turn | None:
        """Everything published since the last call, or None if nothing was."""
        if not self._blocks:
            return None
        blocks = self._blocks
        data = blocks[0] if len(blocks) == 1 else b"".join(blocks)
        turn = Turn(data, self._lines, self.echo, self._own)
        self._blocks = []
        self._own = {}
        self._size = 0
        self._lines = 0
        return turn


class Hub:
    """The rooms, and the rooms that have lines waiting for this turn's delivery."""

    __slots__ = ("_active", "_size", "echo", "forward", "lobby", "observer", "rooms")

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.lobby = Room(DEFAULT_ROOM, echo)
        self.rooms: dict[str, Room] = {DEFAULT_ROOM: self.lobby}
        self._active: list[Room] = []  # rooms published to since the last take
        self._size = 0
        # Told of every join and leave (--admin counts lines per client); the
        # hub is the one place every room change passes, chat mode's included.
        self.observer: Observer | None = None
        # Told of every local publish, `forward(room, block)`: the cluster
        # backplane (rat.cluster) sets it to pass lines on to other nodes.
        # One test per published block; None without --redis/--workers.
        self.forward: Callable[[Room, bytes], None] | None = None

    @property
    def size(self) -> int:
        """Bytes published, in all rooms, since the last `take_turns`."""
        return self._size

    def room(self, name: str) -> Room:
        """The room called `name`, created on first use."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, self.echo)
        return room

    def join(self, member: Hashable, room: Room, layered: bool = False) -> None:
        """Add `member` to `room` (plain or layered set)."""
        (room.layered if layered else room.plain)[member] = None
        if self.observer is not None:
            self.observer.joined(member, room)

    def leave(self, member: Hashable, room: Room) -> None:
        """Remove `member` from `room`; an empty room other than the lobby is forgotten."""
        if self.observer is not None:
            self.observer.left(member, room)
        room.plain.pop(member, None)
        room.layered.pop(member, None)
        if not room and room is not self.lobby and not room.size:
            self.rooms.pop(room.name, None)

    def publish(self, sender: Hashable, block: bytes, room: Room | None = None) -> int:
        """Queue `block` (complete lines) from `sender` in `room` (the lobby by default)."""
        room = self.lobby if room is None else room  # (an empty Room is falsy)
        if not room.size:
            self._active.append(room)
        self._size += len(block)
        if self.forward is not None:
            self.forward(room, block)
        return room.publish(sender, block)

    def publish_remote(self, block: bytes, room: Room) -> int:
        """Lines from another node: every member gets them, and they are never forwarded."""
        if not room.size:
            self._active.append(room)
        self._size += len(block)
        return room.publish(REMOTE, block)

    def take_turns(self) -> list[tuple[Room, Turn]]:
        """Each room that got lines since the last call, with its turn."""
        active, self._active = self._active, []
        self._size = 0
        turns = []
        for room in active:
            turn = room.take_turn()
            if turn is not None:
                turns.append((room, turn))
            if not room and room is not self.lobby:  # emptied during the turn
                self.rooms.pop(room.name, None)
        return turns

    def take_turn(self) -> Turn | None:
        """The lobby's turn alone (all there is without rooms)."""
        turns = self.take_turns()
        return turns[0][1] if turns else None
