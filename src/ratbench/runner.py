"""The coordinator: plan a scenario, start the workers, pace the phases, add up.

Phases (see `ratbench.worker` for the worker's side):

1. Read the server's memory (idle scenario: before anything connects).
2. Fork the workers; each connects its share and says "ready".
3. Connect a probe and send a sync line (Redis: PUBLISH it), again every
   second until everyone has one (receivers drop repeats).  A worker says
   "synced" once every one of its receivers got it, which proves the server
   registered every connection before the first measured line.  (A connect()
   returns when the kernel finished the handshake, possibly before the server
   called accept(); and the protocol has no history.)
4. Read the server's CPU clock, then "go" with a start time a moment ahead so
   every worker starts together.  Idle: hold the connections first, then the
   probe broadcasts one line.
5. Gather "published" from every worker; send everyone the totals and a grace
   period ("expect"); gather "result"; read the server's CPU clock again.

Everything is bounded: connecting and syncing by `--setup-timeout`, the load
by `--duration` and `--max-lines`, the drain by `--grace`.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ratbench.check import LatencyHistogram
from ratbench.connect import Probe, show_address
from ratbench.errors import BenchError
from ratbench.pipe import WorkerPool
from ratbench.plan import ClientPlan, Target, WorkerPlan, WorkerResult, place, room_name
from ratbench.poller import client_tls, raise_nofile
from ratbench.procstat import Sample, cpu_pressure, sample_all, self_cpu_ns
from ratbench.wire import encode_line, make_wire, sync_line
from ratbench.worker import worker_main

GO_DELAY_NS = 50_000_000  # "go" names a start this far ahead, so workers start together


@dataclass
class Config(Target):
    """One benchmark run, as given on the command line."""

    scenario: str = "chat"  # chat | fanout | idle (connect: see ratbench.churn)
    grace: float = 3.0
    clients: int = 10  # chat
    rate: float = 1000.0  # chat: total lines/s; fanout: 0 = max
    publishers: int = 1  # fanout
    subscribers: int = 10  # fanout
    window: int = 256  # fanout
    connections: int = 1000  # idle
    hold: float = 2.0  # idle
    max_lines: int = 0  # total cap on published lines; 0 = none
    latency_receivers: int = -2  # -2: automatic; -1: all
    pattern: str = "even"  # with a rate: even | ticks
    tick_ms: float = 5.0
    ws_fraction: float = 0.0  # this share of the clients use WebSocket, on ws_port
    ws_port: int | None = None
    tls: bool = False  # wrap every connection in TLS (verify with tls_ca, if given)
    tls_ca: str | None = None
    chat: bool = False  # the server is in chat mode (rat serve --chat)
    rooms: int = 1  # chat mode: clients spread over this many rooms


@dataclass
class Outcome:
    """Everything measured in one run."""

    config: Config
    results: list[WorkerResult] = field(default_factory=list)
    published: dict[int, int] = field(default_factory=dict)
    connections: int = 0
    go_ns: int = 0
    last_tx_ns: int = 0
    last_rx_ns: int = 0
    server_before: Sample | None = None  # before any connection (idle) or at "go"
    server_go: Sample | None = None
    server_end: Sample | None = None
    server_peak_rss_kib: int = 0
    server_connected: Sample | None = None  # idle: all connected and synced
    server_held: Sample | None = None  # idle: at the end of the hold
    coordinator_cpu_ns: int = 0
    pressure_start: float | None = None  # the machine's CPU pressure (PSI some avg10, %)
    pressure_end: float | None = None
    setup_s: float = 0.0
    generator_cpus: int = 1


class Coordinator:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.wire = make_wire(cfg.proto, cfg.line_size, cfg.chat)
        self.pool = WorkerPool()
        self.pool.on_tick = self.tick
        self.outcome = Outcome(cfg)
        self.next_sample = 0.0
        self.progress_shown = False

    # -- planning --------------------------------------------------------------

    def clients(self, nodes: int) -> list[ClientPlan]:
        """Every client of the run, placed in its room and on its server (`place`)."""
        cfg = self.cfg
        rooms = cfg.rooms

        def client(i: int, pubid: int, publishes: bool, receives: bool) -> ClientPlan:
            room, node = place(i, rooms, nodes)
            return ClientPlan(pubid, publishes, receives, False, room, node)

        if cfg.scenario == "chat":
            clients = [client(i, i + 1, True, True) for i in range(cfg.clients)]
        elif cfg.scenario == "fanout":
            clients = [client(i, i + 1, True, False) for i in range(cfg.publishers)]
            clients += [client(j, 0, False, True) for j in range(cfg.subscribers)]
        else:
            # The probe is one of the connections: it sends the final broadcast.
            clients = [client(j, 0, False, True) for j in range(cfg.connections - 1)]
        return [c._replace(ws=uses_ws(i, cfg.ws_fraction)) for i, c in enumerate(clients)]

    def plans(
        self,
        nonce: int,
        addresses: list[tuple[int, Any]],
        ws_address: tuple[int, Any] | None = None,
    ) -> list[WorkerPlan]:
        cfg = self.cfg
        clients = self.clients(len(addresses))
        rate = 0.0
        if cfg.scenario == "chat":
            rate = cfg.rate / cfg.clients
        elif cfg.scenario == "fanout":
            rate = cfg.rate / cfg.publishers if cfg.rate > 0 else 0.0
        publishers = sum(1 for c in clients if c.publishes)
        workers = max(1, min(cfg.workers, len(clients)))
        shares: list[list[ClientPlan]] = [[] for _ in range(workers)]
        for i, c in enumerate(clients):
            shares[i % workers].append(c)
        per_pub = 10**9
        if cfg.max_lines > 0 and publishers:
            per_pub = max(1, cfg.max_lines // publishers)
        lat = cfg.latency_receivers
        if lat == -2:  # automatic: keep timed deliveries near 500k/s at most
            if cfg.scenario == "chat":
                # each receiver gets its room's lines; the references too (one per room
                # and server)
                receivers = cfg.clients + cfg.rooms * len(addresses)
                per_receiver = cfg.rate / cfg.rooms
                # even: each timed line is a wake-up of its own, so fewer of them
                budget = 50_000 if cfg.pattern == "even" else 500_000
                lat = (
                    -1 if per_receiver * receivers <= budget else max(8, int(budget / per_receiver))
                )
            elif cfg.scenario == "fanout":
                lat = 8
            else:
                lat = -1
        per_worker = lat if lat < 0 else max(1, math.ceil(lat / workers))
        wheres = [show_address(host, port) for host, port in cfg.servers]
        return [
            WorkerPlan(
                index=i,
                host=cfg.host,
                proto=cfg.proto,
                line_size=cfg.line_size,
                sync_nonce=nonce,
                clients=share,
                reference=cfg.scenario != "idle" and any(c.receives for c in share),
                rate_per_publisher=rate,
                window=cfg.window,
                max_lines_per_publisher=per_pub,
                latency_receivers=per_worker,
                tick_ns=int(cfg.tick_ms * 1e6),
                connect_timeout=cfg.setup_timeout,
                pattern=cfg.pattern,
                publishers_total=max(1, publishers),
                addresses=addresses,
                wheres=wheres,
                ws_address=ws_address,
                ws_where=show_address(cfg.host, cfg.ws_port or 0),
                tls=cfg.tls,
                tls_ca=cfg.tls_ca,
                chat=cfg.chat,
                rooms=cfg.rooms,
            )
            for i, share in enumerate(shares)
        ]

    def in_every_room(self, line: bytes) -> bytes:
        """What the probe sends to get `line` to everyone: chat mode, --rooms: in each room.

        The probe joins each room in turn and says the line there (the
        server takes a client's lines in order, so each reaches the room
        the probe is in at that moment).
        """
        cfg = self.cfg
        if not cfg.chat or cfg.rooms == 1:
            return self.wire.publish([line])
        lines = []
        for room in range(cfg.rooms):
            lines += [b"/join %s\n" % room_name(room, cfg.rooms), line]
        return self.wire.publish(lines)

    def server_sample(self) -> Sample | None:
        """The server's CPU and memory now (several processes: added up); None: unknown."""
        return sample_all(self.cfg.server_pids) if self.cfg.server_pids else None

    # -- progress ------------------------------------------------------------------

    def tick(self) -> None:
        """Sample the server's memory peak; redraw the progress line."""
        now = time.monotonic()
        if now < self.next_sample:
            return
        self.next_sample = now + 0.1
        if self.cfg.server_pids:
            s = self.server_sample()
            if s is not None:
                self.outcome.server_peak_rss_kib = max(self.outcome.server_peak_rss_kib, s.rss_kib)
        progress = self.pool.progress
        if self.cfg.progress and progress:
            pub = sum(p for p, _ in progress.values())
            got = sum(d for _, d in progress.values())
            el = (time.monotonic_ns() - self.outcome.go_ns) / 1e9 if self.outcome.go_ns else 0.0
            sys.stderr.write(
                f"\r  {self.cfg.scenario}: {max(el, 0):5.1f} s  published {pub:>12,}"
                f"  delivered {got:>14,}  "
            )
            sys.stderr.flush()
            self.progress_shown = True

    # -- the run ------------------------------------------------------------------

    def planned_connections(self) -> str:
        """How many connections this run opens, and which (for a refusal message)."""
        cfg = self.cfg
        pairs = 2 if self.wire.split_connections else 1
        if cfg.scenario == "idle":
            return f"{cfg.connections:,} connections, the probe included"
        if cfg.scenario == "chat":
            groups = cfg.rooms * len(cfg.servers) * (2 if cfg.ws_fraction > 0 else 1)
            refs = max(1, min(cfg.workers, cfg.clients)) * groups
            return (
                f"{cfg.clients * pairs + refs + 1:,} connections: {cfg.clients:,} clients"
                f"{' (2 each)' if pairs == 2 else ''}, about {refs:,} reference"
                f" subscriber{'' if refs == 1 else 's'}"
                " and the probe"
            )
        return f"{cfg.publishers + cfg.subscribers + 1:,} connections, the probe included"

    def run(self) -> Outcome:
        cfg, out = self.cfg, self.outcome
        raise_nofile()
        cpu0 = self_cpu_ns()
        t_setup = time.monotonic()
        out.server_before = self.server_sample()
        out.pressure_start = cpu_pressure()
        out.generator_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        nonce = random.randrange(1, 1 << 60)
        # The probe connects first: it finds the address that answers (IPv4, IPv6,
        # a name), and a server that is already full refuses it, not a worker.
        tls = client_tls(cfg.tls_ca) if cfg.tls else None
        sync_probe = Probe.open(cfg.host, cfg.port, min(10.0, cfg.setup_timeout), self.wire, tls)
        probe: Probe | None = sync_probe
        addresses = [sync_probe.address]
        try:
            for host, port in cfg.servers[1:]:  # where the others answer
                other = Probe.open(host, port, min(10.0, cfg.setup_timeout), None, tls)
                addresses.append(other.address)
                other.close()
            ws_address = None
            if cfg.ws_fraction > 0:  # where the WebSocket clients go (a probe finds it)
                ws_probe = Probe.open(cfg.host, cfg.ws_port or 0, 10.0, make_wire("ws", 64), tls)
                ws_address = ws_probe.address
                ws_probe.close()
            plans = self.plans(nonce, addresses, ws_address)
            self.pool.start(worker_main, plans)
            setup_deadline = time.monotonic() + cfg.setup_timeout + 5
            ready = self.pool.gather(
                "ready",
                setup_deadline,
                f"not every connection was established within {cfg.setup_timeout:g} s"
                " (--setup-timeout)",
                repeat=sync_probe.check,
            )
            out.connections = sum(int(m[2]) for m in ready) + 1
            sync = self.in_every_room(sync_line(nonce, cfg.line_size))
            sync_probe.send(sync)
            # Repeated until all have it: a server may register a connection late
            # (receivers drop the extra copies).
            self.pool.gather(
                "synced",
                setup_deadline,
                f"not every receiver got the sync line within {cfg.setup_timeout:g} s"
                " (--setup-timeout)",
                repeat=lambda: sync_probe.send(sync),
            )
            out.setup_s = time.monotonic() - t_setup
            if cfg.scenario == "idle":
                out.server_connected = self.server_sample()
                self.pool.sleep(cfg.hold)
                out.server_held = self.server_sample()
            elif not self.wire.split_connections:
                # The probe would receive every line from now on: it leaves.
                sync_probe.close()
                probe = None
            out.server_go = self.server_sample()
            out.go_ns = time.monotonic_ns() + GO_DELAY_NS
            end_ns = out.go_ns + int(cfg.duration * 1e9) if cfg.scenario != "idle" else out.go_ns
            self.pool.broadcast("go", out.go_ns, end_ns)
            limit = time.monotonic() + cfg.duration + cfg.setup_timeout + 10
            published: dict[int, int] = {}
            for msg in self.pool.gather("published", limit, "not every publisher finished"):
                published.update(msg[2])
                out.last_tx_ns = max(out.last_tx_ns, int(msg[3]))
            if cfg.scenario == "idle":
                assert probe is not None
                while time.monotonic_ns() < out.go_ns:
                    time.sleep(0.001)
                stamp = time.monotonic_ns()
                probe.send(self.in_every_room(encode_line(0, 0, stamp, cfg.line_size)))
                out.last_tx_ns = stamp
                published[0] = 1
            out.published = published
            self.pool.broadcast("expect", published, cfg.grace)
            results = self.pool.gather(
                "result",
                time.monotonic() + cfg.grace + cfg.setup_timeout + 10,
                "not every generator process reported its result",
            )
            out.server_end = self.server_sample()
            out.pressure_end = cpu_pressure()
            out.results = [m[2] for m in results]
            out.last_rx_ns = max((r.last_rx_ns for r in out.results), default=0)
        except BenchError as err:
            if str(err).startswith(("server full", "server busy")) or "refused" in str(err):
                raise BenchError(f"{err}; this run opens {self.planned_connections()}") from None
            raise
        finally:
            if probe is not None:
                probe.close()
            self.pool.stop()
            if self.progress_shown:
                sys.stderr.write("\r" + " " * 78 + "\r")
                sys.stderr.flush()
        out.coordinator_cpu_ns = self_cpu_ns() - cpu0
        if out.server_end is not None:
            out.server_peak_rss_kib = max(out.server_peak_rss_kib, out.server_end.rss_kib)
        return out


def uses_ws(i: int, fraction: float) -> bool:
    """Whether client `i` is a WebSocket client: `fraction` of them, spread evenly."""
    return math.floor((i + 1) * fraction) > math.floor(i * fraction)


def run_bench(cfg: Config) -> Outcome:
    return Coordinator(cfg).run()


def summarize(out: Outcome) -> dict[str, Any]:
    """The run as plain data (what `--json` prints; the table is made from it)."""
    cfg = out.config
    res = out.results
    total = {
        k: sum(getattr(r, k) for r in res)
        for k in (
            "receivers",
            "delivered",
            "expected",
            "lost",
            "reordered",
            "duplicated",
            "malformed",
            "echoed",
            "unexpected",
            "disconnected",
            "publisher_errors",
            "skipped",
            "slow_path_receivers",
            "latency_receivers",
            "cpu_ns",
            "wait_ns",
            "notices",
            "drained",
        )
    }
    hist = LatencyHistogram()
    for r in res:
        hist.merge(r.latency)
    p50, p99, p999, pmax = hist.percentiles([0.5, 0.99, 0.999, 1.0])
    late = LatencyHistogram()
    for r in res:
        late.merge(r.lateness)
    late50, late99, late999, late_max = late.percentiles([0.5, 0.99, 0.999, 1.0])
    published = sum(out.published.values())
    # Publish-only connections get the other publishers' lines (the protocol sends
    # a line to everyone else): the server delivered those too.
    drained = total["drained"] // max(1, make_wire(cfg.proto, cfg.line_size, cfg.chat).frame_size)
    tx_s = max(1e-9, (out.last_tx_ns - out.go_ns) / 1e9) if out.last_tx_ns else cfg.duration
    rx_s = max(1e-9, (out.last_rx_ns - out.go_ns) / 1e9) if out.last_rx_ns else 0.0
    wall_s = max(tx_s, rx_s)
    gen_cpu_s = (total["cpu_ns"] + out.coordinator_cpu_ns) / 1e9
    capacity = max(1, min(out.generator_cpus, len(res)))
    gen_share = gen_cpu_s / wall_s / capacity if wall_s > 0 else 0.0
    gen_wait_s = total["wait_ns"] / 1e9
    gen_demand = (gen_cpu_s + gen_wait_s) / wall_s / capacity if wall_s > 0 else 0.0
    worker_busy = max((r.cpu_ns / 1e9 / wall_s for r in res), default=0.0) if wall_s > 0 else 0.0
    # demand: running or runnable (waiting for a CPU) -- what it would have used
    worker_demand = (
        max(((r.cpu_ns + r.wait_ns) / 1e9 / wall_s for r in res), default=0.0)
        if wall_s > 0
        else 0.0
    )
    summary: dict[str, Any] = {
        "scenario": cfg.scenario,
        "proto": (cfg.proto if cfg.ws_fraction == 0 else f"{cfg.proto}+ws")
        + ("+tls" if cfg.tls else "")
        + ("+chat" if cfg.chat else ""),
        "server": show_address(cfg.host, cfg.port),
        "servers": [show_address(host, port) for host, port in cfg.servers],
        "params": {
            "line_size": cfg.line_size,
            "duration_s": cfg.duration,
            "workers": len(res),
            "ws_fraction": cfg.ws_fraction,
            "ws_port": cfg.ws_port,
            "chat": cfg.chat,
            "rooms": cfg.rooms,
            **(
                {"clients": cfg.clients, "rate": cfg.rate}
                if cfg.scenario == "chat"
                else {
                    "publishers": cfg.publishers,
                    "subscribers": cfg.subscribers,
                    "window": cfg.window,
                    "rate": cfg.rate or "max",
                }
                if cfg.scenario == "fanout"
                else {"connections": cfg.connections, "hold_s": cfg.hold}
            ),
        },
        "connections": out.connections,
        "setup_s": round(out.setup_s, 3),
        "published": published,
        "published_per_s": round(published / tx_s, 1) if cfg.scenario != "idle" else None,
        "delivered": total["delivered"],
        "expected": total["expected"],
        "delivered_per_s": round(total["delivered"] / rx_s, 1) if rx_s else 0.0,
        "delivered_to_publishers": drained,  # not checked; publish-only connections
        # what delivering every line as fast as it was published would give
        "expected_per_s": round(total["expected"] / tx_s, 1) if cfg.scenario != "idle" else None,
        "receive_window_s": round(rx_s, 4),
        "latency_us": {"p50": p50, "p99": p99, "p99.9": p999, "max": pmax},
        "latency_samples": hist.total,
        "latency_receivers": total["latency_receivers"],
        "lost": total["lost"],
        "reordered": total["reordered"],
        "duplicated": total["duplicated"],
        "malformed": total["malformed"] + total["unexpected"],
        "echoed": total["echoed"],
        "disconnected": total["disconnected"],
        "publisher_errors": total["publisher_errors"],
        "skipped_lines": total["skipped"],
        "notices": total["notices"],
        "slow_path_receivers": total["slow_path_receivers"],
        "complete": all(r.complete for r in res),
        "generator": {
            "processes": len(res),
            "cpus": out.generator_cpus,
            "cpu_s": round(gen_cpu_s, 4),
            "busy": round(gen_share, 3),
            "busiest_process": round(worker_busy, 3),
            "wait_s": round(gen_wait_s, 4),
            "demand": round(gen_demand, 3),
            "busiest_process_demand": round(worker_demand, 3),
        },
        "cpu_pressure_pct": {"start": out.pressure_start, "end": out.pressure_end},
        "schedule": None,
        "server_metrics": None,
    }
    if cfg.scenario == "chat" and cfg.rate > 0:
        summary["target_rate"] = cfg.rate
    if cfg.scenario != "idle" and cfg.rate > 0:
        summary["schedule"] = {
            "pattern": cfg.pattern,
            "interval_us": round(1e6 / cfg.rate, 3),
            "tick_ms": cfg.tick_ms if cfg.pattern == "ticks" else None,
            "lines_timed": late.total,
            "lateness_us": {"p50": late50, "p99": late99, "p99.9": late999, "max": late_max},
        }
    if out.server_go and out.server_end:
        cpu_ns = out.server_end.cpu_ns - out.server_go.cpu_ns
        wait_ns = max(0, out.server_end.wait_ns - out.server_go.wait_ns)
        base = out.server_before
        server: dict[str, Any] = {
            "pid": cfg.server_pid,
            "cpu_s": round(cpu_ns / 1e9, 4),
            "cpu_busy": round(cpu_ns / 1e9 / wall_s, 3) if wall_s else None,
            "user_s": round((out.server_end.user_ns - out.server_go.user_ns) / 1e9, 3),
            "sys_s": round((out.server_end.sys_ns - out.server_go.sys_ns) / 1e9, 3),
            "wait_s": round(wait_ns / 1e9, 4),
            "demand": round((cpu_ns + wait_ns) / 1e9 / wall_s, 3) if wall_s else None,
            # per line the server delivered: checked, and to publish-only connections
            "ns_per_delivered": round(cpu_ns / (total["delivered"] + drained), 1)
            if total["delivered"]
            else None,
            "rss_kib_before": base.rss_kib if base else None,
            "rss_kib_go": out.server_go.rss_kib,
            "rss_kib_end": out.server_end.rss_kib,
            "rss_kib_peak": max(out.server_peak_rss_kib, out.server_end.rss_kib),
            "hwm_kib": out.server_end.hwm_kib,
        }
        if cfg.scenario == "idle" and base and out.server_held and out.server_connected:
            conns = max(1, cfg.connections)
            server["rss_kib_connected"] = out.server_connected.rss_kib
            server["rss_kib_held"] = out.server_held.rss_kib
            server["rss_growth_kib_per_conn"] = round(
                (out.server_held.rss_kib - base.rss_kib) / conns, 3
            )
        if wall_s:
            server["user_busy"] = round(server["user_s"] / wall_s, 3)
            server["sys_busy"] = round(server["sys_s"] / wall_s, 3)
        summary["server_metrics"] = server
    if len(cfg.servers) > 1:
        summary["nodes"] = node_figures(cfg, res)
    summary["anomalies"] = sum(
        summary[k] for k in ("lost", "reordered", "duplicated", "malformed", "echoed")
    )
    verdict = []
    if cfg.scenario == "idle":
        reached = "every" if summary["lost"] == 0 else "NOT every"
        verdict.append(
            f"the broadcast reached {reached} connection within {_ms(pmax)} (load too short"
            " to judge saturation)"
        )
        summary["verdict"] = verdict
        return summary
    if gen_demand >= 0.9 or worker_demand >= 0.9:
        verdict.append("GENERATOR-BOUND: the generator, not the server, limited this run")
    sm = summary["server_metrics"]
    if sm and sm["demand"] is not None and sm["demand"] >= 0.9:
        verdict.append("server-bound: the server had work for a whole CPU")
    if sm and wall_s and sm["wait_s"] / wall_s >= 0.1:
        verdict.append(
            f"the server waited {sm['wait_s'] / wall_s:.0%} of the time for its CPU"
            " (other processes on it)"
        )
    if wall_s and gen_wait_s / wall_s / capacity >= 0.1:
        verdict.append(
            f"the generator waited {gen_wait_s / wall_s / capacity:.0%} of the time for a CPU"
        )
    if cfg.scenario == "chat" and published < 0.97 * cfg.rate * cfg.duration and not cfg.max_lines:
        verdict.append("publishers fell behind the target rate")
    sched = summary["schedule"]
    if sched and sched["pattern"] == "even" and late99 is not None:
        slack_us = max(100.0, sched["interval_us"])
        if late99 > slack_us:
            verdict.append(
                f"the even schedule was not kept: 1% of lines left more than {_us_text(late99)}"
                f" late (one line every {sched['interval_us']:g} us)"
            )
    if not verdict:
        verdict.append("neither side saturated")
    summary["verdict"] = verdict
    return summary


def node_figures(cfg: Config, res: list[WorkerResult]) -> list[dict[str, Any]]:
    """Several servers: what the receivers on each got, and their latency."""
    nodes = []
    for node, (host, port) in enumerate(cfg.servers):
        hist = LatencyHistogram()
        for r in res:
            hist.merge(r.node_latency.get(node, {}))
        p50, p99, pmax = hist.percentiles([0.5, 0.99, 1.0])
        nodes.append(
            {
                "server": show_address(host, port),
                "delivered": sum(r.node_delivered.get(node, 0) for r in res),
                "lost": sum(r.node_lost.get(node, 0) for r in res),
                "latency_us": {"p50": p50, "p99": p99, "max": pmax},
                "latency_samples": hist.total,
            }
        )
    return nodes


def _us_text(micros: int) -> str:
    return f"{micros / 1000:.1f} ms" if micros >= 1000 else f"{micros} us"


def _ms(micros: int | None) -> str:
    return "-" if micros is None else f"{micros / 1000:.1f} ms"


def run_and_summarize(cfg: Config, on_error: Callable[[str], None]) -> dict[str, Any] | None:
    try:
        return summarize(run_bench(cfg))
    except BenchError as err:
        on_error(str(err))
        return None
    except OSError as err:
        on_error(f"cannot reach {show_address(cfg.host, cfg.port)}: {err.strerror or err}")
        return None
