"""The `rat` command line: `rat serve` and `rat bench`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from rat import __version__
from rat.argtypes import real_number, whole_number
from rat.framing import DEFAULT_MAX_LINE
from rat.outbuf import DEFAULT_MAX_PENDING
from rat.poller import make_poller
from rat.server import Limits, Server, open_listener, raise_nofile_limit

LOG_LEVELS = ("debug", "info", "warning", "error")


_positive_int = whole_number(1)
_port = whole_number(0, 65535)
_seconds = real_number(above=0)


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rat", description="rat: an epoll TCP line-broadcast server."
    )
    parser.add_argument("--version", action="version", version=f"rat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the broadcast server",
        description="Relay every complete line a client sends to every other client.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=8080, help="TCP port (0: any free port)")
    serve.add_argument("--echo", action="store_true", help="also send a line back to its sender")
    serve.add_argument(
        "--backend",
        choices=("auto", "epoll", "select"),
        default="auto",
        help="poller: edge-triggered epoll, or the portable selectors default"
        " (auto: epoll on Linux)",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log verbosity")
    serve.add_argument(
        "--trace",
        action="store_true",
        help="print every poller event and interest change to stderr (for learning)",
    )
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--max-line",
        type=_positive_int,
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="longest line accepted, newline included; longer: ERR and disconnect",
    )
    limits.add_argument(
        "--max-pending",
        type=_positive_int,
        default=DEFAULT_MAX_PENDING,
        metavar="BYTES",
        help="output queued for one client before it is dropped as a slow consumer",
    )
    limits.add_argument(
        "--write-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="drop a client whose socket accepted no queued bytes for this long",
    )
    limits.add_argument(
        "--max-clients",
        type=_positive_int,
        default=10000,
        metavar="N",
        help="connections beyond this get 'ERR server full' and are closed",
    )
    limits.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long to flush queued output before exiting",
    )

    bench = commands.add_parser(
        "bench",
        help="load-test a line-broadcast server (rat, or any server speaking the protocol)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # The load generator is its own package (`ratbench`); it is imported only
    # when `rat bench` runs, so `rat serve` never loads it.
    if with_bench:
        bench_module = _bench_module()
        if bench_module is not None:
            bench_module.add_arguments(bench)
    return parser


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("rat")
    limits = Limits(
        max_line=args.max_line,
        max_pending=args.max_pending,
        write_timeout=args.write_timeout,
        max_clients=args.max_clients,
        shutdown_timeout=args.shutdown_timeout,
    )
    address = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        poller = make_poller(args.backend)
    except ValueError as err:
        print(f"rat: {err}", file=sys.stderr)
        return 2
    try:
        listener = open_listener(args.host, args.port)
    except OSError as err:
        reason = err.strerror or str(err)
        print(f"rat: cannot listen on {address}: {reason}", file=sys.stderr)
        poller.close()
        return 1
    nofile = raise_nofile_limit()
    host, port = listener.getsockname()[:2]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server = Server(listener, poller, limits, echo=args.echo, trace=args.trace)

    def announce() -> None:
        log.info(
            "listening on %s (backend %s, descriptor limit %d%s)",
            shown,
            poller.name,
            nofile,
            ", echo on" if args.echo else "",
        )

    return server.serve_forever(ready=announce)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_bench="bench" in argv).parse_args(argv)
    if args.command == "serve":
        return serve(args)
    bench_module = _bench_module()
    if bench_module is None:
        print("rat: the bench command is not available in this build", file=sys.stderr)
        return 2
    return int(bench_module.run(args))


def _bench_module() -> Any:
    """`ratbench`, the load generator: imported only for `rat bench`."""
    try:
        return importlib.import_module("ratbench")
    except ModuleNotFoundError:
        return None
