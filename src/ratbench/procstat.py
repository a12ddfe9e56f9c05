"""CPU time and memory of another process (the server under test), from /proc.

CPU time comes from the process's CPU-time clock (`clock_gettime` on the
clock id Linux derives from a PID: nanoseconds, all threads, live or exited),
or from `/proc/PID/stat` (clock ticks, usually 10 ms) where that clock cannot
be read; its split into user and system time always comes from
`/proc/PID/stat` (utime, stime).  Memory is `VmRSS` (resident now) and
`VmHWM` (the peak since start) from `/proc/PID/status`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_CPUCLOCK_SCHED = 2  # Linux: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def _process_clock(pid: int) -> int:
    return ((~pid) << 3) | _CPUCLOCK_SCHED


def cpu_ns(pid: int) -> int:
    """Total CPU time (user + system, all threads) used by `pid` so far, in ns."""
    try:
        return time.clock_gettime_ns(_process_clock(pid))
    except (OSError, OverflowError, AttributeError):
        pass
    user, system = cpu_split_ns(pid)
    return user + system


def cpu_split_ns(pid: int) -> tuple[int, int]:
    """`(user, system)` CPU time of `pid` so far, in ns, from /proc/PID/stat.

    utime and stime (fields 14 and 15) count clock ticks (usually 10 ms), so
    over a run of a few seconds each is good to about half a percent of a
    CPU.  Their sum lags `cpu_ns` (the scheduler's exact clock) by up to a
    tick or two; the report gives both.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick_ns, int(fields[12]) * tick_ns


def runqueue_wait_ns(pid: int | str) -> int:
    """Time `pid`'s threads spent runnable but waiting for a CPU, in ns (0 if unknown).

    The second field of /proc/PID/task/TID/schedstat.  A server that waits
    for a CPU is short of CPU even if its CPU time stays below one core:
    other processes on its CPU took the rest.
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def memory_kib(pid: int) -> tuple[int, int]:
    """`(VmRSS, VmHWM)` of `pid` in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith(b"VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


@dataclass
class Sample:
    """One reading of the server: when, CPU so far, memory now and at peak."""

    at_ns: int
    cpu_ns: int
    rss_kib: int
    hwm_kib: int
    wait_ns: int = 0  # runnable but not running (see `runqueue_wait_ns`)
    user_ns: int = 0  # user and system time (see `cpu_split_ns`)
    sys_ns: int = 0


def sample(pid: int) -> Sample | None:
    """A reading of `pid`, or None if it is gone (or not ours to read)."""
    try:
        at = time.monotonic_ns()
        cpu = cpu_ns(pid)
        user, system = cpu_split_ns(pid)
        rss, hwm = memory_kib(pid)
    except (OSError, ValueError, IndexError):
        return None
    return Sample(at, cpu, rss, hwm, runqueue_wait_ns(pid), user, system)


def sample_all(pids: list[int]) -> Sample | None:
    """One reading of several processes (a cluster's nodes) added up; None if one is gone."""
    samples = [sample(pid) for pid in pids]
    if not samples or any(s is None for s in samples):
        return None
    got = [s for s in samples if s is not None]
    return Sample(
        got[0].at_ns,
        sum(s.cpu_ns for s in got),
        sum(s.rss_kib for s in got),
        sum(s.hwm_kib for s in got),
        sum(s.wait_ns for s in got),
        sum(s.user_ns for s in got),
        sum(s.sys_ns for s in got),
    )


def cpu_pressure() -> float | None:
    """The machine's CPU pressure (PSI "some" avg10, percent), or None if unknown."""
    try:
        with open("/proc/pressure/cpu", "rb") as f:
            for line in f:
                if line.startswith(b"some"):
                    return float(line.split()[1].split(b"=")[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def self_cpu_ns() -> int:
    """CPU time of this process (all its threads), in ns."""
    return time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)
