"""Tokens (`--token-file`): a client is heard only after `AUTH <token>`.

With a token file, every client's first line must be `AUTH <token>`, within
`AUTH_TIMEOUT` seconds of being ready (accepted; for TLS or WebSocket, once
its handshake is done).  A right token gets `* ok` and the client becomes a
normal one (in chat mode it then gets the greeting).  A wrong or missing
token, or none in time, gets `ERR auth failed` and a graceful close (reason
`auth`).  Until then the client is *not a member of any room*: nothing it
sends is relayed and no broadcast reaches it.

Where the gate sits
-------------------
A connection becomes a member through `Server.join(conn)` and hands its
complete lines to `Server.publish_lines(conn, block)`; every kind of
connection (TCP, TLS, WebSocket) and every server (the plain one, chat
mode's) goes through those two calls.  `TokenGate.install(server)` puts
itself in front of both, on that one server object, and keeps the
server's own methods to call once a client is through:

    conn ready  -> gate.join           (wait for AUTH; start the deadline)
    first line  -> gate.publish_lines  (check it; `* ok`; server's own join)
    later lines -> gate.publish_lines  -> the server's own publish_lines

So chat mode needs to know nothing of tokens, and without `--token-file`
nothing of this module is even imported.  Lines arrive whole from the
framer, so an `AUTH` line sent in fragments, one byte at a time, is
checked once, when its newline arrives.

Comparing tokens
----------------
`hmac.compare_digest` takes the same time whatever the bytes, but only for
inputs of equal length, so both sides are hashed first (SHA-256: 32 bytes
each), and the candidate is compared with *every* token, with no early
exit: the time taken says neither how much of a token was right nor which
token matched.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging

from rat.connection import OPEN, Conn
from rat.hub import Room
from rat.server import Server, plural
from rat.timers import Timer

log = logging.getLogger("rat")

AUTH_TIMEOUT = 5.0  # seconds from ready to a complete AUTH line (SPEC)
AUTH_COMMAND = b"AUTH"
OK_LINE = b"* ok\n"
ERR_AUTH_FAILED = b"ERR auth failed\n"


class TokenFileError(Exception):
    """A token file rat cannot use; the message is one line naming it."""


def read_tokens(path: str) -> list[bytes]:
    """The tokens in `path`: one per line, blank lines and `#` comments ignored.

    Surrounding whitespace (a trailing `\\r`, indentation) is not part of a
    token.  Raises `TokenFileError` if the file cannot be read or holds none.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as err:
        raise TokenFileError(f"cannot read token file {path}: {err.strerror or err}") from None
    tokens = []
    for raw in text.split(b"\n"):
        line = raw.strip()
        if line and not line.startswith(b"#"):
            tokens.append(line)
    if not tokens:
        raise TokenFileError(f"token file {path} holds no tokens (one per line, # comments)")
    return tokens


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class Tokens:
    """The accepted tokens (kept as digests), their check, and their reload (SIGHUP)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._digests = [_digest(t) for t in read_tokens(path)]  # raises TokenFileError

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, candidate: bytes) -> bool:
        """Is `candidate` one of the tokens?  Constant time (see the module docstring)."""
        digest = _digest(candidate)
        found = False
        for known in self._digests:  # every one, no early exit
            found |= hmac.compare_digest(digest, known)
        return found

    def reload(self) -> bool:
        """Read the file again; on failure keep the tokens we have and log why."""
        try:
            digests = [_digest(t) for t in read_tokens(self.path)]
        except TokenFileError as err:
            log.error(
                "token reload failed, keeping the old %s: %s", plural(len(self), "token"), err
            )
            return False
        self._digests = digests
        log.info("tokens reloaded from %s (%s)", self.path, plural(len(digests), "token"))
        return True


def parse_auth(line: bytes) -> bytes | None:
    """The token in an `AUTH <token>` line (newline included or not), or None."""
    command, _, token = line.rstrip(b"\r\n").partition(b" ")
    if command.upper() != AUTH_COMMAND:
        return None
    token = token.strip()
    return token or None


class TokenGate:
    """Holds each client at the door until its `AUTH` line (see the module docstring)."""

    def __init__(self, tokens: Tokens, timeout: float = AUTH_TIMEOUT) -> None:
        self.tokens = tokens
        self.timeout = timeout
        # Clients ready but not through yet, with their deadlines.
        self.waiting: dict[Conn, Timer] = {}
        self.failed = 0  # clients refused (wrong, missing or late token)

    def install(self, server: Server) -> None:
        """Stand in front of `server.join` and `server.publish_lines` (its own kept)."""
        self.server = server
        self.join_member = server.join
        self.publish_member = server.publish_lines
        # Instance attributes win over the class's methods: the connections'
        # `self.server.join(self)` now reaches the gate first.
        server.join = self.join  # type: ignore[method-assign]
        server.publish_lines = self.publish_lines  # type: ignore[method-assign]
        server.reloaders.append(self.tokens.reload)

    def join(self, conn: Conn, room: Room | None = None) -> None:
        """`conn` is ready: wait for its AUTH line (called again while waiting: no-op)."""
        del room  # the server's own join decides the room once the client is through
        if conn in self.waiting or conn.state != OPEN:
            return
        loop = self.server.loop
        self.waiting[conn] = loop.call_later(self.timeout, functools.partial(self._late, conn))

    def publish_lines(self, conn: Conn, block: bytes) -> None:
        """Lines from `conn`: a member's go on; a waiting client's first is its AUTH."""
        if conn.room is not None:
            self.publish_member(conn, block)
            return
        timer = self.waiting.pop(conn, None)
        if timer is None:
            return  # not ready, or refused already: nothing it sends is relayed
        self.server.loop.cancel(timer)
        line, _, rest = block.partition(b"\n")
        token = parse_auth(line)
        if token is None or not self.tokens.check(token):
            why = "wrong token" if token is not None else "no AUTH line"
            self._refuse(conn, why)
            return
        conn.send_lines(OK_LINE)  # in its wire format (a layered one encodes it)
        if conn.state != OPEN:
            return
        self.join_member(conn)
        if rest and conn.state == OPEN:
            self.publish_member(conn, rest)  # lines sent after the AUTH line

    def _late(self, conn: Conn) -> None:
        if self.waiting.pop(conn, None) is not None and conn.state == OPEN:
            self._refuse(conn, f"no AUTH line within {self.timeout:g}s")

    def _refuse(self, conn: Conn, why: str) -> None:
        self.failed += 1
        log.info("disconnect %s: auth failed (%s)", conn.addr, why)
        conn.close_gracefully("auth", ERR_AUTH_FAILED)
