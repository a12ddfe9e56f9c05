"""Timers: a heap of (when, callback), with cancel.  Pure: no clock, no I/O.

The loop asks two things: when is the next timer due (to bound its sleep),
and "run everything due by now".  A timer is cancelled by marking it; the
heap drops marked entries when they reach the top, and is rebuilt when most
of it is dead, so cancelling is O(1) and the heap never grows without bound.

Why timers and not a periodic scan: a scan over every client each half
second costs in proportion to the idle clients, and 10,000 idle clients are
the normal case for a broadcast server.  A timer costs something only for
the client that set it (a stuck writer, a lingering close).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class Timer:
    """One scheduled call; `cancel()` it through `Timers.cancel`."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    @property
    def active(self) -> bool:
        """Still due to run (not run yet, not cancelled)."""
        return self.callback is not None


class Timers:
    """A min-heap of timers ordered by due time, then by creation."""

    __slots__ = ("_dead", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0  # tie-breaker: equal times run in the order they were set
        self._dead = 0  # cancelled entries still in the heap

    def __len__(self) -> int:
        """Timers still due to run."""
        return len(self._heap) - self._dead

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run `callback()` once the clock passed to `run_due` reaches `when`."""
        timer = Timer(when, callback)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, timer))
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Make `timer` never run (no-op if it ran or was cancelled already)."""
        if timer is None or timer.callback is None:
            return
        timer.callback = None
        self._dead += 1
        if self._dead > 64 and self._dead > len(self._heap) // 2:
            self._heap = [entry for entry in self._heap if entry[2].callback is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def next_due(self) -> float | None:
        """When the earliest live timer is due, or None if there is none."""
        heap = self._heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run, in order, every timer due at or before `now`; return how many ran.

        A callback may set new timers; one due already runs in this call too,
        except that a timer set for a time after `now` never does.
        """
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            callback = timer.callback
            if callback is None:
                self._dead -= 1
                continue
            timer.callback = None
            callback()
            ran += 1
        return ran
