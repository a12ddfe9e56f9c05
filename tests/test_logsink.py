"""The non-blocking log sink, on a real pipe that nobody reads.

A pipe holds a few kilobytes; past that a blocking `write()` would stop the
whole server.  `LogSink` must never block: it keeps a bounded backlog, drops
and counts lines past it, and once the pipe drains it writes the backlog and
then one line saying how many lines were lost.  `keep_draining` lets the
event loop retry a stalled sink, so that the backlog (and the report) comes
out even when nothing else is logged.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator

import pytest

from rat.logsink import LogSink, keep_draining

PIPE_SIZE = 4096


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """(read end, write end) of a pipe of `PIPE_SIZE` bytes where the system allows."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (AttributeError, OSError):
        pass
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


def read_all(fd: int) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(out)
        out += chunk


def drain_sink(sink: LogSink, fd: int) -> bytes:
    """Read the pipe and let the sink retry until it has reported its losses."""
    got = bytearray()
    for _ in range(100):
        got += read_all(fd)
        sink.retry()
        if b"dropped" in got:
            break
    return bytes(got + read_all(fd))


def record(text: str) -> logging.LogRecord:
    return logging.LogRecord("rat", logging.INFO, __file__, 0, text, (), None)


def make_sink(fd: int, limit: int) -> LogSink:
    sink = LogSink(fd, limit=limit)
    sink.setFormatter(logging.Formatter("%(message)s"))
    return sink


def test_a_full_pipe_costs_lines_not_time(pipe: tuple[int, int]) -> None:
    r, w = pipe
    sink = make_sink(w, limit=8192)
    line = "x" * 99  # 100 bytes with the newline
    started = time.monotonic()
    for n in range(2000):  # 200 kB into a pipe of a few kB
        sink.handle(record(f"{n:04d}{line[4:]}"))
    assert time.monotonic() - started < 2.0  # a blocking write would hang here forever
    assert sink.dropped > 0
    assert 0 < sink.backlog <= 8192
    dropped = sink.dropped

    # Drained, the sink writes what waited, in order, then the count of lost lines.
    lines = drain_sink(sink, r).splitlines()
    numbers = [int(line[:4]) for line in lines[:-1]]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert len(numbers) + dropped == 2000
    assert lines[-1] == f"log: {dropped} lines dropped (the log output was not draining)".encode()
    sink.close()


def test_one_dropped_line_is_reported_in_the_singular(pipe: tuple[int, int]) -> None:
    r, w = pipe
    sink = make_sink(w, limit=100)
    while not sink.backlog:  # fill the pipe
        sink.handle(record("f" * 50))
    while sink.backlog + 51 <= 100:  # then the backlog
        sink.handle(record("b" * 50))
    sink.handle(record("d" * 60))  # cannot fit: dropped
    assert sink.dropped == 1
    got = drain_sink(sink, r)
    assert re.search(rb"log: 1 line dropped \(", got), bytes(got[-100:])
    sink.close()


class FakeTimers:
    """`call_later` for `keep_draining`, run by the test."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        self.due.append((delay, callback))
        return callback

    def run(self) -> int:
        due, self.due = self.due, []
        for _, callback in due:
            callback()
        return len(due)


def test_the_loop_drains_a_stalled_sink_without_new_log_lines(pipe: tuple[int, int]) -> None:
    r, w = pipe
    sink = make_sink(w, limit=4096)
    timers = FakeTimers()
    keep_draining(sink, timers.call_later)
    for _ in range(200):
        sink.handle(record("s" * 79))
    assert sink.backlog and sink.dropped
    assert len(timers.due) == 1, "one retry is scheduled, however many lines wait"
    # The pipe is still full: the retry finds nothing to do and looks again later.
    timers.run()
    assert len(timers.due) == 1
    # Someone reads the pipe: the next retries write the backlog and the report.
    got = bytearray()
    for _ in range(100):
        got += read_all(r)
        if not timers.run():
            break
    got += read_all(r)
    assert not sink.backlog
    assert re.search(rb"log: \d+ lines dropped", got), bytes(got[-100:])
    assert not timers.due, "retries stop once the backlog is written"
    # A new stall schedules a new retry.
    while not sink.backlog:
        sink.handle(record("again"))
    assert len(timers.due) == 1
    read_all(r)
    sink.close()


def test_a_long_stall_is_reported_once(pipe: tuple[int, int]) -> None:
    """However many lines a stall costs and however often the sink retries, one report."""
    r, w = pipe
    sink = make_sink(w, limit=1024)
    for n in range(500):  # many drops, with retries of the stalled sink between them
        sink.handle(record(f"stalled {n:03d}" + "s" * 40))
        sink.retry()
    dropped = sink.dropped
    assert dropped > 100
    got = drain_sink(sink, r)
    reports = re.findall(rb"log: \d+ lines? dropped[^\n]*\n", got)
    assert reports == [f"log: {dropped} lines dropped (the log output was not draining)\n".encode()]
    assert got.endswith(reports[0]), "the report comes after the lines that were kept"
    assert sink.dropped == 0
    # With the sink draining, later lines go through with no further report.
    for n in range(20):
        sink.handle(record(f"after {n}"))
        got = read_all(r)
        assert got == f"after {n}\n".encode()
    sink.close()
