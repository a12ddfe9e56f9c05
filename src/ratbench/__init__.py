"""`rat bench`: load-test any server that speaks the rat line protocol (or Redis pub/sub).

Scenarios:

- `chat`: N clients that all publish (at a fixed total rate) and all receive;
  `--rates A,B,...` sweeps the rate and says where the server saturates;
- `fanout`: P publishers sending as fast as a bounded in-flight window allows
  (or at a rate), S silent subscribers;
- `idle`: C connections held open for a while, then one broadcast that every
  one of them must receive;
- `connect`: connection churn (connect, then reset or close, in a loop) while
  a well-behaved newcomer measures how long joining takes (`ratbench.churn`).

Every line carries its publisher id, sequence number and send time; every
line received is checked (see `ratbench.receive`).  The report gives
published and delivered lines/s, latency percentiles, lost, reordered,
duplicated and malformed lines (all must be 0), how well the send schedule
was kept, and with `--server-pid` the server's CPU time (user and system),
its nanoseconds of CPU per delivered line and its memory.  It also reports
the generator's own CPU use and says when the generator, not the server, was
the bottleneck.

Entry points: `add_arguments(parser)` and `run(args)` (the `rat bench`
subcommand), or `python -m ratbench`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from rat.argtypes import real_number, whole_number
from ratbench.report import format_table
from ratbench.wire import MAX_PUBID, MIN_LINE_SIZE

__all__ = ["add_arguments", "format_table", "run"]

EXIT_OK, EXIT_ANOMALIES, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES = """\
exit status:
  0    every line arrived intact (connect: every newcomer got its line)
  1    anomalies: lines lost, reordered, duplicated, malformed or echoed, or
       connections dropped (in a --rates sweep: at any rate)
  2    usage error (a bad option or value)
  3    the run could not be done: server unreachable or refusing connections,
       set-up timed out, a generator process failed (--json: {"error": ...})
  130  interrupted (Ctrl-C)"""

_port = whole_number(1, 65535)
_pid = whole_number(1, 1 << 22)  # Linux's largest pid_max
_workers = whole_number(1, 256)
_clients = whole_number(1, MAX_PUBID)  # publisher ids have five digits
_receivers = whole_number(1, 1_000_000)
_connections = whole_number(2, 1_000_000)
_window = whole_number(1, 1_000_000)
_count = whole_number(0, 10**9)
_seconds = real_number(above=0, maximum=3600)
_rate = real_number(above=0, maximum=100_000_000)
_rate_or_max = real_number(at_least=0, maximum=100_000_000)
_tick_ms = real_number(above=0, maximum=1000)
_latency_count = whole_number(0, 1_000_000)
_fraction = real_number(at_least=0, maximum=1)
_rooms = whole_number(1, 10_000)
MAX_RATES = 30
MAX_SERVERS = 64


def _line_size(text: str) -> int:
    return whole_number(MIN_LINE_SIZE, 1 << 20)(text)


def _latency_receivers(text: str) -> str | int:
    """`auto`, `all`, or how many receivers to time (0: none)."""
    if text in ("auto", "all"):
        return text
    try:
        return _latency_count(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err} (or 'auto' or 'all')") from None


def _ports(text: str) -> list[int]:
    """A port, or several comma-separated (several servers of one cluster)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts) or len(parts) > MAX_SERVERS:
        raise argparse.ArgumentTypeError(f"expected PORT or PORT,PORT,... (at most {MAX_SERVERS})")
    return [_port(p) for p in parts]


def _pids(text: str) -> list[int]:
    """A process id, or several comma-separated (a cluster's nodes: their figures add up)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts) or len(parts) > MAX_SERVERS:
        raise argparse.ArgumentTypeError(f"expected PID or PID,PID,... (at most {MAX_SERVERS})")
    return [_pid(p) for p in parts]


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, with an IPv6 address in brackets ([::1]:8080)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, _port(port)


def _rates(text: str) -> list[float]:
    """A comma-separated list of rates, e.g. 500,1000,2000 (sorted, duplicates dropped)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"no rates in {text!r}")
    if len(parts) > MAX_RATES:
        raise argparse.ArgumentTypeError(f"at most {MAX_RATES} rates: {text!r}")
    return sorted({_rate(p) for p in parts})


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default, unless its help already says it; epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default:" in text:
            return text
        return super()._get_help_string(action)


def _server_options(
    parser: argparse.ArgumentParser, protos: tuple[str, ...], several: bool = True
) -> None:
    """--host, --port, --proto...; `several`: also servers of one cluster, mixed transports."""
    where = parser.add_argument_group("server")
    where.add_argument(
        "--host",
        default="127.0.0.1",
        help="server address: IPv4, IPv6 (::1) or a host name (the first address that answers)",
    )
    if several:
        where.add_argument(
            "--port",
            type=_ports,
            default=[8080],
            metavar="PORT[,PORT...]",
            help="server TCP port; several (on --host): the nodes of one cluster, clients"
            " spread round-robin over them (default: 8080)",
        )
    else:
        where.add_argument(
            "--port",
            type=lambda text: [_port(text)],
            default=[8080],
            help="server TCP port (default: 8080)",
        )
    if several:
        where.add_argument(
            "--connect",
            type=_host_port,
            action="append",
            default=None,
            metavar="HOST:PORT",
            help="a server to connect to, instead of --host/--port; repeat it for the nodes"
            " of one cluster (default: none)",
        )
    where.add_argument(
        "--proto",
        choices=protos,
        default="line",
        help="line: the rat protocol; redis: Redis pub/sub on channel 'rat'"
        + ("; ws: WebSocket text messages on path /ws, one line each" if "ws" in protos else ""),
    )
    if "ws" in protos and several:
        where.add_argument(
            "--ws-fraction",
            type=_fraction,
            default=0.0,
            metavar="F",
            help="this share of the clients (spread evenly) are WebSocket clients on"
            " --ws-port, path /ws; the others speak --proto on --port, in one broadcast",
        )
        where.add_argument(
            "--ws-port",
            type=_port,
            default=None,
            metavar="PORT",
            help="the server's WebSocket port, for --ws-fraction (default: none)",
        )
    if "ws" in protos:
        where.add_argument(
            "--tls",
            action="store_true",
            help="wrap every connection in TLS (certificates not verified unless --tls-ca)",
        )
        where.add_argument(
            "--tls-ca",
            default=None,
            metavar="FILE",
            help="with --tls: verify the server's certificate and name against this CA file"
            " (default: none, no verification)",
        )
    where.add_argument(
        "--server-pid",
        type=_pids,
        default=None,
        metavar="PID[,PID...]",
        help="measure this process's CPU time (user and system) and memory over the run;"
        " several: added up (default: none, no server figures)",
    )


def _chat_options(parser: argparse.ArgumentParser, what: str) -> None:
    chat = parser.add_argument_group("chat mode")
    chat.add_argument(
        "--chat",
        action="store_true",
        help="the server is in chat mode (rat serve --chat): publishers take the nicks"
        " b00001, b00002, ...; '* ' notices are skipped and the '<nick> ' prefix checked",
    )
    chat.add_argument(
        "--rooms",
        type=_rooms,
        default=1,
        metavar="R",
        help=f"with --chat: spread the {what} over R rooms #r0..#r(R-1), round-robin"
        " (1: everyone stays in #lobby); the order is checked per room",
    )


def _run_options(parser: argparse.ArgumentParser, grace: bool = True) -> argparse._ArgumentGroup:
    run = parser.add_argument_group("run")
    run.add_argument("--duration", type=_seconds, default=3.0, help="seconds of load")
    if grace:
        run.add_argument(
            "--grace",
            type=_seconds,
            default=3.0,
            help="seconds to wait after the load for lines still in flight (then: lost)",
        )
    run.add_argument(
        "--line-size",
        type=_line_size,
        default=64,
        metavar="BYTES",
        help=f"size of every line, newline included ({MIN_LINE_SIZE}..{1 << 20})",
    )
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="generator processes (use more when the generator is the bottleneck"
        " and there are CPUs to spare)",
    )
    run.add_argument(
        "--setup-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="limit for connecting and synchronising all clients",
    )
    return run


def _load_options(run: argparse._ArgumentGroup, pattern_default: str) -> None:
    run.add_argument(
        "--max-lines",
        type=_count,
        default=0,
        metavar="N",
        help="stop after publishing N lines in total (0: only --duration)",
    )
    run.add_argument(
        "--latency-receivers",
        type=_latency_receivers,
        default="auto",
        metavar="{auto,all,K}",
        help="receivers whose every line is timed: all, K of them, or auto (all unless"
        " that would exceed ~500k timed lines/s, ~50k with --pattern even, then fewer;"
        " the others are read every 5 ms and checked as exactly)",
    )
    run.add_argument(
        "--pattern",
        choices=("even", "ticks"),
        default=pattern_default,
        help="with a rate: even sends every line at its own evenly spaced time,"
        " round-robin over the publishers (no bursts); ticks sends each publisher's"
        " due lines in one batch every --tick-ms",
    )
    run.add_argument(
        "--tick-ms",
        type=_tick_ms,
        default=5.0,
        metavar="MS",
        help="--pattern ticks: how often publishers send what is due (lines are stamped then)",
    )


def _output_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", help="print the result (or the error) as JSON on stdout"
    )
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=argparse.SUPPRESS,
        help="live progress on stderr (default: only when stderr is a terminal)",
    )


CHAT_NOTES = """\
Connections: the N clients, plus one silent reference subscriber per generator
process (it checks the global order), plus the probe during set-up (it sends
the sync line and is closed before the load): N + workers + 1 at the peak.
Redis (--proto redis): two connections per client (PUBLISH, SUBSCRIBE).

Why --pattern even is the default: real chat clients send independently, so
lines reach the server spread out in time.  With ticks every client sends its
due lines in the same 5 ms beat, so the server gets bursts it can coalesce into
one read and one fan-out per client, which flatters servers that batch per
loop turn and hides per-line costs.  even sends line k at exactly go + k/rate,
from client k mod N, one line per send; the report shows how late lines left
(p99 well under the interval means the schedule was kept).

--rates R1,R2,...: one run per rate (lowest first) and one table of server CPU
(user/system), delivered rate, latency and loss per rate, saying where the
server saturates (CPU >= 95% of one core; needs --server-pid) and where it stops
keeping up (lines lost, delivered rate below 90% of what was published, or p99
above both 50 ms and 20x the p99 of the lowest rate)."""

FANOUT_NOTES = """\
Connections: P + S, plus the probe during set-up (closed before the load); one
of the subscribers of each generator process is the reference that checks the
order.  --rate 0 publishes as fast as --window allows."""

IDLE_NOTES = """\
Connections: exactly C.  The generator holds C - 1; the probe is the C-th: it
sends the sync line and, after --hold, the one broadcast that the other C - 1
must all receive.  So --connections can equal a server's client limit (rat's
--max-clients, 10000 by default)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `rat bench` arguments (a scenario subcommand each) to `parser`."""
    from ratbench.churn import CONNECT_NOTES, add_connect_arguments  # noqa: PLC0415

    parser.description = (
        "Drive a line-broadcast server (rat, or anything speaking its protocol)"
        " with a scenario, check every line, report rates, latency and server cost."
        " SCENARIO --help gives each scenario's options."
    )
    parser.formatter_class = HelpFormatter
    parser.epilog = EXIT_CODES
    scenarios = parser.add_subparsers(
        dest="scenario", required=True, metavar="SCENARIO", help="one of:"
    )

    def scenario(name: str, summary: str, notes: str) -> argparse.ArgumentParser:
        return scenarios.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"{notes}\n\n{EXIT_CODES}",
            formatter_class=HelpFormatter,
        )

    chat = scenario(
        "chat", "N clients that all publish and receive, at a fixed total rate", CHAT_NOTES
    )
    load = chat.add_argument_group("load")
    load.add_argument(
        "--clients", type=_clients, default=10, metavar="N", help="clients (all publish)"
    )
    rates = load.add_mutually_exclusive_group()
    rates.add_argument(
        "--rate",
        type=_rate,
        default=1000.0,
        metavar="LINES_PER_S",
        help="total over all clients",
    )
    rates.add_argument(
        "--rates",
        type=_rates,
        default=None,
        metavar="R1,R2,...",
        help="a sweep: one run per rate, one table (default: none, a single --rate run)",
    )
    _server_options(chat, ("line", "redis", "ws"))
    _chat_options(chat, "clients")
    _load_options(_run_options(chat), "even")
    _output_options(chat)

    fanout = scenario(
        "fanout",
        "P publishers at the highest rate a bounded window allows, S silent subscribers",
        FANOUT_NOTES,
    )
    load = fanout.add_argument_group("load")
    load.add_argument("--publishers", type=_clients, default=1, metavar="P", help="publishers")
    load.add_argument(
        "--subscribers", type=_receivers, default=100, metavar="S", help="silent subscribers"
    )
    load.add_argument(
        "--window",
        type=_window,
        default=256,
        metavar="LINES",
        help="lines a publisher may have in flight (sent, not yet received)",
    )
    load.add_argument(
        "--rate",
        type=_rate_or_max,
        default=0.0,
        metavar="LINES_PER_S",
        help="total publish rate (0: as fast as the window allows)",
    )
    _server_options(fanout, ("line", "redis", "ws"))
    _chat_options(fanout, "publishers and the subscribers (each round-robin)")
    _load_options(_run_options(fanout), "even")
    _output_options(fanout)

    idle = scenario(
        "idle", "C connections held open, then one broadcast all must receive", IDLE_NOTES
    )
    load = idle.add_argument_group("load")
    load.add_argument(
        "--connections",
        type=_connections,
        default=1000,
        metavar="C",
        help="connections in total, the probe included",
    )
    load.add_argument(
        "--hold", type=_seconds, default=2.0, metavar="SECONDS", help="how long to hold them"
    )
    _server_options(idle, ("line", "redis", "ws"))
    _chat_options(idle, "connections")
    _run_options(idle)
    _output_options(idle)

    connect = scenario(
        "connect",
        "connection churn (connect, reset or close, again) while a newcomer times joining",
        CONNECT_NOTES,
    )
    add_connect_arguments(connect)
    _server_options(connect, ("line", "redis", "ws"), several=False)
    _run_options(connect, grace=False)
    _output_options(connect)


def progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty()


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's `Config` (`ChurnConfig` for the connect scenario)."""
    from ratbench.churn import churn_config  # noqa: PLC0415
    from ratbench.plan import Target  # noqa: PLC0415
    from ratbench.runner import Config  # noqa: PLC0415

    if args.scenario == "connect":
        return churn_config(args, progress_enabled(getattr(args, "progress", None)))
    lat = getattr(args, "latency_receivers", "auto")
    cfg = Config(
        **Target.options(args, progress_enabled(getattr(args, "progress", None))),
        scenario=args.scenario,
        grace=args.grace,
        max_lines=getattr(args, "max_lines", 0),
        latency_receivers=-2 if lat == "auto" else -1 if lat == "all" else int(lat),
        pattern=getattr(args, "pattern", "even"),
        tick_ms=getattr(args, "tick_ms", 5.0),
        ws_fraction=getattr(args, "ws_fraction", 0.0),
        ws_port=getattr(args, "ws_port", None),
        tls=getattr(args, "tls", False) or getattr(args, "tls_ca", None) is not None,
        tls_ca=getattr(args, "tls_ca", None),
        chat=args.chat,
        rooms=args.rooms,
    )
    if cfg.ws_fraction > 0 and (cfg.ws_port is None or cfg.proto != "line"):
        raise argparse.ArgumentTypeError("--ws-fraction needs --ws-port and --proto line")
    if cfg.ws_fraction > 0 and len(cfg.servers) > 1:
        raise argparse.ArgumentTypeError("--ws-fraction takes one server, not several")
    if cfg.chat and cfg.proto == "redis":
        raise argparse.ArgumentTypeError("--chat is rat's chat mode: not with --proto redis")
    if cfg.rooms > 1 and not cfg.chat:
        raise argparse.ArgumentTypeError(
            "--rooms needs --chat (without chat mode a server has one room)"
        )
    spread = getattr(args, "clients", None) or getattr(args, "publishers", None)
    if spread is not None and cfg.rooms > spread:
        who = "clients" if args.scenario == "chat" else "publishers"
        raise argparse.ArgumentTypeError(
            f"--rooms {cfg.rooms} with {spread} {who}: some rooms would have no publisher"
        )
    if args.scenario == "chat":
        cfg.clients, cfg.rate = args.clients, args.rate
    elif args.scenario == "fanout":
        cfg.publishers, cfg.subscribers = args.publishers, args.subscribers
        cfg.window, cfg.rate = args.window, args.rate
    else:
        cfg.connections, cfg.hold = args.connections, args.hold
    return cfg


def _emit(args: argparse.Namespace, data: dict[str, Any], table: Callable[[], str]) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table())
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Run `rat bench`; the exit status is documented in `EXIT_CODES`."""
    from ratbench import churn, report, sweep  # noqa: PLC0415
    from ratbench.runner import run_and_summarize  # noqa: PLC0415

    try:
        cfg = config_from_args(args)
    except argparse.ArgumentTypeError as err:
        print(f"rat bench: {err}", file=sys.stderr)
        return EXIT_USAGE
    errors: list[str] = []

    def fail(message: str) -> None:
        errors.append(message)
        print(f"rat bench: {message}", file=sys.stderr)

    def failed(status: int) -> int:
        if args.json:
            error = errors[-1] if errors else "failed"
            _emit(args, {"error": error, "exit_status": status, "scenario": args.scenario}, str)
        return status

    try:
        if args.scenario == "connect":
            summary = churn.run_and_summarize(cfg, fail)
            if summary is None:
                return failed(EXIT_FAILED)
            _emit(args, summary, lambda: report.format_connect(summary))
            return EXIT_OK if summary["anomalies"] == 0 else EXIT_ANOMALIES
        if getattr(args, "rates", None):
            result = sweep.run_sweep(cfg, args.rates, fail)
            _emit(args, result, lambda: report.format_sweep(result))
            if "error" in result:
                return EXIT_FAILED
            return EXIT_OK if result["anomalies"] == 0 else EXIT_ANOMALIES
        one = run_and_summarize(cfg, fail)
    except KeyboardInterrupt:
        fail("interrupted")
        return failed(EXIT_INTERRUPTED)
    if one is None:
        return failed(EXIT_FAILED)
    _emit(args, one, lambda: format_table(one))
    return EXIT_OK if one["anomalies"] == 0 and one["disconnected"] == 0 else EXIT_ANOMALIES
