"""Checking what arrived: per-publisher sequence tracking and latency histograms.  No I/O.

`SeqTracker` is what one receiver knows about every publisher it hears from:
the next sequence number it expects and the gaps not (yet) filled.  From that,
at the end of a run, given how many lines each publisher really sent:

- lost: published lines this receiver never got;
- reordered: lines that arrived after a later line of the same publisher
  (a gap that was filled late);
- duplicated: lines that arrived again;
- unexpected: sequence numbers beyond what the publisher sent.

`LatencyHistogram` counts latencies in whole microseconds, exactly while it
has fewer than `fold_at` distinct values, then keeps three significant digits
(0.1 % resolution) so a badly lagging server cannot make it grow without
bound.  Percentiles are nearest-rank: the smallest recorded value with at
least q of all samples at or below it.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence


class _Publisher:
    __slots__ = ("gap_hi", "gap_lo", "next")

    def __init__(self, next_seq: int = 0) -> None:
        self.next = next_seq  # one past the highest sequence number seen
        self.gap_lo: list[int] = []  # missing ranges [lo, hi), sorted, disjoint
        self.gap_hi: list[int] = []

    def missing_below(self, limit: int) -> int:
        return sum(
            max(0, min(hi, limit) - lo) for lo, hi in zip(self.gap_lo, self.gap_hi, strict=True)
        )

    def missing_from(self, limit: int) -> int:
        return sum(
            max(0, hi - max(lo, limit)) for lo, hi in zip(self.gap_lo, self.gap_hi, strict=True)
        )


class SeqTracker:
    """Sequence bookkeeping for one receiver, over all publishers it hears from."""

    __slots__ = ("_pubs", "duplicated", "lines", "reordered")

    def __init__(self) -> None:
        self._pubs: dict[int, _Publisher] = {}
        self.reordered = 0
        self.duplicated = 0
        self.lines = 0  # data lines observed, anomalies included

    def start_at(self, pubid: int, next_seq: int) -> None:
        """Declare that sequences [0, next_seq) of `pubid` already arrived, in order."""
        self._pubs[pubid] = _Publisher(next_seq)

    def observe(self, pubid: int, seq: int) -> None:
        """Record the arrival of line `seq` of publisher `pubid`."""
        self.lines += 1
        pub = self._pubs.get(pubid)
        if pub is None:
            pub = self._pubs[pubid] = _Publisher()
        if seq == pub.next:
            pub.next += 1
        elif seq > pub.next:
            pub.gap_lo.append(pub.next)
            pub.gap_hi.append(seq)
            pub.next = seq + 1
        else:
            i = bisect.bisect_right(pub.gap_lo, seq) - 1
            if i >= 0 and seq < pub.gap_hi[i]:
                self.reordered += 1
                lo, hi = pub.gap_lo[i], pub.gap_hi[i]
                pieces = [(a, b) for a, b in ((lo, seq), (seq + 1, hi)) if a < b]
                pub.gap_lo[i : i + 1] = [a for a, _ in pieces]
                pub.gap_hi[i : i + 1] = [b for _, b in pieces]
            else:
                self.duplicated += 1

    def next_seq(self, pubid: int) -> int:
        pub = self._pubs.get(pubid)
        return 0 if pub is None else pub.next

    def received(self, pubid: int, published: int) -> int:
        """How many distinct lines of [0, published) of `pubid` arrived."""
        pub = self._pubs.get(pubid)
        if pub is None:
            return 0
        return min(pub.next, published) - pub.missing_below(published)

    def unexpected(self, published: Mapping[int, int]) -> int:
        """Distinct sequence numbers seen beyond what their publisher sent."""
        total = 0
        for pubid, pub in self._pubs.items():
            limit = published.get(pubid, 0)
            if pub.next > limit:
                total += pub.next - limit - pub.missing_from(limit)
        return total

    def lost(self, published: Mapping[int, int], exclude: int | None = None) -> int:
        """Published lines (all publishers but `exclude`) that never arrived."""
        return sum(
            count - self.received(pubid, count)
            for pubid, count in published.items()
            if pubid != exclude
        )


class LatencyHistogram:
    """Latency samples in microseconds (see the module notes on resolution)."""

    __slots__ = ("counts", "fold_at")

    def __init__(self, fold_at: int = 200_000) -> None:
        self.counts: Counter[int] = Counter()
        self.fold_at = fold_at

    def add(self, micros: int, count: int = 1) -> None:
        self.counts[micros] += count
        if len(self.counts) > self.fold_at:
            self.fold()

    def add_many(self, micros: Iterable[int]) -> None:
        self.counts.update(micros)  # counted in C
        if len(self.counts) > self.fold_at:
            self.fold()

    def merge(self, other: Mapping[int, int]) -> None:
        self.counts.update(other)
        if len(self.counts) > self.fold_at:
            self.fold()

    def fold(self) -> None:
        """Round every value to three significant digits (downwards).

        Values under 1000 stay as they are; the rest are rounded one decade
        at a time with a unit known for the decade, so folding costs a
        division per value, not a `str()`.
        """
        folded: Counter[int] = Counter()
        for value, n in self.counts.items():
            a = -value if value < 0 else value
            if a < 1000:
                folded[value] += n
                continue
            unit = _UNITS[bisect.bisect_right(_DECADES, a)]
            if not unit:
                folded[round_down_3(value)] += n
            else:
                a -= a % unit
                folded[-a if value < 0 else a] += n
        self.counts = folded

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def percentiles(self, qs: Sequence[float]) -> list[int | None]:
        return percentiles(self.counts, qs)


# fold(): values in [_DECADES[i-1], _DECADES[i]) keep three digits with the unit
# _UNITS[i]; 0 means "work it out" (a second and more: rare).
_DECADES = (1000, 10_000, 100_000, 1_000_000)
_UNITS = (1, 10, 100, 1000, 0)


def round_down_3(value: int) -> int:
    """`value` with all but its three most significant decimal digits zeroed."""
    if -1000 < value < 1000:
        return value
    sign = -1 if value < 0 else 1
    digits = len(str(abs(value)))
    unit = int(10 ** (digits - 3))
    return sign * (abs(value) // unit) * unit


def percentiles(hist: Mapping[int, int], qs: Sequence[float]) -> list[int | None]:
    """Nearest-rank percentiles (q in [0, 1]) of a value -> count histogram.

    None for each q when the histogram is empty.  q = 1 gives the maximum.
    """
    total = sum(hist.values())
    if total <= 0:
        return [None for _ in qs]
    values = sorted(v for v, n in hist.items() if n > 0)
    cumulative: list[int] = []
    running = 0
    for v in values:
        running += hist[v]
        cumulative.append(running)
    out: list[int | None] = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"percentile out of range: {q}")
        rank = max(1, math.ceil(round(q * total, 6)))  # 0.29 * 100 is 28.999...
        out.append(values[bisect.bisect_left(cumulative, rank)])
    return out
