"""Hub: who receives which bytes of a turn."""

from __future__ import annotations

import random
import sys

from hypothesis import given
from hypothesis import strategies as st

from rat.hub import COPY_SHARE_BELOW, Chunk, Hub, Turn


def received(hub_turn_chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in hub_turn_chunks)


def test_others_get_everything_sender_gets_the_rest() -> None:
    hub = Hub()
    hub.publish("a", b"a1\n")
    hub.publish("b", b"b1\nb2\n")
    hub.publish("a", b"a2\n")
    turn = hub.take_turn()
    assert turn is not None
    chunks, lines = turn.chunks_for("c")
    assert received(chunks) == b"a1\nb1\nb2\na2\n" and lines == 4
    assert len(chunks) == 1  # one shared object for a non-sender
    chunks, lines = turn.chunks_for("a")
    assert received(chunks) == b"b1\nb2\n" and lines == 2
    chunks, lines = turn.chunks_for("b")
    assert received(chunks) == b"a1\na2\n" and lines == 2
    assert hub.take_turn() is None


def test_echo_sends_everything_to_everyone() -> None:
    hub = Hub(echo=True)
    hub.publish("a", b"x\n")
    turn = hub.take_turn()
    assert turn is not None
    assert received(turn.chunks_for("a")[0]) == b"x\n"


@given(st.lists(st.tuples(st.sampled_from("abc"), st.binary(max_size=20)), max_size=30))
def test_each_receiver_gets_global_order_minus_own(posts: list[tuple[str, bytes]]) -> None:
    hub = Hub()
    blocks = [(who, body.replace(b"\n", b"") + b"\n") for who, body in posts]
    for who, block in blocks:
        hub.publish(who, block)
    turn = hub.take_turn()
    if not blocks:
        assert turn is None
        return
    assert turn is not None
    for receiver in "abcd":
        chunks, lines = turn.chunks_for(receiver)
        expected = [block for who, block in blocks if who != receiver]
        assert received(chunks) == b"".join(expected)
        assert lines == len(expected)


def retained(turn: Turn, chunks: list[Chunk]) -> int:
    """Bytes the chunks keep alive: the whole turn if any is a slice of it."""
    kept = 0
    for chunk in chunks:
        if isinstance(chunk, memoryview):
            assert chunk.obj is turn.data, "a slice is of the turn's own buffer"
            return len(turn.data)
        kept += len(chunk)
    return kept


def test_a_small_share_of_a_big_turn_is_copied() -> None:
    """Issue 9.1: a chat line in a turn of a flooder's 64 KiB lines must not pin the turn."""
    hub = Hub()
    flood = b"p" * (64 * 1024 - 1) + b"\n"
    hub.publish("producer", flood)
    hub.publish("chatter", b"hi\n")
    hub.publish("producer", flood)
    turn = hub.take_turn()
    assert turn is not None
    before = sys.getrefcount(turn.data)
    chunks, lines = turn.chunks_for("producer")
    assert chunks == [b"hi\n"] and lines == 1
    assert type(chunks[0]) is bytes and chunks[0] is not turn.data
    after = sys.getrefcount(turn.data)  # (not inside an assert: pytest's rewrite holds refs)
    assert after == before, "the copy holds no reference to the turn"
    # The chatter's share is almost all of the turn: zero-copy slices of it.
    chunks, lines = turn.chunks_for("chatter")
    assert lines == 2 and all(isinstance(c, memoryview) for c in chunks)
    assert received(chunks) == flood * 2
    after = sys.getrefcount(turn.data)
    assert after > before, "the slices keep the turn alive (and are charged for it)"


@given(
    st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_a_share_keeps_alive_at_most_twice_what_it_is_charged(
    mine: list[int], theirs: list[int], rng: random.Random
) -> None:
    """The copy-or-slice rule over line sizes: copied under COPY_SHARE_BELOW, sliced above."""
    posts = [("me", b"m" * (n - 1) + b"\n") for n in mine]
    posts += [("other", b"o" * (n - 1) + b"\n") for n in theirs]
    rng.shuffle(posts)
    hub = Hub()
    for who, block in posts:
        hub.publish(who, block)
    turn = hub.take_turn()
    assert turn is not None
    share = sum(theirs)
    chunks, lines = turn.chunks_for("me")
    assert received(chunks) == b"".join(block for who, block in posts if who == "other")
    assert lines == len(theirs)
    if share < len(turn.data) * COPY_SHARE_BELOW:
        assert len(chunks) == 1 and type(chunks[0]) is bytes
    else:
        assert all(isinstance(c, memoryview) for c in chunks)
    assert retained(turn, chunks) <= 2 * share
