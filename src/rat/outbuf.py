"""The outbound queue of one client: shared chunks in, partial sends out.

A broadcast produces one immutable `bytes` block that is appended, as the
same object, to the queue of every receiver: fan-out costs a pointer per
client, not a copy.  The socket takes what it can (`send` may accept only part
of it); `peek()` offers the unsent bytes as a list of buffers for one
`sendmsg()`, and `advance(n)` drops the `n` bytes the kernel accepted.

The queue owns the pending-bytes limit: `over_limit` turns true once more
than `limit` bytes wait here, and the caller disconnects that client as a
slow consumer.  The caller appends, tries to send, and only then asks, so
the limit measures what a client leaves behind, not how much one busy loop
turn produced.  Kernel socket buffers are not counted: only what waits here.
"""

from __future__ import annotations

from collections import deque

from rat.config import DEFAULT_MAX_PENDING

# sendmsg() takes at most IOV_MAX (1024 on Linux) buffers per call.
MAX_BUFFERS_PER_SEND = 1024


class OutBuffer:
    """FIFO of byte chunks with a read offset into the first one."""

    __slots__ = ("_chunks", "_offset", "limit", "pending")

    def __init__(self, limit: int = DEFAULT_MAX_PENDING) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.pending = 0  # bytes queued and not yet accepted by the kernel
        self._offset = 0  # bytes of _chunks[0] already sent
        # Created on first use and dropped when drained: an idle client
        # should cost a few bytes here, not an empty deque's ~600.
        self._chunks: deque[bytes | memoryview] | None = None

    def __bool__(self) -> bool:
        return self.pending > 0

    @property
    def over_limit(self) -> bool:
        """More than `limit` bytes are waiting."""
        return self.pending > self.limit

    def append(self, chunk: bytes | memoryview) -> None:
        """Queue `chunk` (not copied)."""
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.append(chunk)
        self.pending += len(chunk)

    def append_unsent(self, chunk: bytes, sent: int) -> None:
        """Queue the rest of `chunk`, whose first `sent` bytes a direct send took.

        Only for an empty queue (the fan-out fast path sends before it
        queues).  The chunk is kept whole with the read offset at `sent`,
        exactly as if it had been queued and then partly sent, so that a cut
        knows the wire stands inside this chunk and finishes it (a slice
        queued as a chunk of its own would look untouched, and be dropped).
        """
        if self.pending:
            raise ValueError("append_unsent on a queue that holds bytes")
        self._chunks = deque((chunk,))
        self._offset = sent
        self.pending = len(chunk) - sent

    def cut_to_line_end(self) -> int:
        """Drop everything queued except the rest of a partly sent line; return bytes dropped.

        Chunks hold whole lines, so a queue whose first chunk is untouched
        ends, on the wire, on a line boundary already: all of it can go.  If
        the kernel took part of the first chunk, the stream is in the middle
        of a line, and the rest of that line (up to its newline) is kept, so
        that the peer's stream still ends on a line boundary once it is sent.
        """
        chunks, offset = self._chunks, self._offset
        keep = b""
        if chunks and offset:
            rest = bytes(memoryview(chunks[0])[offset:])
            keep = rest[: rest.find(b"\n") + 1]  # chunks end with a newline
        dropped = self.pending - len(keep)
        self._chunks = None
        self._offset = 0
        self.pending = 0
        if keep:
            self.append(keep)
        return dropped

    def cut_to_chunk_end(self) -> int:
        """Drop everything queued except the rest of a partly sent chunk; return bytes dropped.

        For queues whose chunks are units of a wire protocol (a WebSocket
        frame, a TLS record), which must never be cut inside.
        """
        chunks, offset = self._chunks, self._offset
        keep = bytes(memoryview(chunks[0])[offset:]) if chunks and offset else b""
        dropped = self.pending - len(keep)
        self._chunks = None
        self._offset = 0
        self.pending = 0
        if keep:
            self.append(keep)
        return dropped

    def peek(self) -> list[bytes | memoryview]:
        """The unsent bytes as buffers for one `sendmsg` (at most IOV_MAX)."""
        chunks = self._chunks
        if not chunks:
            return []
        if len(chunks) == 1 and not self._offset:
            return [chunks[0]]
        out: list[bytes | memoryview] = []
        for chunk in chunks:
            out.append(chunk)
            if len(out) == MAX_BUFFERS_PER_SEND:
                break
        if self._offset:
            out[0] = memoryview(chunks[0])[self._offset :]
        return out

    def advance(self, sent: int) -> None:
        """Forget the first `sent` bytes: the kernel has taken them."""
        if sent > self.pending:
            raise ValueError("advanced past the queued bytes")
        self.pending -= sent
        chunks = self._chunks
        if chunks is None:
            return
        if not self.pending:
            self._chunks = None
            self._offset = 0
            return
        offset = self._offset + sent
        while offset >= len(chunks[0]):
            offset -= len(chunks.popleft())
        self._offset = offset
