"""The loop's timers and turn, without sockets to clients.

- `Timers` against a model (a sorted list): random sets, cancels and clock
  steps run exactly the callbacks due, in time order (ties in the order they
  were set), never a cancelled one, and cancelling keeps the heap bounded;
- `Loop.run_once` with a fake clock: a turn sleeps until the next timer,
  resumed handlers run next turn without waiting, hooks bracket the turn.
"""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from rat.loop import Loop
from rat.poller import make_poller
from rat.timers import Timer, Timers

# An action: ("set", delay) a timer `delay` after now, ("cancel", i) the
# i-th timer set so far (modulo), ("advance", dt) the clock.
actions = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=200)),
        st.tuples(st.just("advance"), st.integers(min_value=0, max_value=10)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(actions=actions)
def test_timers_run_what_is_due_in_order_and_never_a_cancelled_one(
    actions: list[tuple[str, int]],
) -> None:
    timers = Timers()
    now = 0
    handles: list[Timer] = []
    model: dict[int, int] = {}  # timer number -> when, for those still due
    ran: list[int] = []
    for kind, value in actions:
        if kind == "set":
            number = len(handles)
            handles.append(timers.call_at(now + value, functools.partial(ran.append, number)))
            model[number] = now + value
        elif kind == "cancel" and handles:
            number = value % len(handles)
            timers.cancel(handles[number])
            model.pop(number, None)
        else:
            now += value
            due = sorted((when, number) for number, when in model.items() if when <= now)
            ran.clear()
            assert timers.run_due(now) == len(due)
            assert ran == [number for _, number in due]
            for _, number in due:
                del model[number]
                assert not handles[number].active
        assert len(timers) == len(model)
        assert timers.next_due() == (min(model.values()) if model else None)


def test_cancelling_most_timers_shrinks_the_heap() -> None:
    timers = Timers()
    handles = [timers.call_at(float(i), lambda: None) for i in range(1000)]
    for handle in handles[:990]:
        timers.cancel(handle)
    assert len(timers) == 10
    assert len(timers._heap) < 500  # rebuilt, not 1,000 dead entries kept
    timers.cancel(handles[0])  # twice: a no-op
    assert len(timers) == 10


def test_a_callback_may_set_a_timer_that_is_already_due() -> None:
    timers = Timers()
    ran: list[str] = []

    def first() -> None:
        ran.append("a")
        timers.call_at(0.5, lambda: ran.append("b"))  # in the past: runs in this call too

    def second() -> None:
        timers.call_at(2.0, lambda: ran.append("later"))  # after now: not in this call

    timers.call_at(1.0, first)
    timers.call_at(1.0, second)
    assert timers.run_due(1.0) == 3
    assert ran == ["a", "b"]
    assert timers.next_due() == 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Resumed:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def on_resume(self) -> None:
        self.log.append("resume")


def test_a_turn_sleeps_until_the_next_timer_and_hooks_bracket_it() -> None:
    clock = FakeClock()
    poller = make_poller("select")
    waits: list[float | None] = []
    real_poll = poller.poll

    def poll(timeout: float | None) -> list[tuple[int, int]]:
        waits.append(timeout)
        clock.now += timeout or 0.0  # nothing happens: the sleep ends at its timeout
        return real_poll(0.0)

    poller.poll = poll  # type: ignore[method-assign]
    loop = Loop(poller, clock=clock)
    log: list[str] = []
    loop.at_turn_start(lambda: log.append("start"))
    loop.at_turn_end(lambda: log.append("end"))
    loop.call_later(0.25, lambda: log.append("timer"))
    try:
        loop.run_once(timeout=5.0)
        assert waits == [0.25]  # not the 5 s asked for: a timer is due sooner
        assert log == ["start", "timer", "end"]

        log.clear()
        loop.resume(Resumed(log))
        loop.run_once(timeout=5.0)
        assert waits[-1] == 0.0  # a resumed handler: no sleep at all
        assert log == ["start", "resume", "end"]

        log.clear()
        loop.run_once(timeout=5.0)  # resumed once only, and no timer left
        assert waits[-1] == 5.0
        assert log == ["start", "end"]
        assert loop.turns == 3
    finally:
        loop.close()
