"""Operations: the admin endpoint (`--admin`) and `rat top`.

Imported only when `rat serve --admin` or `rat top` runs: a server without
`--admin` never loads h11 or this package, and pays one `is None` test at
each hook (a read's lines, a join, a leave, a room's turn, an accept, a
close), none of them per receiver.

- `endpoint`: the admin port's HTTP connections (h11, on the server's loop)
  and their routes: `/metrics`, `/clients`, `/healthz`.
- `telemetry`: what the admin endpoint keeps between scrapes: per-client line
  counts, per-room totals, loop-turn times, the last 1000 closed connections.
- `exposition`: the Prometheus text format and the `/clients` JSON, built
  only when asked for.
- `top`: `rat top`, a terminal view of a running server's admin endpoint.

The per-client lag (the age of a client's oldest unsent byte) is measured
whether or not `--admin` is on, because the log line that reports a slow
consumer names it: see `rat.metrics.Backlog`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from rat.admin.endpoint import Admin
from rat.net import listen_address

if TYPE_CHECKING:
    from rat.server import Server

log = logging.getLogger("rat")

__all__ = ["Admin", "serve_admin"]


def serve_admin(server: Server, socks: list[socket.socket]) -> Admin:
    """Serve the admin endpoint on `socks` (bound and listening) with `server`'s loop."""
    for sock in socks:
        if not is_loopback(sock.getsockname()[0]):
            log.warning(
                "the admin endpoint on %s is reachable by anyone who can reach that address:"
                " it shows every client's address (bind it to 127.0.0.1 unless that is meant)",
                listen_address(sock),
            )
    return Admin(server, socks)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False
