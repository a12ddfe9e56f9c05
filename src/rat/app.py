"""Putting rat together: from a `Config` to a running server.

The composition root.  `rat.cli` turns the command line (and `RAT_*`
variables) into a `Config`; this module opens the listeners, builds the
server and plugs in each feature its options ask for, importing the feature's
package only then: `rat.chat` with --chat, `rat.web` with --web, `rat.admin`
with --admin, `rat.tls`/`rat.auth` with the security options, `rat.cluster`
with --redis or --workers.  A plain `rat serve` loads none of them.

Start errors (an address in use, a bad certificate) are one line on stderr
and an exit status; nothing here raises for a user's mistake.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

from rat.config import DEFAULT_ADMIN_HOST, DEFAULT_COALESCE_MS, Config
from rat.logsink import LogSink, announce, install, keep_draining
from rat.net import format_addr, open_listeners, raise_nofile_limit
from rat.poller import Poller, make_poller
from rat.server import Server


def _server_class(config: Config) -> type[Server]:
    """`Server`, or with --chat `rat.chat.server.ChatServer` (imported only then)."""
    if not config.chat:
        return Server
    from rat.chat.server import ChatServer  # noqa: PLC0415 (only with --chat)

    return ChatServer


def _chat_details(config: Config) -> list[str]:
    """What the 'listening on' line says about chat mode."""
    if not config.chat:
        return []
    history = f"history {config.history}" if config.history else "no history"
    return [f"chat mode ({history}, join/leave notices up to {config.announce_max} members)"]


def _open_admin(config: Config) -> tuple[list[socket.socket], str]:
    """The admin listeners, or ([], why not)."""
    assert config.admin is not None
    host, port = config.admin
    host = host or DEFAULT_ADMIN_HOST
    address = format_addr((host, port))
    try:
        socks = open_listeners(host, port, config.backlog)
    except OSError as err:
        return [], f"rat: cannot listen on admin {address}: {err.strerror or err}"
    if not socks:
        return [], f"rat: cannot listen on admin {address}: no IPv4 or IPv6 address"
    return socks, ""


def _start_backplane(server: Server, config: Config) -> Any:
    """With --redis: the server's backplane, connecting (None without it)."""
    if not config.redis:
        return None
    from rat.cluster import attach_redis  # noqa: PLC0415 (only with --redis)

    return attach_redis(server, config)


def _serve_workers(config: Config) -> int:
    """--workers N: this process supervises N workers, each a whole server."""
    from rat.cluster.workers import supervise  # noqa: PLC0415 (only with --workers)

    return supervise(config, build_server, _listening_details)


def _listening_details(config: Config, poller: Poller, nofile: int) -> list[str]:
    """The `listening on` line's details after the PID (shared with --workers)."""
    details = [f"backend {poller.name}", f"descriptor limit {nofile}"]
    if config.echo:
        details.append("echo on")
    if config.coalesce_ms != DEFAULT_COALESCE_MS:  # the default goes unsaid
        ms = config.coalesce_ms
        details.append(f"coalescing {ms:g} ms" if ms else "coalescing off")
    details += _chat_details(config)
    return details


def serve(config: Config) -> int:
    sink = install(
        getattr(logging, config.log_level.upper()), json_lines=config.log_format == "json"
    )
    if config.workers:  # ---- scale out: this process supervises, workers serve
        return _serve_workers(config)
    built = build_server(config, sink)
    if isinstance(built, int):
        return built
    server, nofile, extras = built
    try:  # ---- scale out: --redis
        backplane = _start_backplane(server, config)
    except OSError as err:
        print(f"rat: cannot resolve the Redis host of {config.redis}: {err}", file=sys.stderr)
        server.close()
        return 1

    def ready() -> None:
        details = [f"pid {os.getpid()}", *_listening_details(config, server.loop.poller, nofile)]
        details[3:3] = extras.details()  # ---- security and reach, after the descriptor limit
        if backplane is not None:
            from rat.cluster import describe  # noqa: PLC0415 (only with --redis)

            details.append(describe(backplane))
        announce(f"listening on {', '.join(server.addresses)} ({', '.join(details)})")

    try:
        return server.serve_forever(ready=ready)
    finally:
        extras.close()
        if backplane is not None:
            backplane.close()


def build_server(
    config: Config, sink: LogSink, reuse_port: bool = False
) -> tuple[Server, int, Any] | int:
    """Open the listeners, build the server: (server, descriptor limit, extras) or an exit code.

    `reuse_port`: the listeners take SO_REUSEPORT (a `--workers` worker).
    `extras` (`Extras`): the admin endpoint and the security set-up, to close at exit.
    """
    address = (
        f"[{config.host}]:{config.port}" if ":" in config.host else (f"{config.host}:{config.port}")
    )
    try:
        poller = make_poller(config.backend)
    except ValueError as err:
        print(f"rat: {err}", file=sys.stderr)
        return 2
    # ---- security and reach: read the files first (a bad one: one line, exit 1)
    from rat.security import Security, StartError  # noqa: PLC0415 (cheap; see rat.security)

    try:
        security = Security.load(config)
    except StartError as err:
        print(f"rat: {err}", file=sys.stderr)
        poller.close()
        return 1
    # ---- end of security and reach
    try:
        listeners = open_listeners(config.host, config.port, config.backlog, reuse_port=reuse_port)
    except OSError as err:
        reason = err.strerror or str(err)
        print(f"rat: cannot listen on {address}: {reason}", file=sys.stderr)
        poller.close()
        return 1
    if not listeners:
        print(f"rat: cannot listen on {address}: no IPv4 or IPv6 address", file=sys.stderr)
        poller.close()
        return 1
    web_listeners: list[socket.socket] = []
    if config.web is not None:  # ---- web
        web_host = config.web[0] or config.host
        web_address = format_addr((web_host, config.web[1]))
        try:
            web_listeners = open_listeners(
                web_host, config.web[1], config.backlog, reuse_port=reuse_port
            )
            failure = "" if web_listeners else "no IPv4 or IPv6 address"
        except OSError as err:
            failure = err.strerror or str(err)
        if failure:
            print(f"rat: cannot listen on web {web_address}: {failure}", file=sys.stderr)
            for sock in listeners:
                sock.close()
            poller.close()
            return 1
    admin_socks: list[socket.socket] = []
    if config.admin is not None:  # ---- operations
        admin_socks, failure = _open_admin(config)
        if failure:
            print(failure, file=sys.stderr)
            for sock in [*listeners, *web_listeners]:
                sock.close()
            poller.close()
            return 1
    # ---- security and reach: --unix; with TLS the TCP listeners get TLS connections
    try:
        security.open_unix(config.backlog)
    except OSError as err:
        print(f"rat: cannot listen on unix {config.unix}: {err.strerror or err}", file=sys.stderr)
        for sock in [*listeners, *web_listeners, *admin_socks]:
            sock.close()
        poller.close()
        return 1
    line_listeners = listeners
    if security.certificates is not None:
        listeners = []  # the server listens on them below, with TLS connections
    # ---- end of security and reach
    nofile = raise_nofile_limit()
    server = _server_class(config)(listeners, poller, config)
    keep_draining(sink, server.loop.call_later)  # a stalled log catches up on its own
    security.install(server, line_listeners)  # ---- security and reach
    if web_listeners:
        from rat.web import serve_web  # noqa: PLC0415 (h11 and wsproto only with --web)

        # With --tls-cert the web port is HTTPS/WSS: TLS under HTTP/WebSocket.
        serve_web(
            server,
            web_listeners,
            config.limits.max_line,
            config.web_origins,
            wrap=security.web_wrapper(),  # ---- security and reach
        )
    # ---- end of web
    admin = None
    if admin_socks:
        from rat.admin import serve_admin  # noqa: PLC0415 (h11 only with --admin)

        admin = serve_admin(server, admin_socks)
    # ---- end of operations
    warning = security.exposure_warning(server.addresses)  # ---- security and reach
    if warning:
        logging.getLogger("rat").warning("%s", warning)
    return server, nofile, Extras(admin, security)


class Extras:
    """What `build_server` set up besides the server: details to announce, things to close."""

    def __init__(self, admin: Any, security: Any) -> None:
        self.admin = admin
        self.security = security

    def details(self) -> list[str]:
        return list(self.security.details())

    def close(self) -> None:
        if self.admin is not None:
            self.admin.close()
        self.security.close()  # removes the Unix socket file
