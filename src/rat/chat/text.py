"""What chat mode does to the text of a line, and which names it accepts; pure.

Raw mode relays bytes verbatim.  Chat mode shows lines to people, in
terminals (`nc`, `telnet`) and in a browser, so before a line is relayed:

- a trailing `\\r` (what telnet and Windows clients end a line with) is dropped;
- invalid UTF-8 is replaced by U+FFFD, so every relayed line is text;
- control characters other than TAB become `?`: a line must not be able to
  move another user's cursor, clear their screen or ring their bell
  (ESC sequences), nor, with a bare `\\r`, overwrite what they see.

The common case, an ASCII line, costs one `bytes.translate`.

Nicks and room names are 1..limit characters of `[A-Za-z0-9_-]`: easy to
type everywhere, never ambiguous in a line (no spaces), no look-alikes.
"""

from __future__ import annotations

import re

NICK_MAX = 32
ROOM_MAX = 64  # characters after the '#'

# C0 controls but TAB, and DEL.
_ASCII_CONTROLS = bytes(c for c in range(0x20) if c != 0x09) + b"\x7f"
_ASCII_CLEAN = bytes.maketrans(_ASCII_CONTROLS, b"?" * len(_ASCII_CONTROLS))
# The same, plus the C1 controls (U+0080..U+009F), for non-ASCII text.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")

_NAME = re.compile("[A-Za-z0-9_-]+")
_NOT_NAME = re.compile("[^A-Za-z0-9_-]")
SHOWN_MAX = 40  # characters of a refused name quoted back in an error


def clean(line: bytes) -> bytes:
    """`line` (without its newline) as chat mode relays it: see the module doc."""
    if line[-1:] == b"\r":
        line = line[:-1]
    if line.isascii():
        return line.translate(_ASCII_CLEAN)
    return _CONTROLS.sub("?", line.decode("utf-8", "replace")).encode()


SLASH, NEWLINE, CR = 0x2F, 0x0A, 0x0D

# The same for a whole block: controls but TAB and the newline.
_BLOCK_CONTROLS = _ASCII_CONTROLS.replace(b"\n", b"")
_BLOCK_CLEAN = bytes.maketrans(_BLOCK_CONTROLS, b"?" * len(_BLOCK_CONTROLS))


def clean_message(block: bytes) -> bytes | None:
    """A one-line `block` cleaned, newline kept, if it is a plain ASCII message; else None.

    Plain: not a command (it does not start with '/'), not empty, no CR at
    its end.  That is nearly every chat line, and for it cleaning is one
    `translate`.  (`clean` handles the rest.)
    """
    if block[0] in (SLASH, NEWLINE) or block[-2] == CR or not block.isascii():
        return None
    return block.translate(_BLOCK_CLEAN)


def clean_messages(block: bytes) -> bytes | None:
    """The same for a block of several lines: None unless every one is a plain message.

    A flood arrives as big blocks; checked and cleaned by a few bytes
    methods, in C, its lines never pass through a Python loop.  (find()
    rather than `in`: bytes.__contains__ tries the needle as an int first,
    and the TypeError it swallows costs more than the search.)
    """
    if (
        block[0] not in (SLASH, NEWLINE)
        and block.isascii()
        and CR not in block
        and block.find(b"\n/") < 0
        and block.find(b"\n\n") < 0
    ):
        return block.translate(_BLOCK_CLEAN)
    return None


def shorten(text: str) -> str:
    """`text` cut short, if long, to be quoted back in an error line."""
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX] + "..."


def name_problem(kind: str, name: str, limit: int) -> str | None:
    """Why `name` is not a valid `kind` ("nick", "room name"), or None if it is."""
    if not name:
        return f"{kind} missing"
    if len(name) > limit:
        return f"{kind} too long ({len(name)} characters, at most {limit})"
    if not _NAME.fullmatch(name):
        bad = _NOT_NAME.search(name)
        assert bad is not None
        return (
            f"{kind} {shorten(name)!r} has {bad.group()!r}:"
            " only letters A-Z a-z, digits, _ and - are allowed"
        )
    return None


def fold(nick: str) -> str:
    """The key that makes nicks unique regardless of case ('Alice' and 'alice' clash).

    The nick itself when it is lowercase already (every guest nick): one
    string per client, not two.
    """
    key = nick.lower()
    return nick if key == nick else key
