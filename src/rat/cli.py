"""The `rat` command line: `rat serve`, `rat top` and `rat bench`.

This module turns argv (and `RAT_*` variables) into a `Config`; `rat.app`
builds and runs the server from it.

Every `rat serve` option can also come from the environment: `--max-line` is
`RAT_MAX_LINE`, a switch such as `--echo` is on for `1`, `true` or `yes`.  An
option on the command line wins.  A bad value from the environment is a
usage error that names the variable.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from rat import __version__
from rat.app import serve
from rat.argtypes import host_and_port, real_number, whole_number
from rat.config import (
    DEFAULT_ADMIN_HOST,
    DEFAULT_ANNOUNCE_MAX,
    DEFAULT_COALESCE_MS,
    DEFAULT_HISTORY,
    DEFAULT_HOST,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_PENDING,
    DEFAULT_PORT,
    DEFAULT_REDIS_CHANNEL,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    MAX_HISTORY,
    MAX_WORKERS,
    Config,
    Limits,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_PREFIX = "RAT_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")

_positive_int = whole_number(1)
_port = whole_number(0, 65535)
_seconds = real_number(above=0)
_milliseconds = real_number(at_least=0, maximum=1000)


def _web_origin(text: str) -> str:
    """An origin for --web-origin, normalised (checked here, a usage error if bad)."""
    from rat.web.http import normalize_origin  # noqa: PLC0415 (only when --web-origin is used)

    origin = normalize_origin(text)
    if origin is None:
        raise argparse.ArgumentTypeError(f"not an origin (scheme://host[:port]): {text!r}")
    return origin


def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rat", description="rat: an epoll TCP line-broadcast server."
    )
    parser.add_argument("--version", action="version", version=f"rat {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the broadcast server",
        description="Relay every complete line a client sends to every other client.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address or host name to listen on (a name: every address it resolves to)",
    )
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="TCP port (0: any free port)"
    )
    serve.add_argument("--echo", action="store_true", help="also send a line back to its sender")
    serve.add_argument(
        "--backend",
        choices=("auto", "epoll", "select"),
        default="auto",
        help="poller: edge-triggered epoll, or the portable selectors default"
        " (auto: epoll on Linux)",
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="log verbosity (connects and disconnects are logged at debug)",
    )
    serve.add_argument(
        "--trace",
        action="store_true",
        help="print every poller event and interest change to stderr (for learning)",
    )
    _add_operations_options(serve)
    tuning = serve.add_argument_group("tuning")
    tuning.add_argument(
        "--backlog",
        type=whole_number(0),
        default=0,
        metavar="N",
        help="listen() backlog (0: the system's net.core.somaxconn)",
    )
    tuning.add_argument(
        "--coalesce-ms",
        type=_milliseconds,
        default=DEFAULT_COALESCE_MS,
        metavar="MS",
        help="hold a delivery that comes within MS of the previous one until MS have"
        " passed, so sparse lines share sends (0: off)",
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
        default=DEFAULT_WRITE_TIMEOUT,
        metavar="SECONDS",
        help="drop a client whose socket accepted no queued bytes for this long",
    )
    limits.add_argument(
        "--max-clients",
        type=_positive_int,
        default=DEFAULT_MAX_CLIENTS,
        metavar="N",
        help="connections beyond this get 'ERR server full' and are closed",
    )
    limits.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM/SIGHUP, how long to flush queued output before exiting",
    )
    _add_security_options(serve)
    _add_chat_options(serve)
    # ---- web: --web / --web-origin (rat.web, imported only when --web is given)
    web = serve.add_argument_group("web")
    web.add_argument(
        "--web",
        type=host_and_port,
        default=None,
        metavar="[HOST:]PORT",
        help="also serve the chat page (GET /) and a WebSocket (GET /ws) on this port"
        " (HOST defaults to --host; PORT 0: any free port)",
    )
    web.add_argument(
        "--web-origin",
        action="append",
        type=_web_origin,
        default=[],
        metavar="ORIGIN",
        help="also accept WebSocket requests from pages of this origin"
        " (scheme://host[:port]; repeatable, or a list separated by commas or spaces in"
        " RAT_WEB_ORIGIN; the page's own origin is always accepted)",
    )
    # ---- end of web
    _add_scale_options(serve)
    serve.epilog = (
        "Every option can also be set in the environment: --max-line is RAT_MAX_LINE,"
        " a switch is on for 1/true/yes.  The command line wins."
    )

    _add_top_command(commands)
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


# ---- security and reach (issue 14): --tls-cert/--tls-key, --token-file,
# --allow/--deny, --unix.  The work is in rat.security; this is the wiring.


def _network(text: str) -> str:
    """A CIDR for --allow/--deny, checked now (a usage error if bad)."""
    from rat.access import parse_network  # noqa: PLC0415 (only when the option is used)

    try:
        return str(parse_network(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_security_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("security and reach")
    group.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="certificate chain (PEM): the TCP listener (and --web) speaks TLS only",
    )
    group.add_argument("--tls-key", metavar="FILE", help="private key (PEM) for --tls-cert")
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help="tokens, one per line: every client must first send 'AUTH <token>' (within 5 s)",
    )
    group.add_argument(
        "--allow",
        action="append",
        type=_network,
        default=[],
        metavar="CIDR",
        help="accept clients only from these networks (repeatable; IPv4 or IPv6)",
    )
    group.add_argument(
        "--deny",
        action="append",
        type=_network,
        default=[],
        metavar="CIDR",
        help="refuse clients from these networks (repeatable; wins over --allow)",
    )
    group.add_argument(
        "--unix", metavar="PATH", help="also listen on a Unix socket at PATH (mode 0660)"
    )


def _check_security_options(serve: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--tls-cert and --tls-key come together."""
    if bool(args.tls_cert) != bool(args.tls_key):
        given, missing = ("--tls-cert", "--tls-key")
        if args.tls_key:
            given, missing = missing, given
        serve.error(f"{given} needs {missing} as well")


# ---- end of security and reach


# --- chat mode (issue 12): --chat, --history, --announce-max -------------------


def _add_chat_options(serve: argparse.ArgumentParser) -> None:
    chat = serve.add_argument_group("chat mode")
    chat.add_argument(
        "--chat",
        action="store_true",
        help="chat server: nicks, rooms (#lobby first), /commands, '<nick> ' before each"
        " message (default: lines relayed verbatim to everyone)",
    )
    chat.add_argument(
        "--history",
        type=whole_number(0, MAX_HISTORY),
        default=DEFAULT_HISTORY,
        metavar="N",
        help="chat mode: a client joining a room first gets its last N messages",
    )
    chat.add_argument(
        "--announce-max",
        type=whole_number(0),
        default=DEFAULT_ANNOUNCE_MAX,
        metavar="N",
        help="chat mode: rooms with more than N members get no join/leave notices",
    )


def _check_chat_options(serve: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--history and --announce-max mean something only with --chat: say so."""
    if args.chat:
        return
    for option, value, default in (
        ("--history", args.history, DEFAULT_HISTORY),
        ("--announce-max", args.announce_max, DEFAULT_ANNOUNCE_MAX),
    ):
        if value != default:
            variable = ENV_PREFIX + option[2:].replace("-", "_").upper()
            serve.error(
                f"{option} (or {variable}) applies only in chat mode: add --chat (or RAT_CHAT=1)"
            )


# --- end of chat mode ------------------------------------------------------------
# ---- operations (issue 13): --admin, --log-format, `rat top` ---------------------
# rat.admin (and h11) is imported only when --admin is given or `rat top` runs.


def _add_operations_options(serve: argparse.ArgumentParser) -> None:
    ops = serve.add_argument_group("operations")
    ops.add_argument(
        "--admin",
        type=host_and_port,
        default=None,
        metavar="[HOST:]PORT",
        help="serve GET /metrics (Prometheus), /clients (JSON) and /healthz on this port"
        f" (HOST defaults to {DEFAULT_ADMIN_HOST}; PORT 0: any free port; default: off)",
    )
    ops.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text, or as one JSON object per line",
    )


def _add_top_command(commands: Any) -> None:
    top = commands.add_parser(
        "top",
        help="watch a running server through its admin endpoint",
        description="Poll a server's --admin endpoint; show rates and the laggiest clients.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    top.add_argument(
        "address",
        nargs="?",
        type=host_and_port,
        default=os.environ.get("RAT_ADMIN") or "9100",
        metavar="[HOST:]PORT",
        help=f"the server's --admin address (HOST defaults to {DEFAULT_ADMIN_HOST};"
        " default: $RAT_ADMIN, else 9100)",
    )
    top.add_argument(
        "--interval",
        type=real_number(at_least=0.05, maximum=3600),
        default=1.0,
        metavar="SECONDS",
        help="time between refreshes (and between the two samples that rates need)",
    )
    top.add_argument(
        "--clients",
        type=whole_number(0, 1000),
        default=10,
        metavar="N",
        help="how many of the laggiest clients to list",
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit (no ANSI)")


def _top(args: argparse.Namespace) -> int:
    from rat.admin.top import run  # noqa: PLC0415 (only when `rat top` runs)

    host, port = args.address
    return run(
        host=host or DEFAULT_ADMIN_HOST,
        port=port,
        interval=args.interval,
        clients=args.clients,
        once=args.once,
    )


# ---- end of operations ------------------------------------------------------------


# --- scale out (issue 15): --redis, --redis-channel, --workers --------------------
# rat.cluster is imported only when one of these options is given.


def _redis_url(text: str) -> str:
    """argparse type for --redis: the URL, checked (imports rat.cluster only then)."""
    from rat.cluster.redis import parse_url  # noqa: PLC0415 (only with --redis)

    try:
        parse_url(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _redis_channel(text: str) -> str:
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise argparse.ArgumentTypeError(f"a channel name without spaces is needed: {text!r}")
    return text


def _add_scale_options(serve: argparse.ArgumentParser) -> None:
    scale = serve.add_argument_group("scale out")
    scale.add_argument(
        "--redis",
        type=_redis_url,
        default=None,
        metavar="URL",
        help="redis://HOST:PORT[/DB]: every rat on this Redis forms one broadcast"
        " (one set of rooms with --chat)",
    )
    scale.add_argument(
        "--redis-channel",
        type=_redis_channel,
        default=DEFAULT_REDIS_CHANNEL,
        metavar="NAME",
        help="Redis pub/sub channel (with --chat: NAME:#room per room)",
    )
    scale.add_argument(
        "--workers",
        type=whole_number(0, MAX_WORKERS),
        default=0,
        metavar="N",
        help="N worker processes share the port (SO_REUSEPORT) and form one broadcast;"
        " --max-clients applies to each (0: serve in this process)",
    )


def _check_scale_options(serve: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.redis_channel != DEFAULT_REDIS_CHANNEL and args.redis is None:
        serve.error("--redis-channel (or RAT_REDIS_CHANNEL) applies only with --redis URL")
    if args.workers and args.admin is not None:
        # Every worker has its own counters and clients: one port shared by
        # SO_REUSEPORT would answer each scrape from a random worker.
        serve.error(
            "--admin cannot be combined with --workers yet (each worker has its own"
            " metrics); run the workers as separate rat processes with --redis instead"
        )
    if args.workers and args.unix is not None:
        # Every worker would bind the same socket file: only one of them can.
        serve.error(
            "--unix cannot be combined with --workers: only one process can listen on a"
            " socket file; run one rat with --unix, or use TCP with --workers"
        )


# --- end of scale out ---------------------------------------------------------------


def apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Take `RAT_*` variables as defaults for the `serve` options (see the module doc)."""
    serve = _subparser(parser, "serve")
    for action in serve._actions:
        if not action.option_strings or action.dest in ("help",):
            continue
        name = ENV_PREFIX + action.dest.upper()
        if name not in environ:
            continue
        text = environ[name]
        value: Any
        if isinstance(action, argparse._StoreTrueAction):
            if text.lower() in TRUE_WORDS:
                value = True
            elif text.lower() in FALSE_WORDS:
                value = False
            else:
                serve.error(f"{name}: expected 1/true/yes or 0/false/no, got {text!r}")
        elif isinstance(action, argparse._AppendAction):
            # A repeatable option: several values, separated by commas or spaces.
            try:
                convert = action.type if callable(action.type) else str
                value = [convert(item) for item in text.replace(",", " ").split()]
            except (argparse.ArgumentTypeError, ValueError) as err:
                serve.error(f"{name}: {err}")
        else:
            try:
                value = action.type(text) if callable(action.type) else text
            except (argparse.ArgumentTypeError, ValueError) as err:
                serve.error(f"{name}: {err}")
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                serve.error(f"{name}: {text!r} is not one of {choices}")
        serve.set_defaults(**{action.dest: value})


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        host=args.host,
        port=args.port,
        echo=args.echo,
        backend=args.backend,
        log_level=args.log_level,
        trace=args.trace,
        admin=args.admin,
        log_format=args.log_format,
        backlog=args.backlog,
        coalesce_ms=args.coalesce_ms,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token_file=args.token_file,
        allow=tuple(args.allow),
        deny=tuple(args.deny),
        unix=args.unix,
        chat=args.chat,
        history=args.history,
        announce_max=args.announce_max,
        web=args.web,
        web_origins=tuple(args.web_origin),
        redis=args.redis or "",
        redis_channel=args.redis_channel,
        workers=args.workers,
        limits=Limits(
            max_line=args.max_line,
            max_pending=args.max_pending,
            write_timeout=args.write_timeout,
            max_clients=args.max_clients,
            shutdown_timeout=args.shutdown_timeout,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_bench=bool(argv) and argv[0] == "bench")
    if not argv:
        parser.print_help()
        return 0
    apply_environment(parser, dict(os.environ))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "serve":
        _check_security_options(_subparser(parser, "serve"), args)
        _check_chat_options(_subparser(parser, "serve"), args)
        _check_scale_options(_subparser(parser, "serve"), args)
        return serve(config_from_args(args))
    if args.command == "top":
        return _top(args)
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
