"""How long to wait before reconnecting, or restarting: capped exponential back-off.

After the k-th consecutive failure (k = 0 for the first) the wait is
`first * factor**k`, never more than `cap`.  With `jitter` j, the wait is
scaled down by up to j (`rand` in [0, 1) picks where): many nodes that lost
the same Redis at the same moment then do not all knock at once when it
comes back.  Pure: the caller supplies the random number.
"""

from __future__ import annotations

RECONNECT_FIRST = 0.1  # seconds
RECONNECT_CAP = 5.0
RECONNECT_JITTER = 0.5  # waits are spread over [half, all] of the schedule


def backoff_delay(
    failures: int,
    *,
    first: float = RECONNECT_FIRST,
    cap: float = RECONNECT_CAP,
    factor: float = 2.0,
    jitter: float = 0.0,
    rand: float = 0.0,
) -> float:
    """Seconds to wait after `failures` consecutive failures (0: after the first)."""
    if failures < 0 or first <= 0 or cap < first or factor < 1:
        raise ValueError("failures >= 0, 0 < first <= cap, factor >= 1")
    if not 0.0 <= jitter <= 1.0 or not 0.0 <= rand < 1.0:
        raise ValueError("0 <= jitter <= 1 and 0 <= rand < 1")
    # Stop multiplying once past the cap: factor**failures would overflow.
    delay = first
    for _ in range(failures):
        delay *= factor
        if delay >= cap:
            delay = cap
            break
    return delay * (1.0 - jitter * rand)
