"""rat.metrics without sockets: the backlog's lag against an exact model, rates, limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rat.metrics import (
    STAMP_RESOLUTION,
    STAMP_SHARE,
    Backlog,
    human_bytes,
    human_rate,
    label,
    time_to_cut,
)


class ExactQueue:
    """A model that remembers when every waiting byte was queued (per byte run)."""

    def __init__(self) -> None:
        self.runs: list[list[float]] = []  # [bytes, time], oldest first

    @property
    def pending(self) -> int:
        return int(sum(n for n, _ in self.runs))

    def queue(self, size: int, now: float) -> None:
        self.runs.append([size, now])

    def take(self, size: int) -> None:
        while size:
            run = self.runs[0]
            step = min(size, int(run[0]))
            run[0] -= step
            size -= step
            if not run[0]:
                self.runs.pop(0)

    def lag(self, now: float) -> float:
        return now - self.runs[0][1] if self.runs else 0.0


# A step: (seconds later, bytes queued, share of the waiting bytes the kernel takes).
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=2.0),
        st.integers(min_value=0, max_value=5000),
        st.floats(min_value=0.0, max_value=1.0),
    ),
    min_size=1,
    max_size=60,
)


@given(first=st.integers(min_value=1, max_value=5000), steps=steps)
def test_lag_is_the_age_of_the_oldest_waiting_byte(
    first: int, steps: list[tuple[float, int, float]]
) -> None:
    """Never below the truth, and above it by at most the merge tolerance."""
    start = 100.0
    model = ExactQueue()
    model.queue(first, start)
    backlog = Backlog(first, start)
    now = start
    for later, size, share in steps:
        now += later
        if size:
            model.queue(size, now)
            backlog.queued(model.pending, now)
        taken = int(model.pending * share)
        if taken:
            model.take(taken)
            backlog.took(taken, model.pending, now)
        if not model.pending:
            return  # the connection drops its backlog here (rat.connection)
        truth = model.lag(now)
        reported = backlog.lag(now)
        assert reported >= truth - 1e-9
        tolerance = max(STAMP_RESOLUTION, (now - start) * STAMP_SHARE)
        assert reported - truth <= tolerance + 1e-9


def test_lag_grows_while_nothing_is_taken_and_follows_the_head() -> None:
    backlog = Backlog(100, since=10.0)
    backlog.queued(300, 12.0)  # 200 more bytes at t=12
    assert backlog.lag(15.0) == 5.0
    backlog.took(100, 200, 15.0)  # the bytes of t=10 are gone
    assert backlog.lag(15.0) == 3.0
    backlog.took(150, 50, 16.0)
    assert backlog.lag(16.0) == 4.0


def test_stamps_stay_few_for_a_long_backlog() -> None:
    """One small queueing per millisecond for a minute: a few hundred stamps, not 60,000."""
    backlog = Backlog(10, since=0.0)
    pending = 10
    for ms in range(1, 60_000):
        pending += 10
        backlog.queued(pending, ms / 1000)
    assert len(backlog._stamps) < 1000
    assert backlog.lag(60.0) == 60.0


def test_rates_over_the_last_window() -> None:
    backlog = Backlog(1000, since=0.0)
    assert backlog.rates(1000, 0.0) is None  # no time has passed
    backlog.took(500, 500, 0.5)
    drain, growth = backlog.rates(500, 1.0) or (0.0, 0.0)
    assert drain == 500.0
    assert growth == -500.0
    # Windows roll: after two seconds of nothing, the drain rate has decayed.
    backlog.queued(500, 1.2)
    backlog.queued(500, 2.5)
    drain, growth = backlog.rates(500, 4.0) or (1.0, 1.0)
    assert drain == 0.0


def test_a_flood_that_stopped_predicts_no_cut() -> None:
    """Once nothing is queued or taken for a window, the queue is not growing any more."""
    backlog = Backlog(1000, since=0.0)
    pending = 1000
    for tenth in range(1, 31):  # a flood: 100 kB/s queued for 3 s, nothing taken
        pending += 10_000
        backlog.queued(pending, tenth / 10)
    _drain, growth = backlog.rates(pending, 3.1) or (0.0, 0.0)
    assert growth > 50_000  # still flooding a moment after the last line
    assert backlog.rates(pending, 6.0) == (0.0, 0.0)  # three quiet seconds later
    by_limit, _ = time_to_cut(
        pending=pending, limit=1 << 20, growth=0.0, last_progress=0.0, write_timeout=30, now=6.0
    )
    assert by_limit is None


def test_time_to_cut() -> None:
    # 1 MiB to go at 0.5 MiB/s of growth: two seconds.  Write timeout: 30 s after progress.
    by_limit, by_timeout = time_to_cut(
        pending=1 << 20,
        limit=2 << 20,
        growth=float(1 << 19),
        last_progress=100.0,
        write_timeout=30.0,
        now=110.0,
    )
    assert by_limit == 2.0
    assert by_timeout == 20.0
    shrinking = time_to_cut(
        pending=10, limit=100, growth=-5.0, last_progress=0, write_timeout=1, now=0
    )
    assert shrinking == (None, 1.0)
    nothing = time_to_cut(pending=0, limit=100, growth=5.0, last_progress=0, write_timeout=1, now=0)
    assert nothing == (None, None)


def test_labels_and_human_units() -> None:
    assert label("slow_consumer") == "slow_consumer"
    assert label("Handshake timed out!") == "handshake_timed_out"
    assert label("") == "unknown"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(8 << 20) == "8.0 MiB"
    assert human_rate(None) == "unknown"
    assert human_rate(2048) == "2.0 KiB/s"
