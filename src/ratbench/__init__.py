"""`rat bench`: load-test any server that speaks the rat line protocol (or Redis pub/sub).

Scenarios:

- `chat`: N clients that all publish (at a fixed total rate) and all receive;
- `fanout`: P publishers sending as fast as a bounded in-flight window allows,
  S silent subscribers;
- `idle`: C connections held open for a while, then one broadcast that every
  one of them must receive.

Every line carries its publisher id, sequence number and send time; every
line received is checked (see `ratbench.receive`).  The report gives
published and delivered lines/s, latency percentiles, lost, reordered,
duplicated and malformed lines (all must be 0), and with `--server-pid` the
server's CPU time, its nanoseconds of CPU per delivered line and its memory.
It also reports the generator's own CPU use and says when the generator, not
the server, was the bottleneck.

Entry points: `add_arguments(parser)` and `run(args)` (the `rat bench`
subcommand), or `python -m ratbench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rat.argtypes import real_number, whole_number
from ratbench.runner import Config, progress_enabled, run_and_summarize
from ratbench.wire import MIN_LINE_SIZE

__all__ = ["add_arguments", "format_table", "run"]


_positive_int = whole_number(1)
_count = whole_number(0)
_seconds = real_number(above=0, maximum=3600)
_rate = real_number(at_least=0, maximum=100_000_000)


def _line_size(text: str) -> int:
    value = _positive_int(text)
    if not MIN_LINE_SIZE <= value <= 1 << 20:
        raise argparse.ArgumentTypeError(
            f"line size must be {MIN_LINE_SIZE}..{1 << 20} bytes: {text!r}"
        )
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("server")
    where.add_argument("--host", default="127.0.0.1", help="server address")
    where.add_argument("--port", type=_positive_int, default=8080, help="server port")
    where.add_argument(
        "--proto",
        choices=("line", "redis"),
        default="line",
        help="line: the rat protocol; redis: Redis pub/sub on channel 'rat'",
    )
    where.add_argument(
        "--server-pid",
        type=_positive_int,
        default=None,
        metavar="PID",
        help="measure this process's CPU time and memory over the run",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--duration", type=_seconds, default=3.0, help="seconds of load")
    run.add_argument(
        "--grace",
        type=_seconds,
        default=3.0,
        help="seconds to wait after the load for lines still in flight (then: lost)",
    )
    run.add_argument(
        "--max-lines",
        type=_count,
        default=0,
        metavar="N",
        help="stop after publishing N lines in total (0: only --duration)",
    )
    run.add_argument(
        "--line-size",
        type=_line_size,
        default=64,
        metavar="BYTES",
        help="size of every line, newline included",
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="generator processes (use more when the generator is the bottleneck"
        " and there are CPUs to spare)",
    )
    run.add_argument(
        "--latency-receivers",
        type=int,
        default=-2,
        metavar="K",
        help="receivers whose every line is timed (-1: all; default: all unless"
        " that would exceed ~500k timed lines/s, then fewer)",
    )
    run.add_argument(
        "--tick-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="chat: how often publishers send what is due (lines are stamped then)",
    )
    run.add_argument(
        "--setup-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="limit for connecting and synchronising all clients",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the result as JSON")
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="live progress on stderr (default: only when stderr is a terminal)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `rat bench` arguments (a scenario subcommand each) to `parser`."""
    parser.description = (
        "Drive a line-broadcast server (rat, or anything speaking its protocol)"
        " with a scenario, check every line, report rates, latency and server cost."
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    chat = scenarios.add_parser(
        "chat",
        help="N clients that all publish and receive, at a fixed total rate",
        formatter_class=fmt,
    )
    chat.add_argument("--clients", type=_positive_int, default=10, metavar="N")
    chat.add_argument(
        "--rate", type=_rate, default=1000.0, metavar="LINES_PER_S", help="total over all clients"
    )
    _common(chat)
    fanout = scenarios.add_parser(
        "fanout",
        help="P publishers at the highest rate a bounded window allows, S silent subscribers",
        formatter_class=fmt,
    )
    fanout.add_argument("--publishers", type=_positive_int, default=1, metavar="P")
    fanout.add_argument("--subscribers", type=_positive_int, default=100, metavar="S")
    fanout.add_argument(
        "--window",
        type=_positive_int,
        default=256,
        metavar="LINES",
        help="lines a publisher may have in flight (sent, not yet received)",
    )
    fanout.add_argument(
        "--rate",
        type=_rate,
        default=0.0,
        metavar="LINES_PER_S",
        help="total publish rate (0: as fast as the window allows)",
    )
    _common(fanout)
    idle = scenarios.add_parser(
        "idle",
        help="C connections held open, then one broadcast all must receive",
        formatter_class=fmt,
    )
    idle.add_argument("--connections", type=_positive_int, default=1000, metavar="C")
    idle.add_argument(
        "--hold", type=_seconds, default=2.0, metavar="SECONDS", help="how long to hold them"
    )
    _common(idle)


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config(
        scenario=args.scenario,
        host=args.host,
        port=args.port,
        proto=args.proto,
        server_pid=args.server_pid,
        duration=args.duration,
        grace=args.grace,
        line_size=args.line_size,
        workers=args.workers,
        max_lines=args.max_lines,
        latency_receivers=args.latency_receivers,
        tick_ms=args.tick_ms,
        setup_timeout=args.setup_timeout,
        progress=progress_enabled(getattr(args, "progress", None)),
    )
    if args.scenario == "chat":
        cfg.clients, cfg.rate = args.clients, args.rate
    elif args.scenario == "fanout":
        cfg.publishers, cfg.subscribers = args.publishers, args.subscribers
        cfg.window, cfg.rate = args.window, args.rate
    else:
        cfg.connections, cfg.hold = args.connections, args.hold
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run `rat bench`: 0 if every line arrived intact, 1 if not, 3 on failure."""
    cfg = config_from_args(args)
    if cfg.scenario == "chat" and cfg.rate <= 0:
        print("rat bench: chat needs a --rate above 0", file=sys.stderr)
        return 2

    def fail(message: str) -> None:
        print(f"rat bench: {message}", file=sys.stderr)

    try:
        summary = run_and_summarize(cfg, fail)
    except KeyboardInterrupt:
        fail("interrupted")
        return 130
    if summary is None:
        return 3
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(summary))
    sys.stdout.flush()
    return 0 if summary["anomalies"] == 0 and summary["disconnected"] == 0 else 1


def _us(value: int | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1_000_000:
        return f"{value / 1e6:.2f} s"
    if abs(value) >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value} us"


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} MiB"


def format_table(s: dict[str, Any]) -> str:
    """The human-readable report of one run."""
    p = s["params"]
    if s["scenario"] == "chat":
        what = f"{p['clients']} clients, {p['rate']:,.0f} lines/s in total"
    elif s["scenario"] == "fanout":
        rate = p["rate"] if p["rate"] == "max" else f"{p['rate']:,.0f} lines/s"
        what = f"{p['publishers']} -> {p['subscribers']}, rate {rate}, window {p['window']}"
    else:
        what = f"{p['connections']} connections held {p['hold_s']} s"
    lat = s["latency_us"]
    idle = s["scenario"] == "idle"
    delivered = f"{s['delivered']:,} of {s['expected']:,} lines"
    if not idle:
        delivered += f", {s['delivered_per_s']:,.0f} lines/s"
    rows = [
        (
            "run",
            f"{s['scenario']}: {what}; {p['line_size']}-byte lines; server {s['server']}"
            f" ({s['proto']}); {s['connections']} connections",
        ),
        (
            "published",
            f"{s['published']:,} lines"
            + (f", {s['published_per_s']:,.0f} lines/s" if s["published_per_s"] else ""),
        ),
        ("delivered", delivered),
        (
            "latency",
            f"p50 {_us(lat['p50'])}  p99 {_us(lat['p99'])}  p99.9 {_us(lat['p99.9'])}"
            f"  max {_us(lat['max'])}  ({s['latency_samples']:,} lines timed on"
            f" {s['latency_receivers']} receivers)",
        ),
        (
            "anomalies",
            f"lost {s['lost']:,}  reordered {s['reordered']:,}  duplicated {s['duplicated']:,}"
            f"  malformed {s['malformed']:,}  echoed {s['echoed']:,}"
            f"  disconnected {s['disconnected']:,}",
        ),
    ]
    sm = s["server_metrics"]
    if sm:
        ns = sm["ns_per_delivered"]
        line = f"pid {sm['pid']}: CPU {sm['cpu_s']:.3f} s"
        if not idle:
            line += f" ({sm['cpu_busy']:.0%} of one CPU"
            line += f", waited {sm['wait_s']:.3f} s for it)" if sm["wait_s"] >= 0.001 else ")"
            line += f", {ns:,.0f} ns per delivered line" if ns is not None else ""
        rows.append(("server", line))
        mem = (
            f"RSS {_kib(sm['rss_kib_go'])} at start of load, {_kib(sm['rss_kib_end'])} at end,"
            f" peak {_kib(sm['rss_kib_peak'])}"
        )
        if "rss_growth_kib_per_conn" in sm:
            mem = (
                f"RSS {_kib(sm['rss_kib_before'])} before, {_kib(sm['rss_kib_held'])} holding"
                f" {p['connections']:,} connections:"
                f" {sm['rss_growth_kib_per_conn']:.2f} KiB per connection"
            )
        rows.append(("memory", mem))
    g = s["generator"]
    gen = f"{g['processes']} process(es) on {g['cpus']} CPU(s): CPU {g['cpu_s']:.3f} s"
    if not idle:
        gen += f", {g['busy']:.0%} busy (busiest process {g['busiest_process']:.0%})"
        gen += f", waited {g['wait_s']:.3f} s for a CPU" if g["wait_s"] >= 0.001 else ""
    pressure = s["cpu_pressure_pct"]["end"]
    if pressure is not None:
        gen += f"; machine CPU pressure {pressure:.0f}%"
    rows.append(("generator", gen))
    rows.append(("verdict", "; ".join(s["verdict"])))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
