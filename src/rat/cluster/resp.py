"""RESP, the Redis protocol: commands out, replies in (sans-IO).

Commands are arrays of bulk strings (`command`); `publish_head` builds the
part of a `PUBLISH` before its payload, so that a payload is never copied
into a command.

Replies are parsed by `hiredis.Reader`, the C parser that redis-py uses,
when the `hiredis` package is installed (it is a dependency of rat).  A
small pure-Python reader with the same interface stands in when it is
missing, so `--redis` works on a bare Python too; the tests run both on the
same bytes.  The interface, hiredis's:

- `feed(buffer, offset=0, length=-1)`: store bytes (copied: the caller may
  reuse its buffer);
- `gets()`: one complete reply, or False when more bytes are needed.  A
  bulk or simple string is `bytes`, an integer `int`, an array a `list`,
  a null `None`, an error reply an instance of one of `REPLY_ERRORS`
  (returned, not raised);
- a byte stream that is not RESP raises one of `PROTOCOL_ERRORS`.

Only RESP2 is needed: rat never sends HELLO 3.
"""

from __future__ import annotations

from typing import Any, Protocol


class Reader(Protocol):
    def feed(
        self, buffer: bytes | bytearray | memoryview, offset: int = ..., length: int = ...
    ) -> None: ...

    def gets(self) -> Any: ...


class ReplyError(Exception):
    """An error reply (`-ERR ...`) from the pure-Python reader."""


class ProtocolError(Exception):
    """The pure-Python reader found bytes that are not RESP."""


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


def command(*args: bytes) -> bytes:
    """`command(b"SUBSCRIBE", b"rat")` -> the RESP bytes to send."""
    return b"*%d\r\n%s" % (len(args), b"".join(_bulk(arg) for arg in args))


def publish_head(channel: bytes, size: int) -> bytes:
    """The bytes of `PUBLISH channel <payload>` up to the payload (`size` bytes long).

    Send the payload after it, then `CRLF`.
    """
    return b"*3\r\n$7\r\nPUBLISH\r\n%s$%d\r\n" % (_bulk(channel), size)


CRLF = b"\r\n"


class _NeedMore(Exception):
    pass


class PyReader:
    """A pure-Python RESP2 reply parser with hiredis.Reader's interface."""

    __slots__ = ("_buf", "_pos")

    # Drop consumed bytes from the buffer once this many have gathered.
    COMPACT_AT = 64 * 1024

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, buffer: Any, offset: int = 0, length: int = -1, /) -> None:
        view = memoryview(buffer)
        end = len(view) if length < 0 else offset + length
        self._buf += view[offset:end]

    def gets(self) -> Any:
        try:
            reply, pos = self._parse(self._pos)
        except _NeedMore:
            return False
        self._pos = pos
        if pos >= self.COMPACT_AT or pos == len(self._buf):
            del self._buf[:pos]
            self._pos = 0
        return reply

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _NeedMore
        return bytes(self._buf[pos:end]), end + 2

    def _number(self, text: bytes) -> int:
        try:
            return int(text)
        except ValueError:
            raise ProtocolError(f"not a number in a RESP header: {text[:40]!r}") from None

    def _parse(self, pos: int) -> tuple[Any, int]:
        if pos >= len(self._buf):
            raise _NeedMore
        kind = bytes(self._buf[pos : pos + 1])
        text, after = self._line(pos + 1)
        if kind == b"+":
            return text, after
        if kind == b"-":
            return ReplyError(text.decode(errors="replace")), after
        if kind == b":":
            return self._number(text), after
        if kind == b"$":
            size = self._number(text)
            if size < 0:
                return None, after
            end = after + size
            if len(self._buf) < end + 2:
                raise _NeedMore
            if self._buf[end : end + 2] != b"\r\n":
                raise ProtocolError("a bulk string does not end in CRLF")
            return bytes(self._buf[after:end]), end + 2
        if kind in (b"*", b">"):  # an array (a RESP3 push is read as one)
            count = self._number(text)
            if count < 0:
                return None, after
            items = []
            for _ in range(count):
                item, after = self._parse(after)
                items.append(item)
            return items, after
        raise ProtocolError(f"unknown RESP reply type {kind!r}")


_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # the tests run this path by hiding the module
    _hiredis = None

REPLY_ERRORS: tuple[type[Exception], ...] = (ReplyError,)
PROTOCOL_ERRORS: tuple[type[Exception], ...] = (ProtocolError,)
if _hiredis is not None:
    REPLY_ERRORS += (_hiredis.ReplyError,)
    PROTOCOL_ERRORS += (_hiredis.ProtocolError,)


def make_reader(prefer_hiredis: bool = True) -> Reader:
    """hiredis's reader if it is installed (and preferred), else `PyReader`."""
    if prefer_hiredis and _hiredis is not None:
        reader: Reader = _hiredis.Reader()
        return reader
    return PyReader()


def reader_name() -> str:
    """Which parser `make_reader()` gives (for the log)."""
    if _hiredis is not None:
        return f"hiredis {_hiredis.__version__}"
    return "the pure-Python RESP reader (hiredis is not installed)"
