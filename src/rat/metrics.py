"""What the server measures on its hot paths, kept cheap enough to leave on.

Two kinds of measurement live here, both pure (no sockets, no clocks of
their own: callers pass the time):

`Backlog`: how far behind one client is
---------------------------------------
A client's *lag* is the age of its oldest unsent byte: how long ago the
server queued the byte that the client's socket will take next.  A client
that reads as fast as lines arrive has no lag (nothing waits in its queue);
a client that stopped reading has the lag of the moment it stopped.

To know that age, the queue must remember when its bytes were queued.  The
fan-out fast path (`rat.server`) must not pay for it, and an idle client must
not carry it, so a `Backlog` exists only while a client has bytes waiting,
and only from the first time the client's own write path (`Conn.queue`,
`Conn.flush`) runs with bytes waiting: a connection whose queue empties
drops it.  It keeps *stamps*, (stream position, time) pairs: "the bytes up to
this position were queued at that time", where a position counts the bytes
queued since the backlog began.  The kernel taking `n` bytes moves the head
of the stream forward by `n`; the oldest stamp whose position lies beyond the
head gives the lag.

Stamps close together in time are merged (the newer bytes keep the older
time), within 1 ms or 1/64 of the current lag, whichever is more.  The lag is
then at most that much too high, and a client behind by a minute keeps a few
hundred stamps, not one per line.

The same object measures how fast the client drains (bytes the kernel took
per second) and how fast its queue grows, over the last one to two seconds:
enough to say how long it has before `--max-pending` or `--write-timeout`
cuts it, and for the log line that says why it was cut.

`Observer`: per-client statistics, only with --admin
----------------------------------------------------
Per-client line counts need a hook where lines come in and where clients
join and leave rooms; without `--admin` nobody is listening, and each hook is
one `is None` test on a path that runs per read or per join, never per
receiver on the fan-out.  `rat.admin.telemetry` implements the protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rat.hub import Room, Turn

STAMP_RESOLUTION = 0.001  # seconds: stamps closer than this are merged
STAMP_SHARE = 1 / 64  # ... or closer than this share of the current lag
RATE_WINDOW = 1.0  # seconds: rates are measured over one to two of these


class Backlog:
    """When a client's waiting bytes were queued, and how fast they drain."""

    __slots__ = ("_last", "_newer", "_older", "_stamps", "sent")

    def __init__(self, pending: int, since: float, sent: int = 0) -> None:
        """`pending` bytes wait, queued at `since`; `sent` bytes queued with them already went."""
        self.sent = sent  # bytes the kernel took since the backlog began
        # (stream position where bytes queued at `time` end, time), oldest first.
        self._stamps: deque[tuple[int, float]] = deque([(sent + pending, since)])
        # Rate marks (time, sent, pending): the start of the previous and of
        # the current window.  Rates span from the older one to now.
        self._older = self._newer = (since, 0, sent + pending)
        self._last = since  # the last time bytes were queued or taken

    def queued(self, pending: int, now: float) -> None:
        """Bytes were queued at `now`; `pending` bytes are waiting now."""
        end = self.sent + pending
        stamps = self._stamps
        last_time = stamps[-1][1]
        if now - last_time <= max(STAMP_RESOLUTION, (now - stamps[0][1]) * STAMP_SHARE):
            stamps[-1] = (end, last_time)  # merged: the new bytes keep the older time
        else:
            stamps.append((end, now))
        self._tick(pending, now)

    def took(self, sent: int, pending: int, now: float) -> None:
        """The kernel took `sent` bytes at `now`; `pending` are still waiting."""
        self.sent += sent
        stamps = self._stamps
        # Forget stamps the head has passed (the last one stays: see `lag`).
        while len(stamps) > 1 and stamps[0][0] <= self.sent:
            stamps.popleft()
        self._tick(pending, now)

    def lag(self, now: float) -> float:
        """Seconds since the oldest waiting byte was queued."""
        stamps = self._stamps
        while len(stamps) > 1 and stamps[0][0] <= self.sent:
            stamps.popleft()
        # Bytes past the last stamp (a closing connection's final ERR line)
        # were queued later than it: its time is an upper bound on their lag.
        return max(0.0, now - stamps[0][1])

    def rates(self, pending: int, now: float) -> tuple[float, float] | None:
        """(bytes/s the kernel took, bytes/s the queue grew) lately; None if no time passed."""
        if now - self._last >= RATE_WINDOW:
            # Nothing was queued or taken for a whole window: both rates are 0
            # now, whatever they were (the marks only move when bytes do).
            return 0.0, 0.0
        when, sent, queued = self._older
        span = now - when
        if span <= 0:
            return None
        return (self.sent - sent) / span, (pending - queued) / span

    def _tick(self, pending: int, now: float) -> None:
        self._last = now
        if now - self._newer[0] >= RATE_WINDOW:
            self._older = self._newer
            self._newer = (now, self.sent, pending)


def time_to_cut(
    *,
    pending: int,
    limit: int,
    growth: float | None,
    last_progress: float,
    write_timeout: float,
    now: float,
) -> tuple[float | None, float | None]:
    """Seconds until --max-pending and until --write-timeout would cut a client.

    --max-pending: at the queue's current growth; None if it is not growing.
    --write-timeout: if the client takes nothing more from now on; None if
    nothing is queued (the timeout only runs while bytes wait).
    """
    if not pending:
        return None, None
    by_limit = max(0.0, (limit - pending) / growth) if growth is not None and growth > 0 else None
    return by_limit, max(0.0, last_progress + write_timeout - now)


def human_bytes(count: float) -> str:
    """'512 B', '1.5 KiB', '8.0 MiB'."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_rate(per_second: float | None) -> str:
    """'12.0 KiB/s'; 'unknown' when there is no rate yet."""
    return "unknown" if per_second is None else f"{human_bytes(per_second)}/s"


def label(reason: str) -> str:
    """A close or refusal reason as a metrics label: lower case, [a-z0-9_] only."""
    text = "".join(c if c.isascii() and c.isalnum() else "_" for c in reason.lower())
    return text.strip("_") or "unknown"


class Observer(Protocol):
    """Told about clients and rooms by the server and the hub (rat.admin.telemetry)."""

    def accepted(self, conn: Hashable, now: float) -> None:
        """A client was admitted (before it joins a room)."""

    def lines_received(self, conn: Hashable, block: bytes) -> None:
        """Complete lines arrived from `conn` (before they are published)."""

    def joined(self, member: Hashable, room: Room) -> None:
        """`member` joined `room` (the hub, for plain and chat mode alike)."""

    def left(self, member: Hashable, room: Room) -> None:
        """`member` left `room`: it changed rooms, or it is closing."""

    def turn(self, room: Room, turn: Turn) -> None:
        """`turn` is about to be delivered to `room`'s members."""

    def closed(self, conn: Hashable, now: float) -> None:
        """`conn` is closed (its socket is still open for a last look)."""
