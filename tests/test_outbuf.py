"""OutBuffer: queued bytes come out whole and in order, whatever the send sizes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rat.outbuf import MAX_BUFFERS_PER_SEND, OutBuffer


def fake_send(buffers: list[bytes | memoryview], budget: int) -> bytes:
    """What a kernel taking at most `budget` bytes of a sendmsg would take."""
    return b"".join(bytes(b) for b in buffers)[:budget]


@given(
    st.lists(st.binary(min_size=1, max_size=200), max_size=50),
    st.randoms(use_true_random=False),
)
def test_random_partial_sends_preserve_bytes(chunks: list[bytes], rnd: random.Random) -> None:
    buf = OutBuffer(limit=1 << 30)
    sent = bytearray()
    queued = bytearray()
    pending = list(chunks)
    while pending or buf:
        # Interleave appends with partial sends, as the server does.
        if pending and rnd.random() < 0.5:
            chunk = pending.pop(0)
            buf.append(chunk)
            queued += chunk
            continue
        if not buf:
            continue
        taken = fake_send(buf.peek(), rnd.randint(0, 300))
        buf.advance(len(taken))
        sent += taken
        assert buf.pending == len(queued) - len(sent)
    assert bytes(sent) == bytes(queued)
    assert buf.peek() == []


def test_over_limit_only_past_the_limit() -> None:
    buf = OutBuffer(limit=10)
    buf.append(b"12345")
    buf.append(b"12345")
    assert not buf.over_limit  # exactly at the limit is allowed
    buf.append(b"x")
    assert buf.over_limit
    buf.advance(1)
    assert not buf.over_limit  # sending brings it back under


def test_chunks_are_shared_not_copied() -> None:
    chunk = b"line\n" * 10
    buf = OutBuffer()
    buf.append(chunk)
    assert buf.peek()[0] is chunk


def test_peek_caps_buffers_at_iov_max() -> None:
    buf = OutBuffer()
    for _ in range(MAX_BUFFERS_PER_SEND + 5):
        buf.append(b"x\n")
    assert len(buf.peek()) == MAX_BUFFERS_PER_SEND
    buf.advance(2 * MAX_BUFFERS_PER_SEND)
    assert len(buf.peek()) == 5


def test_cut_to_line_end_keeps_line_boundary() -> None:
    buf = OutBuffer()
    buf.append(b"first line\n")
    buf.append(b"second\n")
    buf.advance(3)
    dropped = buf.cut_to_line_end()
    assert [bytes(r) for r in buf.peek()] == [b"st line\n"]
    assert dropped == len(b"second\n")
    empty = OutBuffer()
    empty.append(b"whole\n")
    assert empty.cut_to_line_end() == len(b"whole\n")
    assert not empty


@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"") + b"\n"), min_size=1),
    split=st.integers(min_value=1, max_value=4),
    data=st.data(),
)
def test_cut_to_line_end_finishes_exactly_the_current_line(
    lines: list[bytes], split: int, data: st.DataObject
) -> None:
    """Whatever was sent, the sent bytes plus what is kept end on a line boundary."""
    stream = b"".join(lines)
    buf = OutBuffer()
    chunk = max(1, len(lines) // split)
    for i in range(0, len(lines), chunk):  # chunks of whole lines, some as memoryviews
        block = b"".join(lines[i : i + chunk])
        buf.append(memoryview(block) if i % 2 else block)
    sent = data.draw(st.integers(min_value=0, max_value=len(stream)))
    buf.advance(sent)
    before = buf.pending
    dropped = buf.cut_to_line_end()
    kept = b"".join(bytes(c) for c in buf.peek())
    assert dropped + len(kept) == before
    delivered = stream[:sent] + kept
    assert delivered == b"" or delivered.endswith(b"\n")
    assert stream.startswith(delivered)
    assert b"\n" not in kept[:-1]  # at most the rest of one line


@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"") + b"\n"), min_size=1),
    data=st.data(),
)
def test_a_cut_after_a_direct_partial_send_still_finishes_the_line(
    lines: list[bytes], data: st.DataObject
) -> None:
    """The fan-out fast path sends first and queues the rest (`append_unsent`)."""
    block = b"".join(lines)
    sent = data.draw(st.integers(min_value=0, max_value=len(block) - 1))
    buf = OutBuffer()
    buf.append_unsent(block, sent)
    assert b"".join(bytes(c) for c in buf.peek()) == block[sent:]
    buf.append(b"later line\n")
    buf.cut_to_line_end()
    delivered = block[:sent] + b"".join(bytes(c) for c in buf.peek())
    assert (delivered == b"" or delivered.endswith(b"\n")) and block.startswith(delivered)
    if sent:  # the frame-keeping cut keeps the whole rest of the chunk
        buf = OutBuffer()
        buf.append_unsent(block, sent)
        buf.cut_to_chunk_end()
        assert b"".join(bytes(c) for c in buf.peek()) == block[sent:]


def test_advance_past_queue_is_a_bug() -> None:
    buf = OutBuffer()
    buf.append(b"ab")
    with pytest.raises(ValueError, match="past"):
        buf.advance(3)
