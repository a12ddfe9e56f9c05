"""Every `rat serve` setting and its default, in one place.

The command line (`rat.cli`) builds its options from these defaults and hands
the server a `Config`; tests and embedders build one directly.  Nothing here
does I/O.

Each limit is enforced by the part that owns the resource, and says so below:
the framer refuses long lines, a client's output queue refuses bytes past
`max_pending`, the listener refuses clients past `max_clients`, the server
times out stuck writers and bounds the stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_ADMIN_HOST = "127.0.0.1"  # --admin PORT alone listens here, whatever --host is
DEFAULT_MAX_LINE = 65536  # bytes, newline included (rat.framing.LineFramer)
DEFAULT_MAX_PENDING = 8 * 1024 * 1024  # bytes queued for one client (rat.outbuf.OutBuffer)
DEFAULT_WRITE_TIMEOUT = 30.0  # seconds without progress on queued output
DEFAULT_MAX_CLIENTS = 10000
DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # seconds to flush on SIGINT/SIGTERM/SIGHUP
DEFAULT_COALESCE_MS = 4.0  # hold deliveries this long after the previous one (0: off)
# Chat mode (rat.chat)
DEFAULT_HISTORY = 0  # messages kept per room for joiners (0: none)
MAX_HISTORY = 10000
DEFAULT_ANNOUNCE_MAX = 100  # rooms with more members get no join/leave notices
# Scale out (rat.cluster)
DEFAULT_REDIS_CHANNEL = "rat"  # chat mode: one channel per room, "rat:#lobby"
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits; each is enforced by the part that owns the resource."""

    max_line: int = DEFAULT_MAX_LINE  # LineFramer
    max_pending: int = DEFAULT_MAX_PENDING  # OutBuffer
    write_timeout: float = DEFAULT_WRITE_TIMEOUT  # Conn, by a timer
    max_clients: int = DEFAULT_MAX_CLIENTS  # Server, at accept
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT  # Server, on stop


@dataclass(frozen=True, slots=True)
class Config:
    """What `rat serve` was asked to do."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    echo: bool = False
    backend: str = "auto"  # rat.poller.make_poller
    log_level: str = "info"
    trace: bool = False
    # Operations (rat.admin): --admin [HOST:]PORT (None: off; an empty host
    # means DEFAULT_ADMIN_HOST) and --log-format.
    admin: tuple[str, int] | None = None
    log_format: str = "text"  # or "json": one JSON object per log line
    backlog: int = 0  # listen() backlog; 0: the system's somaxconn
    coalesce_ms: float = DEFAULT_COALESCE_MS
    # Chat mode (rat.chat): nicks, rooms, commands.
    chat: bool = False
    history: int = DEFAULT_HISTORY
    announce_max: int = DEFAULT_ANNOUNCE_MAX
    # Scale out (rat.cluster): a Redis backplane, worker processes.
    redis: str = ""  # redis://HOST:PORT[/DB]; "" = no backplane
    redis_channel: str = DEFAULT_REDIS_CHANNEL
    workers: int = 0  # worker processes under a supervisor; 0 = serve in this process
    worker: int = 0  # in a worker: its slot, 1..workers (guest nicks differ per worker); else 0
    limits: Limits = field(default_factory=Limits)
    # --web [HOST:]PORT: the HTTP/WebSocket listener (rat.web); None: off.
    # An empty host means the same host as the TCP listener.
    web: tuple[str, int] | None = None
    web_origins: tuple[str, ...] = ()  # --web-origin: other pages allowed to connect
    # ---- security and reach (issue 14): rat.tls, rat.auth, rat.access
    tls_cert: str | None = None  # --tls-cert FILE (PEM): the TCP listener speaks TLS
    tls_key: str | None = None  # --tls-key FILE (PEM)
    token_file: str | None = None  # --token-file: clients must send AUTH <token> first
    allow: tuple[str, ...] = ()  # --allow CIDR (repeatable)
    deny: tuple[str, ...] = ()  # --deny CIDR (repeatable; wins over allow)
    unix: str | None = None  # --unix PATH: a Unix-socket listener as well
