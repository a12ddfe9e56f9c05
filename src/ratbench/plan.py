"""What a run is asked to do, what a worker is told and what it reports: plain data.

The coordinator (`ratbench.runner`) builds one `WorkerPlan` per worker
process; the worker (`ratbench.worker`) sends back one `WorkerResult`.  Both
are pickled by `multiprocessing`, so they hold only plain values.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass
class Target:
    """What every scenario's configuration has: the server, and the run's bounds."""

    host: str = "127.0.0.1"
    port: int = 8080
    # every server to connect to, (host, port), clients spread round-robin; the
    # first is `host`, `port` (a cluster: several nodes of one broadcast)
    servers: list[tuple[str, int]] = field(default_factory=list)
    proto: str = "line"
    server_pid: int | None = None  # the first of `server_pids`
    server_pids: list[int] = field(default_factory=list)  # their CPU and memory add up
    duration: float = 3.0
    line_size: int = 64
    workers: int = 1
    setup_timeout: float = 30.0
    progress: bool = False

    @staticmethod
    def options(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
        """The `Target` fields from parsed `rat bench` arguments."""
        names = ("proto", "duration", "line_size", "workers")
        servers = getattr(args, "connect", None) or [(args.host, port) for port in args.port]
        return {
            **{n: getattr(args, n) for n in names},
            "host": servers[0][0],
            "port": servers[0][1],
            "servers": servers,
            "server_pid": args.server_pid[0] if args.server_pid else None,
            "server_pids": args.server_pid or [],
            "setup_timeout": args.setup_timeout,
            "progress": progress,
        }

    def __post_init__(self) -> None:
        if not self.servers:
            self.servers = [(self.host, self.port)]
        if self.server_pid is not None and not self.server_pids:
            self.server_pids = [self.server_pid]


class ClientPlan(NamedTuple):
    """One client of a run: what it does, and where."""

    pubid: int  # its publisher id (1, 2, ...); 0: it publishes nothing
    publishes: bool
    receives: bool
    ws: bool = False  # --ws-fraction: a WebSocket client
    room: int = 0  # chat mode, --rooms: which room (see `room_name`)
    node: int = 0  # several servers: which one (an index into `Target.servers`)


def room_name(room: int, rooms: int) -> bytes:
    """The chat room of room number `room`: the lobby if there is one room, else #r0, #r1..."""
    return b"#lobby" if rooms == 1 else b"#r%d" % room


def place(i: int, rooms: int, nodes: int) -> tuple[int, int]:
    """(room, node) of the `i`th publisher (or the `i`th subscriber): round-robin over both.

    Rooms go round-robin; each pass over the rooms moves to the next node,
    so that every room has clients on every node (with 100 rooms and 2
    nodes: clients 0-99 on node 0, 100-199 on node 1, ...).
    """
    return i % rooms, (i // rooms) % nodes


def room_of(pubid: int, rooms: int) -> int | None:
    """The room publisher `pubid` (1, 2, ...) is in; None for 0 (the probe: every room)."""
    return None if pubid == 0 else place(pubid - 1, rooms, 1)[0]


@dataclass
class WorkerPlan:
    """What one worker does; built by the coordinator, sent to the worker."""

    index: int
    host: str  # the first server's host name (TLS: the name it must prove)
    proto: str
    line_size: int
    sync_nonce: int
    clients: list[ClientPlan]
    reference: bool  # add silent reference subscribers of our own (one per room and node)
    rate_per_publisher: float  # lines/s; 0 = as fast as the window allows
    window: int  # fanout: lines in flight per publisher
    max_lines_per_publisher: int
    latency_receivers: int  # receivers whose every line is timed; -1 = all
    tick_ns: int
    connect_timeout: float
    pattern: str = "ticks"  # with a rate: "even" (each line at its own time) or "ticks"
    publishers_total: int = 1  # over all workers (`--pattern even` interleaves them)
    # socket.getaddrinfo's (family, sockaddr) of every server, and host:port for messages
    addresses: list[tuple[int, Any]] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    # --ws-fraction: where the clients marked `ws` go
    ws_address: tuple[int, Any] | None = None
    ws_where: str = ""
    # --tls: wrap every connection; verify against this CA file (None: no verification)
    tls: bool = False
    tls_ca: str | None = None
    chat: bool = False  # the server is in chat mode: nicks, rooms, notices
    rooms: int = 1


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
    # several servers: per node, latency us -> count, and lines delivered, lost
    node_latency: dict[int, dict[int, int]] = field(default_factory=dict)
    node_delivered: dict[int, int] = field(default_factory=dict)
    node_lost: dict[int, int] = field(default_factory=dict)
    notices: int = 0  # chat mode: server notices skipped ("* ..." lines)
    drained: int = 0  # bytes publish-only connections got (other publishers' lines)
    lateness: dict[int, int] = field(default_factory=dict)  # us sent after due: count
    latency_receivers: int = 0
    last_rx_ns: int = 0
    first_tx_ns: int = 0
    last_tx_ns: int = 0
    cpu_ns: int = 0
    wait_ns: int = 0  # runnable, waiting for a CPU, over the same span
    complete: bool = False
