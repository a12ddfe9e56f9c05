"""WebSocket messages <-> rat lines, without sockets (RFC 6455 framing via wsproto).

The mapping (SPEC "Web"):

- out: each relayed line is one message *without* its newline, a text
  message when the line is valid UTF-8 and a binary message otherwise;
- in: a text or binary message is input like a TCP line: one that does not
  end in b"\\n" gets one appended, one that holds several b"\\n" is several
  lines; a message longer than `--max-line` (measured as the line it makes,
  newline included, as for TCP) is refused with close code 1009.

Two directions, two different costs
------------------------------------
Server-to-client frames are not masked, so the frames for a turn's lines are
the same bytes for every receiver: `frame_lines` runs once per turn (through
`Turn.encoded`) and its result is shared, as the joined lines are shared by
TCP receivers.  It builds the frames itself rather than through wsproto's
`FrameProtocol.send_data`: a frame header is two, four or ten bytes that only
depend on the opcode and the length, and a table of the short ones turns
framing a line into two list appends (about 140 ns a line against 2.8 us;
`tests/test_web_layer.py` checks that the bytes are exactly wsproto's).

Client-to-server frames are masked with a key per frame, so they are parsed
per connection, by wsproto's `FrameProtocol` (never by hand).  A parser
costs about 850 bytes, more than an idle TCP connection altogether, so a
`MessageReader` creates it when bytes arrive and drops it again as soon as it
sits between messages with nothing buffered: an idle WebSocket carries no
parser at all.
"""

from __future__ import annotations

from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed

TEXT = Opcode.TEXT
BINARY = Opcode.BINARY

# Close codes (RFC 6455, section 7.4.1) for the reasons a connection ends.
NORMAL = CloseReason.NORMAL_CLOSURE  # 1000
GOING_AWAY = CloseReason.GOING_AWAY  # 1001: shutdown, idle
PROTOCOL_ERROR = CloseReason.PROTOCOL_ERROR  # 1002
POLICY_VIOLATION = CloseReason.POLICY_VIOLATION  # 1008: slow consumer, write timeout
MESSAGE_TOO_BIG = CloseReason.MESSAGE_TOO_BIG  # 1009: longer than --max-line
NO_STATUS = CloseReason.NO_STATUS_RCVD  # 1005: a close without a code (never sent)

FIN = 0x80
_SHORT = 126  # payload lengths below this fit in the second header byte
_TWO_BYTE = 1 << 16  # below this: 126 and a 16-bit length; else 127 and 64 bits

# The headers of unfragmented, unmasked frames with short payloads, by length.
_TEXT_HEADERS = [bytes((FIN | TEXT, n)) for n in range(_SHORT)]
_BINARY_HEADERS = [bytes((FIN | BINARY, n)) for n in range(_SHORT)]


def frame_header(opcode: int, length: int) -> bytes:
    """The header of one unfragmented server-to-client frame (RFC 6455, 5.2)."""
    first = FIN | opcode
    if length < _SHORT:
        return bytes((first, length))
    if length < _TWO_BYTE:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def _is_utf8(data: bytes) -> bool:
    if data.isascii():  # the common case, checked in C without decoding
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def frame_lines(block: bytes) -> bytes:
    """Whole lines (each ending in b"\\n") -> one frame per line, back to back.

    A block that is valid UTF-8 as a whole holds only valid lines (a newline
    never falls inside a multi-byte character), so the common case checks
    once per block, not once per line.
    """
    lines = block.split(b"\n")
    lines.pop()  # the empty string after the last newline
    all_text = _is_utf8(block)
    parts: list[bytes] = []
    append = parts.append
    for line in lines:
        size = len(line)
        text = all_text or _is_utf8(line)
        if size < _SHORT:
            append((_TEXT_HEADERS if text else _BINARY_HEADERS)[size])
        else:
            append(frame_header(TEXT if text else BINARY, size))
        append(line)
    return b"".join(parts)


def control_frame(opcode: Opcode, payload: bytes = b"") -> bytes:
    """A ping, pong or close frame (at most 125 bytes of payload)."""
    return frame_header(opcode, len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame: the 16-bit code, then a short UTF-8 reason."""
    # At most 125 bytes in all; a cut never splits a character.
    text = reason.encode()[:123].decode("utf-8", "ignore").encode()
    payload = code.to_bytes(2, "big") + text
    return control_frame(Opcode.CLOSE, payload)


class WebSocketError(Exception):
    """The client broke RFC 6455 or a limit; `code` is the close code to send."""

    def __init__(self, code: int, reason: str, detail: str, accepted: bytes = b"") -> None:
        super().__init__(detail)
        self.code = code
        self.reason = reason  # a metrics label: protocol_error, message_too_big
        self.detail = detail
        self.accepted = accepted  # whole lines from earlier messages in the same input


class _Parser(FrameProtocol):
    """wsproto's server-side frame parser, able to say when it holds nothing.

    `idle` looks at wsproto's decoder state (the only private attributes rat
    touches; `tests/test_web_layer.py` pins their meaning).
    """

    def __init__(self) -> None:
        super().__init__(client=False, extensions=[])

    @property
    def idle(self) -> bool:
        decoder = self._frame_decoder
        return (
            not len(decoder.buffer)
            and decoder.header is None
            and self._message_decoder.opcode is None
        )


class MessageReader:
    """Client bytes in; complete input lines, pongs and the close out.

    `feed(data)` returns the lines that complete messages made (b"" if
    none).  Control frames are answered through `replies` (a pong for a
    ping, the echo of a close); `closed` holds the client's close code once
    it sent one.  Raises `WebSocketError` for a protocol violation or a
    message longer than `max_line`.
    """

    __slots__ = ("_message", "_parser", "_size", "closed", "max_line", "replies")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._parser: _Parser | None = None  # created on demand, dropped when idle
        self._message: list[bytes] | None = None  # the parts of a message in progress
        self._size = 0  # its bytes so far
        self.replies = b""  # frames to send back (pongs, the close echo)
        self.closed: int | None = None

    @property
    def holds_parser(self) -> bool:
        """A parser is alive (mid-frame or mid-message); False for an idle client."""
        return self._parser is not None

    def take_replies(self) -> bytes:
        replies, self.replies = self.replies, b""
        return replies

    def feed(self, data: bytes) -> bytes:
        if self.closed is not None:
            return b""  # after a close, nothing more is data (RFC 6455, 5.5.1)
        parser = self._parser
        if parser is None:
            parser = self._parser = _Parser()
        parser.receive_bytes(data)
        lines: list[bytes] = []
        try:
            for frame in parser.received_frames():
                opcode, payload = frame.opcode, frame.payload
                if isinstance(payload, tuple):  # a close: (code, reason), parsed by wsproto
                    code = int(payload[0])
                    self.closed = code
                    # Echo the code; 1005 ("none given") must not be sent: say 1000.
                    self.replies += close_frame(NORMAL if code == NO_STATUS else code)
                    break
                if isinstance(payload, str):  # text: wsproto checked the UTF-8
                    payload = payload.encode()
                if opcode is Opcode.PING:
                    self.replies += control_frame(Opcode.PONG, payload)
                elif opcode is not Opcode.PONG:  # a piece of a text or binary message
                    self._add(payload, frame.message_finished, lines)
        except ParseFailed as err:
            raise WebSocketError(
                int(err.code), "protocol_error", str(err), b"".join(lines)
            ) from None
        except WebSocketError as err:
            err.accepted = b"".join(lines)
            raise
        if self.closed is not None or parser.idle:
            self._parser = None
        return b"".join(lines)

    def _add(self, part: bytes, finished: bool, lines: list[bytes]) -> None:
        """A piece of a message; a finished message becomes lines."""
        size = self._size + len(part)
        if size > self.max_line:  # refused as soon as it is too long, not once complete
            raise self._too_big()
        if not finished:
            if self._message is None:
                self._message = []
            self._message.append(part)
            self._size = size
            return
        if self._message is not None:
            self._message.append(part)
            part = b"".join(self._message)
            self._message = None
            self._size = 0
        if not part.endswith(b"\n"):
            part += b"\n"
            if len(part) > self.max_line:  # the newline counts, as for TCP
                raise self._too_big()
        lines.append(part)

    def _too_big(self) -> WebSocketError:
        detail = f"message longer than {self.max_line} bytes"
        return WebSocketError(MESSAGE_TOO_BIG, "message_too_big", detail)
