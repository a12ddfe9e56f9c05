"""Hub: who receives which bytes of a turn."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rat.hub import Hub


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
