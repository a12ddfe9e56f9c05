"""Scale out (`--redis`, `--workers`): several rat processes form one broadcast.

- `rat.cluster.message`: what one node tells the others (origin, time, room,
  lines); pure.
- `rat.cluster.resp`: the Redis protocol (hiredis's reader, or a pure-Python
  one); pure.
- `rat.cluster.backoff`: the reconnect/restart schedule; pure.
- `rat.cluster.stream`: a non-blocking stream socket as a loop handler.
- `rat.cluster.backplane`: forward a turn's lines once per turn; deliver
  other nodes' lines; counters; the ordering rule.
- `rat.cluster.redis`: the link through Redis pub/sub.
- `rat.cluster.workers`: `--workers N`, the supervisor, SO_REUSEPORT
  listeners and the mesh of socket pairs between workers.

Only `rat serve --redis ...` or `--workers N` imports this package; without
them the server has no backplane (`Hub.forward` stays None) and pays nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rat.cluster.backplane import Backplane
from rat.cluster.message import new_origin
from rat.cluster.redis import RedisLink, parse_url, resolve

if TYPE_CHECKING:
    from rat.config import Config
    from rat.server import Server


def attach_redis(server: Server, config: Config) -> Backplane:
    """Give `server` a backplane through the Redis of `config.redis`, and start it.

    Resolves the Redis host now (raises OSError if it does not resolve).
    """
    address = parse_url(config.redis)
    addrinfo = resolve(address)
    backplane = Backplane(server, new_origin(), notices=config.chat)
    link = RedisLink(
        server.loop,
        backplane,
        address,
        config.redis_channel,
        rooms=config.chat,
        addrinfo=addrinfo,
    )
    backplane.link = link
    link.start()
    return backplane


def describe(backplane: Backplane) -> str:
    """What the `listening on` line says about the backplane."""
    link = backplane.link
    where = link.describe() if isinstance(link, RedisLink) else "worker mesh"
    return f"cluster {where} (node {backplane.origin.decode()})"
