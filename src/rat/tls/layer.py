"""TLS as a sans-IO layer: an `ssl.SSLObject` between two memory buffers.

`ssl.SSLContext.wrap_bio(incoming, outgoing)` gives an `SSLObject`: the
whole of TLS (handshake, records, alerts, close_notify) with no socket
behind it.  We write the bytes the socket gave us into `incoming`, ask the
object for plaintext (`read`), hand it plaintext to encrypt (`write`), and
take what it wants on the wire out of `outgoing`.  The socket stays the
connection's, and stays the loop's only source of readiness: the layer
never blocks and never waits for anything but more bytes.

    socket -> recv -> incoming BIO -> SSLObject.read  -> lines    (receive)
    lines  -> SSLObject.write -> outgoing BIO -> queue -> send    (encode)

Edge triggering and TLS's own buffer
------------------------------------
With edge-triggered epoll a connection reads until the kernel says
`BlockingIOError`, because no new event comes for bytes already waiting.
TLS adds a second place where bytes wait: `SSLObject.read()` decrypts and
returns at most one record per call, and whatever else we fed in (more
records, half a record) stays inside OpenSSL.  The kernel knows nothing of
it, so no event will ever come for it either: if we stopped after one
`read()`, the plaintext of the second record in a segment would sit there
until the client happened to send again, and a client that sent its last
lines and waits for the answers would wait forever.  So after every feed
`receive` calls `read()` until `SSLWantReadError` ("feed me more"), which
means everything fed so far has been decrypted and handed on.

The same holds for output: `write()` encrypts into `outgoing`, and the
handshake, session tickets and alerts land there too, so the connection
asks `outgoing()` after every feed and sends what is there.

Costs
-----
A broadcast cannot share encryption: every session has its own keys, so a
turn is encrypted once per TLS receiver (one `write`, then one read of the
outgoing buffer: a few records, one chunk to queue).  The handshake is the
expensive part of a TLS connection (a public-key operation on the server);
a connection that stalls in it costs a timer and nothing else until the
timeout (`Layer.handshake_timeout`, 10 s).
"""

from __future__ import annotations

import ssl

from rat.hub import Turn
from rat.layer import Layer, LayerError

# Plaintext asked for per `SSLObject.read`: a TLS record carries at most 16 KiB,
# so this takes any record whole (a bigger ask would only allocate more).
READ_SIZE = 64 * 1024


class TLSLayer(Layer):
    """One TLS session (server side) over memory buffers; see the module docstring."""

    __slots__ = ("_closed", "_incoming", "_obj", "_outgoing", "_ready")

    name = "tls"
    handshake_timeout = 10.0
    seals = True  # records carry sequence numbers: ciphertext is never dropped

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._ready = False
        self._closed = False  # the peer sent close_notify

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def finished(self) -> bool:
        return self._closed

    @property
    def version(self) -> str | None:
        """The protocol version agreed on ('TLSv1.3'), once ready."""
        return self._obj.version()

    def receive(self, data: bytes) -> bytes:
        """Ciphertext in; all the plaintext it completes out (see "Edge triggering")."""
        self._incoming.write(data)
        obj = self._obj
        if not self._ready:
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""  # the handshake needs more bytes; `outgoing` has our part
            except ssl.SSLError as err:
                raise LayerError("tls_handshake", _describe(err)) from None
            self._ready = True
            # Bytes after the client's Finished (its first lines) were fed
            # already: fall through and read them now, no event will come.
        chunks: list[bytes] = []
        while True:
            try:
                chunk = obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break  # all that was fed is decrypted
            except ssl.SSLZeroReturnError:
                self._closed = True  # close_notify (how some versions report it)
                break
            except ssl.SSLError as err:
                raise LayerError("tls_error", _describe(err), b"".join(chunks)) from None
            if not chunk:
                # b"" without an exception: the peer's close_notify, it sends
                # nothing more (TLS tells a clean end from a cut connection).
                self._closed = True
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def outgoing(self) -> bytes:
        """Handshake messages, session tickets, alerts: whatever TLS wants sent."""
        return self._outgoing.read()

    def encode(self, data: bytes) -> bytes:
        """Encrypt `data`: one `write` (split into records by TLS), one read of the buffer.

        A memory buffer never refuses bytes, so `write` takes all of `data` at
        once; what comes out also carries anything TLS had pending before.
        """
        if data:
            self._obj.write(data)
        return self._outgoing.read()

    def encode_turn(self, turn: Turn) -> bytes:
        """A turn for this receiver: its own encryption (nothing to share across keys)."""
        self._obj.write(turn.data)
        return self._outgoing.read()

    def farewell(self, message: bytes, reason: str) -> bytes:
        """`message` encrypted, then our close_notify (or, mid-handshake, any alert)."""
        del reason
        if not self._ready:
            return self._outgoing.read()
        try:
            if message:
                self._obj.write(message)
            self._obj.unwrap()  # writes close_notify; it would wait for the peer's
        except ssl.SSLWantReadError:
            pass  # we do not wait: the connection's close does the waiting
        except ssl.SSLError:
            pass  # the session is broken already (a bad record): nothing more to say
        return self._outgoing.read()


def _describe(err: ssl.SSLError) -> str:
    """A one-line reason from an SSLError ('wrong version number', 'http request')."""
    reason = getattr(err, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(err.args[1] if len(err.args) > 1 else err)
