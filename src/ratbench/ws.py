"""`--proto ws`: the generator as a WebSocket client (RFC 6455), written by hand.  No I/O.

Why not a library
-----------------
The generator sends and checks millions of lines per second in one Python
process.  A general client library (`websockets`, `wsproto`) parses every
frame into an event object and, for sending, masks and copies every payload
through its own buffers: several microseconds per message, which would make
the generator, not the server, the thing measured.  What a benchmark client
needs is much smaller, and fixed:

- the opening handshake: one HTTP/1.1 `GET /ws` with `Upgrade: websocket`,
  a fresh random `Sec-WebSocket-Key`, and a check of the `101` answer and
  its `Sec-WebSocket-Accept` (base64 of SHA-1 of the key and the RFC's GUID);
- sending: one text frame per line (FIN, opcode 1), the line without its
  newline as the payload (the server appends it again, see the SPEC), masked
  as RFC 6455 section 5.3 requires of every client frame.  The masking key
  must be unpredictable: the keys of a batch come from one `os.urandom`
  call, and the XOR is one big-integer operation per frame, done in C;
- receiving: a server's frames are not masked, and a line of a fixed size
  is always the same header and the same payload size.  So a received frame
  is fixed-size too (`frame_prefix` + payload), and the fast path compares
  whole chunks of frames with the reference stream exactly as for the line
  protocol (see `ratbench.receive`).  Anything else (a control frame, a
  fragmented or binary message) fails that comparison and the receiver goes
  to the slow path, where `WsReader` parses frames one by one: pings and
  pongs are skipped, a message's lines are checked as lines.

The codec was checked against the `websockets` library's own server (see
tests/test_bench_ws.py and bench/peers/websockets_server.py).
"""

from __future__ import annotations

import base64
import hashlib
import os

from ratbench.wire import NOTICE, LineReader, Wire

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PATH = "/ws"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


def frame_header(length: int, masked: bool, opcode: int = OP_TEXT) -> bytes:
    """The header of a final frame with a payload of `length` bytes (mask key not included)."""
    mask = 0x80 if masked else 0
    first = bytes([0x80 | opcode])
    if length < 126:
        return first + bytes([mask | length])
    if length < 1 << 16:
        return first + bytes([mask | 126]) + length.to_bytes(2, "big")
    return first + bytes([mask | 127]) + length.to_bytes(8, "big")


def mask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the repeated 4-byte `key` (RFC 6455 section 5.3), in one C operation."""
    n = len(payload)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )


def accept_value(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def new_key() -> bytes:
    return base64.b64encode(os.urandom(16))


def upgrade_request(host: str, key: bytes, path: str = PATH) -> bytes:
    return (
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
    )


def check_upgrade(head: bytes, key: bytes) -> str | None:
    """None if `head` (the response up to the blank line) accepts `key`; else why not."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        return f"the server did not switch to WebSocket: {lines[0][:80]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("sec-websocket-accept", "").encode() != accept_value(key):
        return "the server's Sec-WebSocket-Accept does not match the key sent"
    return None


class WsReader(LineReader):
    """Incremental reader of server frames: the lines of text and binary messages.

    Control frames (ping, pong) are skipped; a close frame or a frame a
    server must not send (masked) is reported as malformed (None).  A
    message may be fragmented; its payload, with a newline appended, is a
    line (several, if it holds newlines).
    """

    def __init__(self) -> None:
        super().__init__()
        self.message = bytearray()

    def feed(self, data: bytes) -> list[bytes | None]:
        buf = self.buf
        buf += data
        out: list[bytes | None] = []
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:
                head += 4  # masked: a server must not; malformed below
            if len(buf) - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if b1 & 0x80 or opcode == OP_CLOSE:
                out.append(None)
            elif opcode in (OP_PING, OP_PONG):
                self.skipped += 1
                continue
            else:
                self.message += payload
                if b0 & 0x80:  # FIN: the message is complete
                    text = bytes(self.message)
                    self.message = bytearray()
                    if text.endswith(b"\n"):
                        text = text[:-1]
                    out += [part + b"\n" for part in text.split(b"\n")]
        del buf[:pos]
        return out


class WsWire(Wire):
    """WebSocket (RFC 6455) text messages, one line each (see the module notes)."""

    name = "ws"
    upgrade = True
    control_frames = True

    def __init__(self, line_size: int, chat: bool = False) -> None:
        super().__init__(line_size, chat)
        # The newline is not sent: the message is the line (with the nick, in chat mode).
        payload = self.prefix_size + line_size - 1
        self.frame_prefix = frame_header(payload, masked=False)
        self.frame_size = len(self.frame_prefix) + payload
        self.frame_re = self._frame_pattern(self.frame_prefix, b"")
        self._client_header = frame_header(line_size - 1, masked=True)

    def publish(self, lines: list[bytes]) -> bytes:
        keys = os.urandom(4 * len(lines))
        head = self._client_header
        size = self.line_size
        return b"".join(
            (head if len(line) == size else frame_header(len(line) - 1, masked=True))
            + keys[4 * i : 4 * i + 4]
            + mask(line[:-1], keys[4 * i : 4 * i + 4])
            for i, line in enumerate(lines)
        )

    def publish_one(self, line: bytes) -> bytes:
        if len(line) != self.line_size:  # a command, a sync line of another size
            return self.publish([line])
        key = os.urandom(4)
        return self._client_header + key + mask(line[:-1], key)

    def frame(self, text: bytes) -> bytes:
        return frame_header(len(text) - 1, masked=False) + text[:-1]

    def payload_line(self, frame: bytes) -> bytes | None:
        if len(frame) != self.frame_size or not frame.startswith(self.frame_prefix):
            return None
        return self.unprefix(frame[len(self.frame_prefix) :] + b"\n")

    def next_frame(self, buf: bytes | bytearray, pos: int) -> tuple[int, bytes | None] | None:
        """One server frame at `pos`: a text or binary message's line, None for control."""
        head = _header(buf, pos)
        if head is None:
            return None
        first, start, length = head
        end = start + length
        if len(buf) < end:
            return None
        opcode = first & 0x0F
        if opcode in (OP_PING, OP_PONG):
            return end, None  # no data
        if opcode not in (OP_TEXT, OP_BINARY) or not first & 0x80:
            return end, b""  # a close frame, a fragment: not a whole line
        return end, bytes(buf[start:end]) + b"\n"

    def _could_skip(self, buf: bytes | bytearray, pos: int) -> bool:
        head = _header(buf, pos)
        if head is None:
            return True  # not even the header yet
        first, start, _ = head
        return first & 0x0F in (OP_PING, OP_PONG) or (
            self.chat and NOTICE.startswith(bytes(buf[start : start + 2]))
        )

    def reader(self) -> WsReader:
        return WsReader()


def _header(buf: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
    """(first byte, payload start, payload length) of the frame at `pos`; None: incomplete.

    Server frames are not masked (a masked one reads as garbage: the
    comparison that follows fails, as it should).
    """
    if len(buf) - pos < 2:
        return None
    first, n = buf[pos], buf[pos + 1] & 0x7F
    start = pos + 2
    if n >= 126:
        width = 2 if n == 126 else 8
        if len(buf) < start + width:
            return None
        n = int.from_bytes(buf[start : start + width], "big")
        start += width
    return first, start, n
