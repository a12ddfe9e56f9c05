"""Who receives what: the broadcast rule, kept apart from moving bytes.

During one turn of the event loop every sender's complete lines are
`publish`ed here.  At the end of the turn the server calls `take_turn()` and
asks the resulting `Turn` which bytes each client should get.

All lines published in a turn are joined, in publish order, into one
immutable `bytes` object.  Every client that did not publish in the turn gets
that very object appended to its queue: a fan-out to N clients is N pointer
appends and, later, one `send` per client, however many lines the turn held.
A client that did publish gets the same bytes minus its own lines (unless
`echo` is on), as `memoryview` slices of the shared object: still no copy.

Guarantees that follow from this shape:
- atomic lines: a block holds only whole lines, and blocks are never split
  except around a sender's own blocks, which are whole lines too;
- per-sender order and one global order: every receiver gets the blocks in
  the same (publish) order.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

Chunk = bytes | memoryview


@dataclass(slots=True)
class Turn:
    """The lines published during one loop turn, ready to hand out."""

    data: bytes
    lines: int
    echo: bool
    # sender -> (its [start, end) spans within `data`, its line count)
    own: dict[Hashable, tuple[list[tuple[int, int]], int]] = field(default_factory=dict)

    def chunks_for(self, receiver: Hashable) -> tuple[list[Chunk], int]:
        """The chunks `receiver` gets this turn, and how many lines they hold."""
        mine = None if self.echo else self.own.get(receiver)
        if mine is None:
            return [self.data], self.lines
        spans, own_lines = mine
        view = memoryview(self.data)
        chunks: list[Chunk] = []
        pos = 0
        for start, end in spans:
            if start > pos:
                chunks.append(view[pos:start])
            pos = end
        if pos < len(self.data):
            chunks.append(view[pos:])
        return chunks, self.lines - own_lines


class Hub:
    """Collects the turn's published lines; `take_turn` hands them out."""

    __slots__ = ("_blocks", "_lines", "_own", "_size", "echo")

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self._blocks: list[bytes] = []
        self._own: dict[Hashable, tuple[list[tuple[int, int]], int]] = {}
        self._size = 0
        self._lines = 0

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
