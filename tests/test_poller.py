"""One contract, every poller backend: real socketpairs, real EAGAIN."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from rat.poller import HANGUP, READABLE, WRITABLE, Poller, describe_mask, make_poller


@pytest.fixture(params=["epoll", "select"])
def poller(request: pytest.FixtureRequest) -> Iterator[Poller]:
    p = make_poller(str(request.param))
    yield p
    p.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def fill(sock: socket.socket) -> int:
    """Write until the kernel says EAGAIN; return how much went in."""
    total = 0
    while True:
        try:
            total += sock.send(b"x" * 65536)
        except BlockingIOError:
            return total


def drain(sock: socket.socket) -> int:
    total = 0
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return total
        if not data:
            return total
        total += len(data)


def events_for(poller: Poller, fd: int, timeout: float = 0.2) -> int:
    return sum(mask for got, mask in poller.poll(timeout) if got == fd)


def test_readable_when_data_arrives(poller: Poller, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    poller.register(a.fileno(), READABLE)
    assert events_for(poller, a.fileno(), 0.05) == 0
    b.send(b"hi\n")
    assert events_for(poller, a.fileno()) & READABLE


def test_writable_only_when_asked(poller: Poller, pair: tuple[socket.socket, ...]) -> None:
    a, _ = pair
    poller.register(a.fileno(), READABLE)
    assert not events_for(poller, a.fileno(), 0.05) & WRITABLE
    poller.modify(a.fileno(), READABLE | WRITABLE)
    assert events_for(poller, a.fileno()) & WRITABLE


def test_writable_again_after_peer_drains(poller: Poller, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    fill(a)
    poller.register(a.fileno(), READABLE | WRITABLE)
    assert not events_for(poller, a.fileno(), 0.05) & WRITABLE
    drain(b)
    assert events_for(poller, a.fileno()) & WRITABLE


def test_unregister_stops_events(poller: Poller, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    poller.register(a.fileno(), READABLE)
    poller.unregister(a.fileno())
    b.send(b"x")
    assert events_for(poller, a.fileno(), 0.05) == 0


def test_interest_zero_parks_the_fd(poller: Poller, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    poller.register(a.fileno(), READABLE)
    poller.modify(a.fileno(), 0)
    b.send(b"x")
    assert not events_for(poller, a.fileno(), 0.05) & (READABLE | WRITABLE)
    poller.modify(a.fileno(), READABLE)
    assert events_for(poller, a.fileno()) & READABLE
    poller.unregister(a.fileno())


def test_peer_close_reads_as_eof(poller: Poller, pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    poller.register(a.fileno(), READABLE)
    b.close()
    assert events_for(poller, a.fileno()) & READABLE
    assert a.recv(10) == b""


def test_edge_triggered_reports_once_until_new_data(pair: tuple[socket.socket, ...]) -> None:
    """The reason rat drains every fd: epoll ET does not repeat an event."""
    poller = make_poller("epoll")
    a, b = pair
    poller.register(a.fileno(), READABLE)
    b.send(b"one\n")
    assert events_for(poller, a.fileno()) & READABLE
    # Not read: level-triggered would report it again, edge-triggered does not.
    assert events_for(poller, a.fileno(), 0.05) == 0
    b.send(b"two\n")
    assert events_for(poller, a.fileno()) & READABLE
    poller.close()


def test_level_triggered_repeats(pair: tuple[socket.socket, ...]) -> None:
    poller = make_poller("select")
    a, b = pair
    poller.register(a.fileno(), READABLE)
    b.send(b"one\n")
    assert events_for(poller, a.fileno()) & READABLE
    assert events_for(poller, a.fileno()) & READABLE
    poller.close()


def test_hangup_flag_when_peer_shuts_down(pair: tuple[socket.socket, ...]) -> None:
    poller = make_poller("epoll")
    a, b = pair
    poller.register(a.fileno(), READABLE)
    b.shutdown(socket.SHUT_WR)
    mask = events_for(poller, a.fileno())
    assert mask & READABLE and mask & HANGUP
    poller.close()


def test_auto_picks_epoll_on_linux() -> None:
    poller = make_poller("auto")
    assert poller.name == "epoll"
    poller.close()


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        make_poller("kqueue-please")


def test_describe_mask() -> None:
    assert describe_mask(READABLE | HANGUP) == "RH"
    assert describe_mask(0) == "-"
