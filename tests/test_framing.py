"""LineFramer: pure framing, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rat.framing import LineFramer, LineTooLong, split_lines

# Payload bytes: anything but the newline (\r, NUL, invalid UTF-8 included).
payload = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b""))
lines_strategy = st.lists(payload.map(lambda p: p + b"\n"), max_size=40)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split `data` at the given cut points (any order, duplicates allowed)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[start:p])
        start = p
    return pieces


@given(lines_strategy, st.lists(st.integers(min_value=0), max_size=60), payload)
def test_any_chunking_yields_exactly_the_lines(
    lines: list[bytes], cuts: list[int], tail: bytes
) -> None:
    stream = b"".join(lines) + tail
    framer = LineFramer(max_line=10_000)
    got: list[bytes] = []
    for piece in chunked(stream, cuts):
        block = framer.feed(piece)
        got.extend(split_lines(block))
    assert got == lines
    assert framer.partial == tail
    assert framer.take_partial() == (tail + b"\n" if tail else b"")
    assert framer.partial == b""


@given(lines_strategy, st.lists(st.integers(min_value=0), max_size=60))
def test_blocks_hold_only_whole_lines(lines: list[bytes], cuts: list[int]) -> None:
    framer = LineFramer(max_line=10_000)
    for piece in chunked(b"".join(lines), cuts):
        block = framer.feed(piece)
        assert block == b"" or block.endswith(b"\n")


def test_bytes_are_verbatim() -> None:
    framer = LineFramer()
    assert framer.feed(b"a\r\n\x00\xff\xfe\n\n") == b"a\r\n\x00\xff\xfe\n\n"
    assert split_lines(b"a\r\n\x00\xff\xfe\n\n") == [b"a\r\n", b"\x00\xff\xfe\n", b"\n"]


def test_exact_boundary() -> None:
    framer = LineFramer(max_line=10)
    assert framer.feed(b"x" * 9 + b"\n") == b"x" * 9 + b"\n"  # 10 bytes: accepted
    with pytest.raises(LineTooLong):
        LineFramer(max_line=10).feed(b"x" * 10 + b"\n")  # 11 bytes: rejected


def test_growing_line_rejected_before_newline() -> None:
    framer = LineFramer(max_line=10)
    framer.feed(b"x" * 5)
    framer.feed(b"x" * 4)  # 9 bytes so far: the newline could still fit
    with pytest.raises(LineTooLong) as info:
        framer.feed(b"x")  # 10 bytes without a newline: the line will be 11+
    assert info.value.accepted == b""


def test_good_lines_before_a_long_one_are_kept() -> None:
    framer = LineFramer(max_line=10)
    with pytest.raises(LineTooLong) as info:
        framer.feed(b"ok\nfine\n" + b"y" * 20 + b"\nlater\n")
    assert info.value.accepted == b"ok\nfine\n"


def test_long_tail_after_good_lines() -> None:
    framer = LineFramer(max_line=10)
    with pytest.raises(LineTooLong) as info:
        framer.feed(b"ok\n" + b"z" * 10)
    assert info.value.accepted == b"ok\n"


@given(
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=30),
    st.lists(st.integers(min_value=0), max_size=30),
)
def test_limit_property(lengths: list[int], max_line: int, cuts: list[int]) -> None:
    """Lines up to max_line pass; the first longer one raises, whatever the chunking."""
    lines = [b"a" * (n - 1) + b"\n" for n in lengths]
    framer = LineFramer(max_line=max_line)
    got: list[bytes] = []
    try:
        for piece in chunked(b"".join(lines), cuts):
            got.extend(split_lines(framer.feed(piece)))
    except LineTooLong as err:
        got.extend(split_lines(err.accepted))
        first_bad = next(i for i, line in enumerate(lines) if len(line) > max_line)
        assert got == lines[:first_bad]
    else:
        assert all(len(line) <= max_line for line in lines)
        assert got == lines


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LineFramer(max_line=0)
