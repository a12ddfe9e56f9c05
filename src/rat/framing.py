"""Line framing: turn a TCP byte stream into whole lines, with no sockets involved.

TCP delivers bytes, not messages: one `recv()` may hold half a line, ten lines,
or the end of one line and the start of the next.  `LineFramer` is fed whatever
`recv()` returned and hands back only *complete* lines, keeping the unfinished
tail until the rest arrives.

For speed the framer returns the complete lines of one feed as a single
`bytes` block (lines back to back, each ending in b"\\n") instead of a list of
lines: the server relays that block to every receiver as one shared, immutable
chunk.  Because a block only ever holds whole lines, lines from different
senders can never interleave inside a line, and because it is passed through
untouched, the bytes stay verbatim (\\r, NUL and invalid UTF-8 included).

The framer owns the line-length limit: a line longer than `max_line` bytes
(newline included), whether it arrived whole or is still growing, raises
`LineTooLong`.  Nothing of the long line is ever returned; whole lines that
came before it in the same feed travel on the exception (`accepted`).
"""

from __future__ import annotations

from rat.config import DEFAULT_MAX_LINE

NEWLINE = 0x0A


class LineTooLong(Exception):
    """The peer sent a line longer than the limit (a protocol violation)."""

    def __init__(self, max_line: int, accepted: bytes = b"") -> None:
        super().__init__(f"line longer than {max_line} bytes")
        self.max_line = max_line
        # Complete, valid lines that arrived in the same feed *before* the
        # offending one: they are the sender's good lines and still relayed.
        self.accepted = accepted


def split_lines(block: bytes) -> list[bytes]:
    """Split a block of complete lines into lines, each keeping its b"\\n".

    (Not `bytes.splitlines`, which would also split on \\r and friends.)
    """
    parts = block.split(b"\n")
    last = parts.pop()
    assert not last, "a block holds only complete lines"
    return [part + b"\n" for part in parts]


class LineFramer:
    """Accumulates bytes and returns complete lines, verbatim.

    `feed(data)` returns a block of zero or more complete lines (b"" if none
    finished).  `partial` is the unfinished tail held back.  `max_line` counts
    the newline.
    """

    __slots__ = ("_partial", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        # The unfinished tail: b"" most of the time (a whole `bytes` object
        # rather than a bytearray keeps idle connections small).
        self._partial = b""

    @property
    def partial(self) -> bytes:
        """Bytes received after the last newline (an unfinished line)."""
        return self._partial

    def feed(self, data: bytes) -> bytes:
        """Add `data`; return the complete lines it finished, as one block.

        Raises `LineTooLong` if any line (finished or still growing) is longer
        than `max_line`; its `accepted` holds the good lines before it.  After
        that the framer should be discarded along with its connection.
        """
        last_nl = data.rfind(b"\n")
        if last_nl < 0:
            # No line finished: the partial line only grows.
            if len(self._partial) + len(data) >= self.max_line:
                # Still no newline, and already max_line bytes: with the
                # newline still to come the line is longer than allowed.
                raise LineTooLong(self.max_line)
            self._partial += data
            return b""
        if self._partial:
            head, self._partial = self._partial, b""
            block = head + data[: last_nl + 1]
        else:
            block = data if last_nl == len(data) - 1 else data[: last_nl + 1]
        tail = data[last_nl + 1 :]
        # Fast path: a block no longer than the limit cannot hold a long line.
        if len(block) > self.max_line:
            bad = self._find_long_line(block)
            if bad >= 0:
                raise LineTooLong(self.max_line, accepted=block[:bad])
        if len(tail) >= self.max_line:
            raise LineTooLong(self.max_line, accepted=block)
        self._partial = tail
        return block

    def take_partial(self) -> bytes:
        """On EOF: return the unfinished line with b"\\n" appended (or b"")."""
        tail, self._partial = self._partial, b""
        return tail + b"\n" if tail else b""

    def _find_long_line(self, block: bytes) -> int:
        """Return where the first over-long line in `block` starts, or -1."""
        limit = self.max_line
        start = 0
        find = block.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                return -1
            if nl + 1 - start > limit:
                return start
            start = nl + 1
