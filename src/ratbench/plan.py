"""What a run is asked to do, what a worker is told and what it reports: plain data.

The coordinator (`ratbench.runner`) builds one `WorkerPlan` per worker
process; the worker (`ratbench.worker`) sends back one `WorkerResult`.  Both
are pickled by `multiprocessing`, so they hold only plain values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Target:
    """What every scenario's configuration has: the server, and the run's bounds."""

    host: str = "127.0.0.1"
    port: int = 8080
    proto: str = "line"
    server_pid: int | None = None
    duration: float = 3.0
    line_size: int = 64
    workers: int = 1
    setup_timeout: float = 30.0
    progress: bool = False

    @staticmethod
    def options(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
        """The `Target` fields from parsed `rat bench` arguments."""
        names = ("host", "port", "proto", "server_pid", "duration", "line_size", "workers")
        return {
            **{n: getattr(args, n) for n in names},
            "setup_timeout": args.setup_timeout,
            "progress": progress,
        }


@dataclass
class WorkerPlan:
    """What one worker does; built by the coordinator, sent to the worker."""

    index: int
    host: str
    port: int
    proto: str
    line_size: int
    sync_nonce: int
    # (pubid, publishes, receives) for every client of this worker; pubid 0: none
    clients: list[tuple[int, bool, bool]]
    reference: bool  # add a silent reference subscriber of our own
    rate_per_publisher: float  # lines/s; 0 = as fast as the window allows
    window: int  # fanout: lines in flight per publisher
    max_lines_per_publisher: int
    latency_receivers: int  # receivers whose every line is timed; -1 = all
    tick_ns: int
    connect_timeout: float
    pattern: str = "ticks"  # with a rate: "even" (each line at its own time) or "ticks"
    publishers_total: int = 1  # over all workers (`--pattern even` interleaves them)
    # socket.getaddrinfo's (family, sockaddr) of the server; empty: resolve host
    address: tuple[int, Any] | None = None
    # --ws-fraction: which clients (parallel to `clients`) use WebSocket, and where
    ws_clients: list[bool] = field(default_factory=list)
    ws_address: tuple[int, Any] | None = None
    ws_where: str = ""
    # --tls: wrap every connection; verify against this CA file (None: no verification)
    tls: bool = False
    tls_ca: str | None = None


@dataclass
class WorkerResult:
    """What a worker reports at the end (plain data: it crosses a pipe)."""

    index: int
    receivers: int = 0
    delivered: int = 0
    expected: int = 0
    lost: int = 0
    reordered: int = 0
    duplicated: int = 0
    malformed: int = 0
    echoed: int = 0
    unexpected: int = 0
    disconnected: int = 0
    publisher_errors: int = 0
    skipped: int = 0  # rate mode: lines not sent because the socket backed up
    slow_path_receivers: int = 0
    latency: dict[int, int] = field(default_factory=dict)
    lateness: dict[int, int] = field(default_factory=dict)  # us sent after due: count
    latency_receivers: int = 0
    last_rx_ns: int = 0
    first_tx_ns: int = 0
    last_tx_ns: int = 0
    cpu_ns: int = 0
    wait_ns: int = 0  # runnable, waiting for a CPU, over the same span
    complete: bool = False
