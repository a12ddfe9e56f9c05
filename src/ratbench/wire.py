"""What the load generator puts on the wire, and how it reads it back.  No I/O.

A benchmark line is fixed-size and self-describing::

    PPPPP SSSSSSSSSS TTTTTTTTTTTTTTTTTTT xxxx...x\\n
    |     |          |                   padding up to the line size
    |     |          send time, time.monotonic_ns(), 19 digits
    |     sequence number of this publisher, from 0, 10 digits
    publisher id, 5 digits

Every field has a fixed width, so every line of a run has exactly `size`
bytes.  That is what lets a receiver check a whole chunk with one `memcmp`
against a reference stream (see `ratbench.receive`) instead of parsing each of
millions of lines in Python.  The padding is `x` bytes so that two lines
spliced together (a server interleaving senders' bytes) cannot parse.

The send time is CLOCK_MONOTONIC, the same clock in every process on Linux,
so a line sent by one worker process and received by another still measures
latency correctly.

Two wire formats carry these lines:

- `LineWire`: the rat protocol.  A line is sent as is; a receiver gets the
  same bytes.
- `RedisWire`: Redis pub/sub on one channel.  A line (without its newline) is
  the payload of a `PUBLISH`; a subscriber receives it inside a RESP
  `message` push.  The push for a fixed-size payload is fixed-size too, so
  the same chunk-level checking works.
- `WsWire` (`ratbench.ws`): WebSocket text messages, one line each.

Chat mode (`--chat`, rat serve --chat): the server puts the sender's nick
in front of every line it relays, `<b00001> ` for publisher 1 (the
generator names every publisher `b` and its five-digit id, the probe
`b00000`), and sends notices of its own, lines starting with `* `.  All
nicks have the same length, so a relayed frame still has one fixed size,
the prefix is part of what the fast path compares, and the reference's
pattern checks that the nick in front names the publisher in the line.
Notices carry no data: `Wire.skippable` finds them (and WebSocket control
frames) where a comparison fails, and the receiver cuts them out.
"""

from __future__ import annotations

import re

PUBID_WIDTH = 5
SEQ_WIDTH = 10
TIME_WIDTH = 19
HEADER_SIZE = PUBID_WIDTH + 1 + SEQ_WIDTH + 1 + TIME_WIDTH  # 36
MIN_LINE_SIZE = HEADER_SIZE + 1  # the header and the newline
MAX_PUBID = 10**PUBID_WIDTH - 1
MAX_SEQ = 10**SEQ_WIDTH - 1

SYNC_MARK = b"#sync "  # a sync line starts with this; never a valid data line
REDIS_CHANNEL = b"rat"
NICK_WIDTH = 1 + PUBID_WIDTH  # b00001
CHAT_PREFIX_SIZE = NICK_WIDTH + 3  # "<b00001> "
NOTICE = b"* "  # chat mode: a line from the server itself (joins, leaves, replies)
MAX_NOTICE = 4096  # a notice longer than this is not one (rat's are ~100 bytes)


def chat_nick(pubid: int) -> bytes:
    """The nick the generator gives publisher `pubid` in chat mode (the probe: 0)."""
    return b"b%05d" % pubid


def padding(size: int) -> bytes:
    """The bytes between the header and the newline of a `size`-byte line."""
    if size < MIN_LINE_SIZE:
        raise ValueError(f"line size must be at least {MIN_LINE_SIZE} bytes, got {size}")
    if size == MIN_LINE_SIZE:
        return b""
    return b" " + b"x" * (size - MIN_LINE_SIZE - 1)


def encode_line(pubid: int, seq: int, send_ns: int, size: int) -> bytes:
    """One benchmark line of exactly `size` bytes, newline included."""
    if not 0 <= pubid <= MAX_PUBID or not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"publisher id or sequence out of range: {pubid} {seq}")
    return b"%05d %010d %019d" % (pubid, seq, send_ns) + padding(size) + b"\n"


class LineEncoder:
    """Builds batches of lines for one publisher quickly (the hot send path)."""

    __slots__ = ("_pad", "_prefix")

    def __init__(self, pubid: int, size: int) -> None:
        if not 0 <= pubid <= MAX_PUBID:
            raise ValueError(f"publisher id out of range: {pubid}")
        self._prefix = b"%05d " % pubid
        self._pad = padding(size) + b"\n"

    def line(self, seq: int, send_ns: int) -> bytes:
        """One line (`--pattern even` sends every line on its own)."""
        return self._prefix + b"%010d %019d" % (seq, send_ns) + self._pad

    def lines(self, first_seq: int, count: int, send_ns: int) -> list[bytes]:
        """`count` lines with sequence numbers from `first_seq`, all stamped `send_ns`."""
        tail = b" %019d" % send_ns + self._pad
        prefix = self._prefix
        return [prefix + b"%010d" % seq + tail for seq in range(first_seq, first_seq + count)]


def parse_line(line: bytes | bytearray | memoryview, size: int) -> tuple[int, int, int] | None:
    """`(pubid, seq, send_ns)` of a benchmark line, or None if it is malformed.

    `line` must include its newline.  Anything that is not exactly what
    `encode_line(..., size)` produces is malformed: wrong length, non-digit
    fields, wrong separators or padding.
    """
    raw = bytes(line)
    if len(raw) != size or size < MIN_LINE_SIZE or raw[-1:] != b"\n":
        return None
    pub = raw[:PUBID_WIDTH]
    seq = raw[PUBID_WIDTH + 1 : PUBID_WIDTH + 1 + SEQ_WIDTH]
    stamp = raw[PUBID_WIDTH + SEQ_WIDTH + 2 : HEADER_SIZE]
    if (
        raw[PUBID_WIDTH : PUBID_WIDTH + 1] != b" "
        or raw[PUBID_WIDTH + SEQ_WIDTH + 1 : PUBID_WIDTH + SEQ_WIDTH + 2] != b" "
        or not (pub.isdigit() and seq.isdigit() and stamp.isdigit())
        or raw[HEADER_SIZE:-1] != padding(size)
    ):
        return None
    return int(pub), int(seq), int(stamp)


def sync_line(nonce: int, size: int) -> bytes:
    """The line a probe sends to prove every receiver is connected; `size` bytes."""
    text = SYNC_MARK + b"%d" % nonce
    return text + b"s" * max(0, size - len(text) - 1) + b"\n"


def _resp_bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def resp_command(*parts: bytes) -> bytes:
    """A RESP array of bulk strings: how a client sends a Redis command."""
    return b"*%d\r\n" % len(parts) + b"".join(_resp_bulk(p) for p in parts)


class LineReader:
    """The slow path's parser: `feed(bytes)` returns the complete lines (None: malformed).

    This one is the line protocol's: split on newlines, keep the rest.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skipped = 0  # frames that carry no line (WebSocket pings), dropped

    def feed(self, data: bytes) -> list[bytes | None]:
        buf = self.buf
        buf += data
        lines: list[bytes | None] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            lines.append(bytes(buf[start : nl + 1]))
            start = nl + 1
        del buf[:start]
        return lines


class RespLineReader(LineReader):
    """Redis: the payloads of `message` pushes, as lines; anything else is malformed."""

    def __init__(self) -> None:
        super().__init__()
        self.resp = RespReader()

    def feed(self, data: bytes) -> list[bytes | None]:
        self.resp.feed(data)
        lines: list[bytes | None] = []
        while True:
            try:
                item = self.resp.next()
            except ValueError:
                lines.append(None)
                self.resp = RespReader()  # give up on the rest of this data
                return lines
            if item is RespReader.NEED_MORE:
                return lines
            if (
                isinstance(item, list)
                and len(item) == 3
                and item[0] == b"message"
                and isinstance(item[2], bytes)
            ):
                lines.append(item[2] + b"\n")
            else:
                lines.append(None)


class Wire:
    """How lines of one size travel to and from one kind of server.

    `frame_size` is the size of one received data frame.  `echo` says whether
    a client's receiving connection also gets the lines it published (Redis
    pub/sub does; the rat protocol does not).  `split_connections` says
    whether a client that both publishes and receives needs two connections.
    `subscribe` is sent once on every receiving connection.  `chat`: the
    server is in chat mode (see the module notes).
    """

    name = "abstract"
    echo = False
    split_connections = False
    subscribe = b""
    upgrade = False  # every connection starts with an HTTP upgrade (WebSocket)
    control_frames = False  # the transport has frames that carry no line (WebSocket)

    @property
    def handshake(self) -> bool:
        """Connections must finish a handshake (SUBSCRIBE, upgrade, chat) before the sync line."""
        return bool(self.subscribe) or self.upgrade or self.chat

    def reader(self) -> LineReader:
        """A parser for the slow path."""
        return LineReader()

    def __init__(self, line_size: int, chat: bool = False) -> None:
        padding(line_size)  # validates the size
        self.line_size = line_size
        self.chat = chat
        self.prefix_size = CHAT_PREFIX_SIZE if chat else 0
        self.frame_size = line_size + self.prefix_size
        self.frame_re = self._frame_pattern(b"", b"\n")

    def _frame_pattern(self, prefix: bytes, suffix: bytes) -> re.Pattern[bytes]:
        """A regex for one well-formed data frame: groups pubid, seq, send_ns.

        `pattern.match(buf, pos)` checks a frame in place, in C: the
        reference receiver's per-line check (see `parse_line` for the rules).
        In chat mode the nick in front must name the line's publisher (the
        backreference).
        """
        publisher = rb"<b([0-9]{%d})> \1 " if self.chat else rb"([0-9]{%d}) "
        return re.compile(
            re.escape(prefix)
            + publisher % PUBID_WIDTH
            + rb"([0-9]{%d}) ([0-9]{%d})" % (SEQ_WIDTH, TIME_WIDTH)
            + re.escape(padding(self.line_size))
            + re.escape(suffix)
        )

    def shown(self, line: bytes, sender: int = 0) -> bytes:
        """`line` as the server relays it: chat mode puts the sender's `<nick> ` first."""
        return b"<%s> %s" % (chat_nick(sender), line) if self.chat else line

    def received(self, line: bytes, sender: int = 0) -> bytes:
        """The frame a receiver gets for `line` sent by publisher `sender`."""
        return self.frame(self.shown(line, sender))

    def frame(self, text: bytes) -> bytes:
        """The frame that carries one relayed line (`text`, newline included)."""
        raise NotImplementedError

    def unprefix(self, line: bytes) -> bytes | None:
        """A relayed line without its `<nick> ` (chat mode); None if that is not the sender's.

        The slow path's counterpart of the frame pattern's backreference.
        """
        if not self.chat:
            return line
        head = line[:CHAT_PREFIX_SIZE]
        nick = head[1 : 1 + NICK_WIDTH]
        if (
            head[:1] != b"<"
            or head[-2:] != b"> "
            or nick[:1] != b"b"
            or not nick[1:].isdigit()
            or line[CHAT_PREFIX_SIZE : CHAT_PREFIX_SIZE + PUBID_WIDTH] != nick[1:]
        ):
            return None
        return line[CHAT_PREFIX_SIZE:]

    def next_frame(self, buf: bytes | bytearray, pos: int) -> tuple[int, bytes | None] | None:
        """The frame at `pos`: (its end, its line with newline; None for a control frame).

        None when the frame is not complete yet.  For the slow moments:
        handshakes and notices.
        """
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return None
        return nl + 1, bytes(buf[pos : nl + 1])

    def skippable(self, buf: bytes | bytearray, pos: int) -> int:
        """How many bytes at `pos` carry no data line (a chat notice, a control frame).

        0: none (a data frame, or something wrong); -1: perhaps, once more
        bytes arrive.  Called only where a comparison failed, so a run
        without notices never pays for it.
        """
        if not (self.chat or self.control_frames):
            return 0
        got = self.next_frame(buf, pos)
        if got is None:
            return -1 if len(buf) - pos < MAX_NOTICE and self._could_skip(buf, pos) else 0
        end, line = got
        if line is None or (self.chat and line.startswith(NOTICE)):
            return end - pos
        return 0

    def _could_skip(self, buf: bytes | bytearray, pos: int) -> bool:
        """The incomplete frame at `pos` may turn out to be skippable."""
        return self.chat and NOTICE.startswith(bytes(buf[pos : pos + 2]))

    def publish(self, lines: list[bytes]) -> bytes:
        """The bytes to send for these lines (each includes its newline)."""
        raise NotImplementedError

    def publish_one(self, line: bytes) -> bytes:
        """The bytes to send for one line."""
        return self.publish([line])

    def payload_line(self, frame: bytes) -> bytes | None:
        """The benchmark line (with newline) inside one received frame, or None."""
        raise NotImplementedError


class LineWire(Wire):
    """The rat protocol: newline-terminated lines, relayed byte for byte."""

    name = "line"

    def frame(self, text: bytes) -> bytes:
        return text

    def publish(self, lines: list[bytes]) -> bytes:
        return b"".join(lines)

    def publish_one(self, line: bytes) -> bytes:
        return line

    def payload_line(self, frame: bytes) -> bytes | None:
        return self.unprefix(frame)


class RedisWire(Wire):
    """Redis pub/sub (RESP2): PUBLISH on one connection, SUBSCRIBE on another."""

    name = "redis"
    echo = True
    split_connections = True

    def __init__(self, line_size: int, channel: bytes = REDIS_CHANNEL) -> None:
        super().__init__(line_size)
        payload = line_size - 1  # the newline is not sent: RESP frames the message
        self.subscribe = resp_command(b"SUBSCRIBE", channel)
        self.frame_prefix = b"*3\r\n" + _resp_bulk(b"message") + _resp_bulk(channel)
        self.frame_prefix += b"$%d\r\n" % payload
        self.frame_size = len(self.frame_prefix) + payload + 2
        self.frame_re = self._frame_pattern(self.frame_prefix, b"\r\n")
        self._publish_prefix = b"*3\r\n" + _resp_bulk(b"PUBLISH") + _resp_bulk(channel)

    def frame(self, text: bytes) -> bytes:
        return self.frame_prefix + text[:-1] + b"\r\n"

    def reader(self) -> LineReader:
        return RespLineReader()

    def publish(self, lines: list[bytes]) -> bytes:
        head = self._publish_prefix
        return b"".join(head + b"$%d\r\n" % (len(line) - 1) + line[:-1] + b"\r\n" for line in lines)

    def payload_line(self, frame: bytes) -> bytes | None:
        prefix = self.frame_prefix
        if (
            len(frame) != self.frame_size
            or not frame.startswith(prefix)
            or not frame.endswith(b"\r\n")
        ):
            return None
        return frame[len(prefix) : -2] + b"\n"


def make_wire(proto: str, line_size: int, chat: bool = False) -> Wire:
    """The `Wire` for `--proto` (`line`, `redis` or `ws`), chat mode or not."""
    if proto == "line":
        return LineWire(line_size, chat)
    if proto == "redis":
        if chat:
            raise ValueError("Redis pub/sub has no chat mode")
        return RedisWire(line_size)
    if proto == "ws":
        from ratbench.ws import WsWire  # noqa: PLC0415 (ws builds on this module)

        return WsWire(line_size, chat)
    raise ValueError(f"unknown protocol {proto!r}")


class RespReader:
    """A small incremental RESP2 reader for the slow paths (acks, sync, odd frames).

    `feed(data)` stores bytes; `next()` returns one complete reply (bytes for a
    bulk/simple string, int for an integer, a list for an array, an Exception
    instance for an error reply), or `RespReader.NEED_MORE`.  Raises
    `ValueError` on bytes that are not RESP.
    """

    NEED_MORE: object = object()

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def next(self) -> object:
        value, end = self._parse(0)
        if value is self.NEED_MORE:
            return value
        del self._buf[:end]
        return value

    def _parse(self, pos: int) -> tuple[object, int]:
        buf = self._buf
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return self.NEED_MORE, pos
        kind, text = buf[pos : pos + 1], bytes(buf[pos + 1 : eol])
        after = eol + 2
        if kind == b"+":
            return text, after
        if kind == b"-":
            return Exception(text.decode(errors="replace")), after
        if kind == b":":
            return int(text), after
        if kind == b"$":
            n = int(text)
            if n < 0:
                return None, after
            if len(buf) < after + n + 2:
                return self.NEED_MORE, pos
            if buf[after + n : after + n + 2] != b"\r\n":
                raise ValueError("bulk string not followed by CRLF")
            return bytes(buf[after : after + n]), after + n + 2
        if kind == b"*":
            n = int(text)
            items: list[object] = []
            for _ in range(max(n, 0)):
                item, after = self._parse(after)
                if item is self.NEED_MORE:
                    return self.NEED_MORE, pos
                items.append(item)
            return items, after
        raise ValueError(f"not RESP: {bytes(buf[pos : pos + 20])!r}")
