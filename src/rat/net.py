"""Socket helpers: listeners, addresses, descriptor limits, close reasons.

Everything the server needs from the socket API beyond `recv`/`send` lives
here, so that the data path reads as the data path.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
import socket
import stat
import struct
import termios

log = logging.getLogger("rat")

SockAddr = tuple[str, int] | tuple[str, int, int, int] | str


def format_addr(addr: SockAddr) -> str:
    """'host:port', IPv6 as '[host]:port' (a Unix socket's path as it is)."""
    if isinstance(addr, str):
        return addr or "unix"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def somaxconn(default: int = socket.SOMAXCONN) -> int:
    """The kernel's cap on a listen() backlog (net.core.somaxconn)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(1, int(f.read()))
    except (OSError, ValueError):
        return default


def open_listeners(
    host: str, port: int, backlog: int = 0, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Bind and listen on every address `host` resolves to; return one socket each.

    `localhost` usually resolves to both 127.0.0.1 and ::1: a server that took
    only the first answer would refuse half of its users.  With `port` 0 the
    first listener gets an ephemeral port and the others reuse it, so one port
    number reaches the server on every address.  When a host resolves to both
    an IPv4 and an IPv6 address, the IPv6 socket is IPv6-only (the IPv4 one
    takes IPv4); `--host ::` alone is dual-stack where the system allows.

    `reuse_port` sets SO_REUSEPORT, so that several processes (`--workers`)
    listen on one port and the kernel spreads connections over them;
    `listen=False` only binds (the `--workers` supervisor holds the port so,
    without taking connections itself).

    Raises OSError (socket.gaierror for a name that does not resolve); on
    failure no socket stays open.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addrs: list[tuple[socket.AddressFamily, str, tuple[int, ...]]] = []
    for info_family, _, _, _, sockaddr in infos:
        if info_family in (socket.AF_INET, socket.AF_INET6):
            host_ip = str(sockaddr[0])
            if all(host_ip != seen for _, seen, _ in addrs):
                addrs.append((info_family, host_ip, tuple(int(x) for x in sockaddr[2:])))
    both = len({family for family, _, _ in addrs}) > 1
    backlog = backlog or somaxconn()
    listeners: list[socket.socket] = []
    try:
        for family, host_ip, rest in addrs:
            # With port 0, the first listener picks the port and the rest follow it.
            bind_port = listeners[0].getsockname()[1] if listeners and port == 0 else port
            bind_addr = (host_ip, bind_port, *rest)
            listeners.append(
                _listen(family, bind_addr, backlog, both, reuse_port=reuse_port, listen=listen)
            )
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def _listen(
    family: socket.AddressFamily,
    sockaddr: tuple[object, ...],
    backlog: int,
    v6only: bool,
    *,
    reuse_port: bool = False,
    listen: bool = True,
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            except OSError:  # some systems are IPv6-only per socket and say so
                pass
        if not listen:  # bound only: the --workers supervisor holds the port
            sock.bind(sockaddr)
            return sock
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


UNIX_SOCKET_MODE = 0o660  # owner and group may connect (SPEC: --unix)


class UnixSocketFile:
    """The file of a Unix-socket listener, removed at exit if it is still ours."""

    def __init__(self, path: str, inode: int) -> None:
        self.path = path
        self.inode = inode

    def remove(self) -> None:
        """Unlink the file, unless another server has replaced it meanwhile."""
        try:
            if os.lstat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except OSError:
            pass


def open_unix_listener(path: str, backlog: int = 0) -> tuple[socket.socket, UnixSocketFile]:
    """Listen on a Unix socket at `path` (mode 0660); return it and its file.

    A socket file left behind by a server that died (nobody accepts on it)
    is replaced.  One with a live server behind it is an error (EADDRINUSE),
    as is a path that exists and is not a socket: we never delete a file we
    did not make.  Raises OSError; on failure no socket stays open.
    """
    if _stale_socket_file(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask decides the mode bind() creates the file with: set it so
        # that the file is never, even for a moment, open to more than 0660.
        old_umask = os.umask(0o777 & ~UNIX_SOCKET_MODE)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, UNIX_SOCKET_MODE)  # exactly 0660, whatever the umask allowed
        inode = os.lstat(path).st_ino
        sock.listen(backlog or somaxconn())
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock, UnixSocketFile(path, inode)


def _stale_socket_file(path: str) -> bool:
    """True if `path` is a socket file nobody listens on; raise if it is in use or no socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "the path exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a live server with a full backlog says EAGAIN, not wait
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return True  # a leftover: nobody accepts connections on it
    except BlockingIOError:
        pass  # somebody listens, busy
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening on it", path)


def listen_address(sock: socket.socket) -> str:
    """The address a listener is bound to, for the `listening on` line."""
    return format_addr(sock.getsockname())


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, err)
    return soft


def close_reason(err: OSError) -> str:
    """Why a client's socket failed, as a short stable name (a metrics label).

    "reset" (the peer reset the connection or is gone: ECONNRESET, EPIPE),
    "timeout" (keepalive or retransmissions gave up), else "error".
    """
    if isinstance(err, (ConnectionResetError, BrokenPipeError)) or err.errno in (
        errno.ECONNRESET,
        errno.EPIPE,
    ):
        return "reset"
    if isinstance(err, TimeoutError) or err.errno == errno.ETIMEDOUT:
        return "timeout"
    return "error"


def socket_error(sock: socket.socket) -> OSError | None:
    """The error pending on a socket (a reset that arrived after EOF), if any."""
    try:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as failed:
        return failed
    return OSError(err, os.strerror(err)) if err else None


def enable_keepalive(sock: socket.socket) -> None:
    """Probe an idle half-closed peer so a vanished one is noticed (best effort)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


_INT = struct.Struct("i")


def unacked_bytes(sock: socket.socket) -> int | None:
    """Bytes in the kernel's send queue that the peer has not acknowledged yet.

    Linux's SIOCOUTQ (TIOCOUTQ on a socket).  0 means the peer's kernel holds
    everything we sent (and our FIN, once shut down): closing now cannot cost
    it a byte, even if the close ends in a reset.  None where unsupported.
    """
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * _INT.size)
    except OSError:
        return None
    return int(_INT.unpack(raw)[0])


# What the kernel charges a send beyond its bytes: each new packet buffer's own
# overhead (Linux counts a buffer's true size against SO_SNDBUF, a few KiB for a
# short line once the last buffer is full).
SEND_BUFFER_SLACK = 64 * 1024


def make_room_in_send_buffer(sock: socket.socket, extra: int) -> None:
    """Let the kernel queue about `extra` more bytes on `sock` (best effort).

    Used when a stream must end on a line boundary (a slow consumer is cut, a
    stop runs out of time): the rest of a partly sent line must go into the
    kernel now, without waiting for the peer.  The kernel's send buffer holds
    unsent bytes as well as unacknowledged ones, so growing it lets one more
    `send` take the remainder.  It grows by twice `extra` plus
    `SEND_BUFFER_SLACK`: Linux charges each packet buffer's whole size, so a
    full buffer grown by the line's length alone may still refuse it (seen
    on Linux 6.18, where a stop then cut a stream inside a line).  Linux
    doubles the value set (bookkeeping overhead) and caps it at
    net.core.wmem_max; a buffer that autotuning
    already made bigger is left alone, since setting it would shrink it.
    """
    try:
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        want = size + 2 * extra + SEND_BUFFER_SLACK
        if min(want, _wmem_max()) > size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want // 2 + 1)
    except OSError:
        pass


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return 2 * int(f.read())
    except (OSError, ValueError):
        return 0
