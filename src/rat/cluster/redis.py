"""The Redis link: PUBLISH this node's turns, SUBSCRIBE to everyone's, inside rat's loop.

Theory of operation
===================
Two non-blocking TCP connections to one Redis, both handlers on the
server's own loop (`rat.cluster.stream.Stream`), no thread, no client
library:

- the *publisher* writes each turn's messages as pipelined `PUBLISH`
  commands, all in one `send` (the backplane calls `send` once per turn),
  and reads the integer replies only to keep its socket drained;
- the *subscriber* sends `SUBSCRIBE rat` (`--chat`: `PSUBSCRIBE rat:#*`,
  see below) and from then on only reads: every message it gets goes to the
  backplane, which drops the node's own and delivers the rest.

A subscribed connection cannot publish (Redis allows only (P)SUBSCRIBE,
PING and the like on it), hence two.  Replies are parsed by `hiredis.Reader`
(`rat.cluster.resp`).

Rooms and channels (`--chat`)
-----------------------------
A room's lines go to the channel `<channel>:<room>` (`rat:#lobby`).  Each
node subscribes to all of them with one pattern, `rat:#*`, rather than to
each room it has members in.  The alternative (SUBSCRIBE when a room gets
its first local member, UNSUBSCRIBE when it loses its last) saves a node
the messages of rooms it does not host, but every join and leave would
become a round trip to Redis, and a member who joins would miss what was
published before Redis took the SUBSCRIBE.  With one pattern, a join is
local and immediate, and a message for a room with no local member costs a
dictionary lookup and is dropped (counted as `unrouted`).  At the scale rat
aims at (a few nodes, rooms spread over all of them) that is the better
trade; a deployment with thousands of rooms each on one node would want
the other.  Without `--chat` there is one room and one channel, `rat`.

Outages
-------
Any failure of either connection (refused, reset, EOF, an error reply, a
connect that takes longer than `CONNECT_TIMEOUT`) closes both and retries
after a capped exponential back-off with jitter (`rat.cluster.backoff`).
Whatever was queued for the old publisher is dropped, not sent again: Redis
may have published part of it, and resending would deliver lines twice.
One warning line when the link is lost, one when it is back (with how long
it was down and how many lines reached local clients only meanwhile); the
attempts in between are logged at debug.

The Redis database number in the URL is selected on the subscriber (so a
wrong one is reported), but Redis pub/sub ignores databases: nodes on
different databases of one Redis still hear each other.  Use
`--redis-channel` to keep clusters apart.

The host name is resolved once, when the server starts (a name lookup
blocks, and the loop must not): a Redis that moves to another address
needs a restart of rat.
"""

from __future__ import annotations

import logging
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from rat.cluster.backoff import RECONNECT_CAP, RECONNECT_JITTER, backoff_delay
from rat.cluster.backplane import Backplane, Outgoing
from rat.cluster.resp import (
    CRLF,
    PROTOCOL_ERRORS,
    REPLY_ERRORS,
    Reader,
    command,
    make_reader,
    publish_head,
    reader_name,
)
from rat.cluster.stream import Stream, start_connect
from rat.loop import Loop
from rat.net import enable_keepalive, format_addr
from rat.timers import Timer

log = logging.getLogger("rat")

DEFAULT_REDIS_PORT = 6379
CONNECT_TIMEOUT = 5.0  # seconds for both connections to be connected and subscribed
# What the publisher may hold unsent before turns are refused (counted, logged).
DEFAULT_OUTPUT_LIMIT = 8 * 1024 * 1024

_GLOB_SPECIAL = re.compile(rb"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is: parsed from `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`."""

    host: str
    port: int = DEFAULT_REDIS_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # never shows the password
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_url(text: str) -> RedisAddress:
    """`redis://HOST:PORT[/DB]` -> RedisAddress; ValueError with a readable reason."""
    parts = urlsplit(text)
    if parts.scheme != "redis":
        if parts.scheme == "rediss":
            raise ValueError(f"{text!r}: TLS to Redis (rediss://) is not supported")
        raise ValueError(f"{text!r}: expected redis://HOST:PORT[/DB]")
    try:
        port = parts.port or DEFAULT_REDIS_PORT
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{text!r}: no host (expected redis://HOST:PORT[/DB])")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{text!r}: the database must be a number, got {path!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: options after ? or # are not supported")
    return RedisAddress(
        host=parts.hostname,
        port=port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def resolve(address: RedisAddress) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, sockaddr) for each address of the Redis host (blocking: call at start)."""
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


class _RedisStream(Stream):
    """One of the link's two connections; replies go to the link."""

    __slots__ = ("link", "reader")

    def __init__(self, loop: Loop, sock: socket.socket, name: str, link: RedisLink) -> None:
        super().__init__(loop, sock, name, connected=False)
        self.link: RedisLink | None = link
        self.reader: Reader = make_reader()

    def on_connected(self) -> None:
        enable_keepalive(self.sock)  # a Redis host that vanishes is noticed
        if self.link is not None:
            self.link.connected(self)

    def on_data(self, view: memoryview) -> None:
        reader = self.reader
        reader.feed(view)
        link = self.link
        while link is not None and not self.closed:
            try:
                reply = reader.gets()
            except PROTOCOL_ERRORS as err:
                self.lose(f"not the Redis protocol ({err})")
                return
            if reply is False:
                return
            link.reply(self, reply)

    def on_lost(self, reason: str) -> None:
        if self.link is not None:
            self.link.failed(f"{self.name}: {reason}")


class RedisLink:
    """The backplane's link through one Redis (see the module doc)."""

    def __init__(
        self,
        loop: Loop,
        backplane: Backplane,
        address: RedisAddress,
        channel: str,
        *,
        rooms: bool,
        addrinfo: list[tuple[int, tuple[Any, ...]]],
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.loop = loop
        self.backplane = backplane
        self.address = address
        self.channel = channel.encode()
        self.rooms = rooms  # one channel per room (chat mode), else one channel
        self.addrinfo = addrinfo
        self.output_limit = output_limit
        self.rand = rand
        self.pub: _RedisStream | None = None
        self.sub: _RedisStream | None = None
        self._up = False
        self._subscribed = False
        self._ever_up = False
        self._failures = 0  # consecutive failed attempts
        self._outage_since: float | None = None  # when the current outage began
        self._outage_dropped = 0  # backplane's dropped_disconnected at that moment
        self._timer: Timer | None = None  # the connect timeout, or the next attempt
        self._next_addr = 0
        self._closed = False
        if rooms:
            pattern = _GLOB_SPECIAL.sub(rb"\\\1", self.channel) + b":#*"
            self._subscribe = command(b"PSUBSCRIBE", pattern)
        else:
            self._subscribe = command(b"SUBSCRIBE", self.channel)
        self._room_channels: dict[str, bytes] = {}

    @property
    def up(self) -> bool:
        return self._up

    def start(self) -> None:
        """Connect (asynchronously); the server serves its own clients meanwhile."""
        self._connect()

    def describe(self) -> str:
        return f"{self.address} channel {self.channel.decode()}"

    # ---------------------------------------------------------------- out

    def send(self, messages: list[Outgoing]) -> bool:
        """One turn's messages as pipelined PUBLISH commands, one write."""
        pub = self.pub
        if pub is None or not self._up:
            return False
        if pub.pending > self.output_limit:
            return False
        chunks: list[bytes | memoryview] = []
        for room, head, payload in messages:
            chunks += (
                publish_head(self._channel_for(room), len(head) + len(payload)),
                head,
                payload,
                CRLF,
            )
        pub.queue(chunks)
        return True

    def _channel_for(self, room: str) -> bytes:
        if not self.rooms:
            return self.channel
        channel = self._room_channels.get(room)
        if channel is None:
            if len(self._room_channels) > 10000:
                self._room_channels.clear()  # a cache, not a record of every room ever
            channel = self._room_channels[room] = self.channel + b":" + room.encode()
        return channel

    # ----------------------------------------------------------- connecting

    def _connect(self) -> None:
        self._timer = None
        if self._closed:
            return
        family, sockaddr = self.addrinfo[self._next_addr % len(self.addrinfo)]
        self._next_addr += 1
        where = format_addr(sockaddr[:2])
        try:
            pub_sock = start_connect(family, sockaddr)
        except OSError as err:
            self.failed(err.strerror or str(err))
            return
        try:
            sub_sock = start_connect(family, sockaddr)
        except OSError as err:
            pub_sock.close()
            self.failed(err.strerror or str(err))
            return
        self.pub = _RedisStream(self.loop, pub_sock, f"redis-pub {where}", self)
        self.sub = _RedisStream(self.loop, sub_sock, f"redis-sub {where}", self)
        self._subscribed = False
        self._timer = self.loop.call_later(CONNECT_TIMEOUT, self._timed_out)

    def connected(self, stream: _RedisStream) -> None:
        """A connection's connect completed: say who we are, and subscribe."""
        hello: list[bytes | memoryview] = []
        address = self.address
        if address.password is not None:
            auth = [b"AUTH", address.password.encode()]
            if address.username:
                auth.insert(1, address.username.encode())
            hello.append(command(*auth))
        if stream is self.sub:
            if address.db:
                hello.append(command(b"SELECT", b"%d" % address.db))
            hello.append(self._subscribe)
        if hello:
            stream.queue(hello)
        self._maybe_up()

    def reply(self, stream: _RedisStream, reply: Any) -> None:
        """A reply on one of our connections."""
        if isinstance(reply, REPLY_ERRORS):
            self.failed(f"Redis said: {reply}")
            return
        if stream is self.pub:
            return  # PUBLISH's count of receivers (and AUTH's OK)
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self.backplane.receive(reply[2])
                return
            if kind == b"pmessage" and len(reply) == 4:
                self.backplane.receive(reply[3])
                return
            if kind in (b"subscribe", b"psubscribe"):
                self._subscribed = True
                self._maybe_up()
        # +OK for AUTH and SELECT: nothing to do.

    def _maybe_up(self) -> None:
        if self._up or not self._subscribed or self.pub is None or not self.pub.connected:
            return
        self._up = True
        self.loop.cancel(self._timer)
        self._timer = None
        self._failures = 0
        backplane = self.backplane
        if self._outage_since is None:
            log.info(
                "cluster: connected to %s (channel %s%s, node %s, replies parsed by %s)",
                self.address,
                self.channel.decode(),
                ", one per room" if self.rooms else "",
                backplane.origin.decode(),
                reader_name(),
            )
        else:
            down_for = self.loop.clock() - self._outage_since
            dropped = backplane.counters.dropped_disconnected - self._outage_dropped
            log.warning(
                "cluster: %s %s after %.1f s; %s published meanwhile reached this"
                " node's clients only",
                "back on" if self._ever_up else "connected to",
                self.address,
                down_for,
                f"{dropped} line" if dropped == 1 else f"{dropped} lines",
            )
            self._outage_since = None
            if self._ever_up:
                backplane.on_link_back()
        self._ever_up = True

    def _timed_out(self) -> None:
        self._timer = None
        self.failed(f"no answer within {CONNECT_TIMEOUT:g} s")

    # ------------------------------------------------------------- failure

    def failed(self, reason: str) -> None:
        """Either connection failed: close both, log (once per outage), retry later."""
        if self._closed:
            return
        was_up = self._up
        self._up = False
        unsent = self._close_streams()
        self.loop.cancel(self._timer)
        if self._outage_since is None:
            self._outage_since = self.loop.clock()
            self._outage_dropped = self.backplane.counters.dropped_disconnected
            if was_up:
                log.warning(
                    "cluster: lost %s: %s%s; serving this node's clients only,"
                    " reconnecting (back-off up to %g s)",
                    self.address,
                    reason,
                    f" ({unsent} bytes of forwarded lines not sent)" if unsent else "",
                    RECONNECT_CAP,
                )
                self.backplane.on_link_down()
            else:
                log.warning(
                    "cluster: cannot reach %s: %s; serving this node's clients only,"
                    " retrying (back-off up to %g s)",
                    self.address,
                    reason,
                    RECONNECT_CAP,
                )
        else:
            log.debug("cluster: attempt to reach %s failed: %s", self.address, reason)
        delay = backoff_delay(self._failures, jitter=RECONNECT_JITTER, rand=self.rand())
        self._failures += 1
        self._timer = self.loop.call_later(delay, self._connect)

    def _close_streams(self) -> int:
        unsent = 0
        for stream in (self.pub, self.sub):
            if stream is not None:
                stream.link = None  # its on_lost must not call us again
                unsent += stream.close()
        self.pub = self.sub = None
        return unsent

    def close(self) -> None:
        """At exit: one last try to send what is queued, then close."""
        self._closed = True
        self.loop.cancel(self._timer)
        if self.pub is not None and self.pub.pending and self.pub.connected:
            self.pub.flush()
        self._close_streams()
