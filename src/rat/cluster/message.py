"""What one node tells the others: a turn's lines for one room, with where and when.

Every backplane message carries one room's lines from one loop turn of one
node.  It is a short text header line, then the lines themselves, untouched:

    rat1 <origin> <sent_ns> <room>\\n<payload>

- `origin`: the sending node's id (16 hex digits, random per process).  Redis
  sends a node's own PUBLISH back to its own subscription; the origin is how
  the node recognises its own lines and does not deliver them twice.
- `sent_ns`: the sender's wall clock (`time.time_ns()`) when it forwarded
  the turn, so the receiver can measure the backplane lag (only meaningful
  between machines whose clocks agree).
- `room`: the room name (`#lobby` without `--chat`); no whitespace, which
  rat's room names never have.
- `payload`: complete lines, each ending in b"\\n", any other bytes allowed
  (\\r, NUL, invalid UTF-8): the header is split off at the first b"\\n", so
  the payload is never parsed.

The header is text so that `redis-cli subscribe rat` shows a person what
flows.  `decode` refuses anything that is not such a message (another
program publishing on the channel): a payload that does not end in a newline
would break the rule that receivers only ever get whole lines.

Pure: no sockets, no clock.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MAGIC = b"rat1"
ORIGIN_BYTES = 8  # random bytes in a node id (16 hex digits)
_ORIGIN = re.compile(rb"[0-9a-f]{16}")
_WHITESPACE = re.compile(rb"\s")


@dataclass(frozen=True, slots=True)
class Message:
    origin: bytes
    sent_ns: int
    room: str
    payload: bytes

    @property
    def lines(self) -> int:
        return self.payload.count(b"\n")


def new_origin() -> bytes:
    """A fresh node id: 16 hex digits, different for every process."""
    return os.urandom(ORIGIN_BYTES).hex().encode()


def header(origin: bytes, sent_ns: int, room: str) -> bytes:
    """The header line of a message (the payload follows it as it is).

    Raises ValueError for an origin that is not 16 hex digits, a negative
    time, or a room name that is empty or holds whitespace.
    """
    name = room.encode()
    if not _ORIGIN.fullmatch(origin):
        raise ValueError(f"origin must be 16 hex digits: {origin!r}")
    if sent_ns < 0:
        raise ValueError(f"time must not be negative: {sent_ns}")
    if not name or _WHITESPACE.search(name):
        raise ValueError(f"room name must be non-empty, without whitespace: {room!r}")
    return b"%s %s %d %s\n" % (MAGIC, origin, sent_ns, name)


def encode(origin: bytes, sent_ns: int, room: str, payload: bytes) -> bytes:
    """One whole message (`payload`: complete lines)."""
    if payload and not payload.endswith(b"\n"):
        raise ValueError("payload must be complete lines")
    return header(origin, sent_ns, room) + payload


def decode(data: bytes) -> Message | None:
    """The message in `data`, or None if `data` is not a rat backplane message."""
    end = data.find(b"\n")
    if end < 0:
        return None
    parts = data[:end].split(b" ")
    if len(parts) != 4 or parts[0] != MAGIC:
        return None
    _, origin, sent, room = parts
    payload = data[end + 1 :]
    if (
        not _ORIGIN.fullmatch(origin)
        or not sent.isdigit()
        or not room
        or _WHITESPACE.search(room)
        or (payload and not payload.endswith(b"\n"))
    ):
        return None
    try:
        name = room.decode()
    except UnicodeDecodeError:
        return None
    return Message(origin, int(sent), name, payload)
