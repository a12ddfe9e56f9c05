"""Logging that can never block the event loop.

A blocking `write()` to stderr stops the whole server when whatever reads
stderr stops reading: a wedged log shipper, a full journald pipe, a terminal
paused with Ctrl-S.  `LogSink` writes without blocking: what the sink does
not take at once waits in a small buffer, and when the buffer is full, new
lines are dropped and counted.  Once the sink drains again, one line says how
many were lost.  Service never waits for the log.

How "without blocking" is done depends on what stderr is:
- a pipe or a terminal: opened a second time through /proc/self/fd/2 with
  O_NONBLOCK.  That is a new open file description, so the flag is ours
  alone; setting O_NONBLOCK on fd 2 itself would also change it for the
  shell or the supervisor that shares it.
- a socket (journald's stdout stream): `send(MSG_DONTWAIT)`, non-blocking
  for that one call.
- a regular file: plain writes (a disk does not stop reading).

`--log-format json` changes only the formatting: one JSON object per line,
with the fields of the text line (time, level, message) and, on a line
about one client, the structured fields the call gave (`addr`, `reason`,
`queued_bytes`, ...: the `extra=` of the logging call).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable

BUFFER_LIMIT = 256 * 1024  # bytes of log output held while the sink does not drain
RETRY_SECONDS = 0.05  # how often the loop retries a sink that stopped draining


class LogSink(logging.Handler):
    """A logging handler writing to a descriptor without ever blocking."""

    def __init__(self, fd: int = 2, limit: int = BUFFER_LIMIT) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0  # records not written because the buffer was full
        self._pending = bytearray()
        self._write, self._close = _nonblocking_writer(fd)
        self.on_backlog: Callable[[], None] | None = None  # told when lines wait

    @property
    def backlog(self) -> int:
        """Bytes waiting for the sink to drain."""
        return len(self._pending)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:  # a bad format string in a log call
            self.handleError(record)
            return
        self.write(line)

    def write(self, data: bytes) -> None:
        """Queue `data` (whole lines) and write what the sink takes now."""
        had_backlog = bool(self._pending)
        if had_backlog:
            self.retry()
        if len(self._pending) + len(data) > self.limit:
            self.dropped += 1
            return
        self._pending += data
        self.retry()
        if self._pending and not had_backlog and self.on_backlog is not None:
            self.on_backlog()

    def retry(self) -> None:
        """Write what waits; once it is all out, report lines dropped meanwhile."""
        while self._pending:
            try:
                written = self._write(self._pending)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno == errno.EINTR:
                    continue
                # The reader is gone (EPIPE) or the sink is broken: there is
                # nobody to tell, so stop trying rather than fail the server.
                self.dropped += self._pending.count(b"\n")
                self._pending.clear()
                self._write = _discard
                return
            del self._pending[:written]
            if not self._pending and self.dropped:
                lines = "1 line" if self.dropped == 1 else f"{self.dropped} lines"
                note = f"log: {lines} dropped (the log output was not draining)\n"
                self.dropped = 0
                self._pending += note.encode()

    def drain(self, timeout: float = 1.0) -> None:
        """At exit: give the sink up to `timeout` seconds to take what waits."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            self.retry()
            if self._pending:
                time.sleep(0.01)

    def close(self) -> None:
        self.drain()
        self._close()
        super().close()


def _discard(data: bytes | bytearray) -> int:
    return len(data)


def _nonblocking_writer(
    fd: int,
) -> tuple[Callable[[bytes | bytearray], int], Callable[[], None]]:
    """A write function for `fd` that raises BlockingIOError instead of waiting."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return _discard, lambda: None
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))

        def send(data: bytes | bytearray) -> int:
            return sock.send(data, socket.MSG_DONTWAIT)

        return send, sock.close
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            own = -1
        if own >= 0:

            def write(data: bytes | bytearray) -> int:
                return os.write(own, data)

            return write, lambda: os.close(own)
    # A regular file (or no /proc): plain writes.
    return (lambda data: os.write(fd, data)), lambda: None


def keep_draining(
    sink: LogSink,
    call_later: Callable[[float, Callable[[], None]], object],
    interval: float = RETRY_SECONDS,
) -> None:
    """Have an event loop retry `sink` while lines wait in it.

    Without this, waiting lines (and the count of the lost ones) come out
    only when something new is logged, which in a quiet server may be never.
    One timer runs while the sink is stalled, none otherwise.
    """
    scheduled = False

    def retry() -> None:
        nonlocal scheduled
        scheduled = False
        sink.retry()
        if sink.backlog:
            schedule()

    def schedule() -> None:
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            call_later(interval, retry)

    sink.on_backlog = schedule
    if sink.backlog:
        schedule()


# What every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, message, and the call's `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        fields.update((k, v) for k, v in vars(record).items() if k not in _RECORD_FIELDS)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, default=str, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO 8601 with milliseconds and the UTC offset: '2026-05-09T07:35:25.123+00:00'."""
        del datefmt
        local = time.localtime(record.created)
        offset = time.strftime("%z", local)
        whole = time.strftime("%Y-%m-%dT%H:%M:%S", local)
        return f"{whole}.{int(record.msecs):03d}{offset[:3]}:{offset[3:]}"


def install(
    level: int, fmt: str = "%(asctime)s %(levelname)s %(message)s", json_lines: bool = False
) -> LogSink:
    """Route the `rat` logger to a non-blocking sink on stderr; return the sink.

    `json_lines`: one JSON object per line instead of `fmt` (--log-format json).
    """
    sys.stderr.flush()
    sink = LogSink(2)
    sink.setFormatter(JsonFormatter() if json_lines else logging.Formatter(fmt))
    logger = logging.getLogger("rat")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(sink)
    logger.setLevel(level)
    logger.propagate = False
    return sink


def announce(message: str) -> None:
    """Log `message` at INFO whatever the level (the `listening on` line)."""
    logger = logging.getLogger("rat")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None)
    for handler in logger.handlers:
        handler.handle(record)
