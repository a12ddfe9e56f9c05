"""`--workers N`: N processes, one port, one broadcast, and a parent that keeps them up.

Theory of operation
===================
rat is one thread on one loop; a machine with several cores runs several.
`rat serve --workers N` starts a *supervisor* (this process) that serves no
client itself, and N *workers*, each a whole rat server with its own loop.

Sharing the port.  Every worker opens its own listening sockets with
SO_REUSEPORT on the same address and port, and the kernel spreads incoming
connections over them (by a hash of the connection's addresses, not by
load).  The supervisor binds the port first, with SO_REUSEPORT but without
`listen()`, so a bad address or a port in use is reported once, before any
worker starts, `--port 0` picks one port for all, and nobody else can take
the port while a worker restarts.  A socket that is bound but not listening
receives no connection.

One broadcast.  Each worker's backplane (`rat.cluster.backplane`) forwards
a turn's lines once per turn to every other worker over a mesh of Unix
socket pairs that the supervisor makes (N*(N-1)/2 of them): a 4-byte length,
then the message (`rat.cluster.message`).  The mesh needs no broker, and a
sender's lines travel one stream to each peer, so per-sender order holds.
Each worker delivers its own clients' lines first, so two workers may show
two senders' lines in different orders (SPEC "Scale": per-sender order,
not one global order).  With `--redis`, the workers use Redis instead, each
as one more node.

`--max-clients` applies to each worker: the kernel does not look at how
full a worker is before it hands it a connection, so a shared limit would
refuse clients on one worker while another has room.  N workers take up to
N times `--max-clients`.

Supervision.  The supervisor forks the workers, and restarts one that dies
(after a capped back-off, reset once a worker has lived `STABLE_AFTER`
seconds), making new socket pairs for it and passing the other ends to the
running workers over their control sockets (SCM_RIGHTS).  A worker's
clients are lost with it; the others keep going.  SIGTERM or SIGINT is
passed on to every worker, which drains like a single rat; the supervisor
exits 0 once all have exited 0.  A second signal is passed on too (workers
then exit at once).  SIGHUP is passed on: a worker with something to reload
reloads, one without stops (exit 0), and a worker that exits 0 is not
restarted.  Workers live in their own process group, so a Ctrl-C at the
terminal reaches the supervisor alone and each worker gets one SIGINT, not
two.  A worker whose supervisor has gone (its control socket reads EOF)
stops gracefully.

The supervisor prints the `listening on` line once, with its own PID and
the workers', after every worker is listening.

Control sockets.  Each worker has a Unix stream socket to the supervisor,
carrying lines: `ready` (worker to supervisor), `peer N` with a socket
attached (a restarted worker's new mesh end), and chat mode's tables.  In
chat mode nicks and rooms are the whole server's, not a worker's: the
supervisor, which outlives any worker, keeps which worker holds each nick a
client chose (`NickTable`) and who is in which room (`Roster`).  A worker
asks `nick? TOKEN NICK` before a client takes a nick (`answer TOKEN 1`:
granted, `0`: taken) and frees one with `nick- NICK`; it reports `in ROOM
NICK` and `out ROOM NICK`; `who? TOKEN ROOM` and `rooms? TOKEN` get
`answer TOKEN` and the nicks, or the rooms with their counts.  A worker
that dies takes its entries with it.  Guest nicks need no question: worker
k of N hands out guest<k>, guest<k+N>, ...
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from rat.cluster.backoff import backoff_delay
from rat.cluster.backplane import Backplane, Outgoing
from rat.cluster.message import new_origin
from rat.cluster.stream import READ_SIZE, Stream
from rat.loop import Loop
from rat.poller import make_poller

if TYPE_CHECKING:
    from rat.config import Config
    from rat.logsink import LogSink
    from rat.poller import Poller
    from rat.server import Server

log = logging.getLogger("rat")

STABLE_AFTER = 30.0  # seconds a worker must live before its restart back-off resets
RESTART_FIRST = 0.1  # seconds before the first restart
RESTART_CAP = 5.0
PEER_OUTPUT_LIMIT = 8 * 1024 * 1024  # bytes queued for one peer worker before turns are dropped
MAX_FRAME = 64 * 1024 * 1024  # a longer length prefix means the stream is broken
_LENGTH = struct.Struct("!I")
# What the supervisor handles (a worker gets the defaults back before its own).
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

# app.build_server: (config, log sink, reuse_port) -> (server, descriptor limit, admin)
# or an exit code (no admin endpoint with --workers: the command line refuses it)
BuildFn = Callable[["Config", "LogSink", bool], "tuple[Server, int, Any] | int"]
# app._listening_details: (config, poller, descriptor limit) -> the listening line's details
DetailsFn = Callable[["Config", "Poller", int], list[str]]


# ---------------------------------------------------------------- the mesh


class PeerStream(Stream):
    """The stream to one other worker: length-prefixed messages both ways."""

    __slots__ = ("_inbuf", "dropping", "mesh", "slot")

    def __init__(self, loop: Loop, sock: socket.socket, mesh: MeshLink, slot: int) -> None:
        super().__init__(loop, sock, f"worker-{slot}")
        self.mesh = mesh
        self.slot = slot
        self.dropping: int | None = None  # lines dropped in the current overflow episode
        self._inbuf = bytearray()

    def on_data(self, view: memoryview) -> None:
        buf = self._inbuf
        buf += view
        pos = 0
        receive = self.mesh.backplane.receive
        while len(buf) - pos >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buf, pos)
            if size > MAX_FRAME:
                self.lose(f"a message of {size} bytes: the stream is broken")
                return
            end = pos + _LENGTH.size + size
            if len(buf) < end:
                break
            receive(bytes(buf[pos + _LENGTH.size : end]))
            pos = end
            if self.closed:
                return
        if pos:
            del buf[:pos]

    def on_lost(self, reason: str) -> None:
        self.mesh.peer_lost(self, reason)


class MeshLink:
    """The backplane's link to the other workers: one socket pair each."""

    def __init__(self, loop: Loop, backplane: Backplane, slot: int) -> None:
        self.loop = loop
        self.backplane = backplane
        self.slot = slot
        self.peers: dict[int, PeerStream] = {}

    @property
    def up(self) -> bool:
        return True  # peers come and go; those present get every turn

    def add_peer(self, slot: int, sock: socket.socket) -> None:
        """The stream to worker `slot` (new, or in place of one that died)."""
        old = self.peers.pop(slot, None)
        if old is not None:
            old.close()
        self.peers[slot] = PeerStream(self.loop, sock, self, slot)

    def peer_lost(self, peer: PeerStream, reason: str) -> None:
        if self.peers.get(peer.slot) is peer:
            del self.peers[peer.slot]
            log.debug("mesh: worker %d gone (%s)", peer.slot, reason)

    def send(self, messages: list[Outgoing]) -> bool:
        """One turn's messages to every peer: framed once, queued on each, one write each."""
        chunks: list[bytes | memoryview] = []
        lines = 0
        for _, head, payload in messages:
            chunks += (_LENGTH.pack(len(head) + len(payload)), head, payload)
            lines += payload.count(b"\n")
        counters = self.backplane.counters
        for peer in list(self.peers.values()):
            if peer.pending > PEER_OUTPUT_LIMIT:
                # A stuck worker must not grow our memory: drop its share, say so once.
                counters.dropped_overflow += lines
                if peer.dropping is None:
                    peer.dropping = 0
                    log.warning(
                        "mesh: worker %d is not reading (%d bytes queued): its clients miss"
                        " lines from this worker until it catches up",
                        peer.slot,
                        peer.pending,
                    )
                peer.dropping += lines
                continue
            if peer.dropping is not None:
                log.warning(
                    "mesh: worker %d caught up; it missed %d lines", peer.slot, peer.dropping
                )
                peer.dropping = None
            peer.queue(chunks)
        return True

    def close(self) -> None:
        for peer in list(self.peers.values()):
            if peer.pending:
                peer.flush()
            peer.close()
        self.peers.clear()


class NickTable:
    """The supervisor's record of which worker holds each nick its clients chose (pure)."""

    def __init__(self) -> None:
        self.holder: dict[bytes, int] = {}  # folded nick -> worker slot

    def claim(self, key: bytes, slot: int) -> bool:
        """May worker `slot` have `key`?  Yes if nobody holds it (it holds it now) or it does."""
        return self.holder.setdefault(key, slot) == slot

    def release(self, key: bytes, slot: int) -> None:
        if self.holder.get(key) == slot:
            del self.holder[key]

    def forget(self, slot: int) -> None:
        """Worker `slot` is gone, and its clients with it."""
        for key in [key for key, holder in self.holder.items() if holder == slot]:
            del self.holder[key]


class Roster:
    """The supervisor's record of who is in which room, on which worker (pure)."""

    def __init__(self) -> None:
        # room -> worker slot -> its members' nicks, in the order they came
        self.rooms: dict[bytes, dict[int, dict[bytes, None]]] = {}

    def entered(self, slot: int, room: bytes, nick: bytes) -> None:
        self.rooms.setdefault(room, {}).setdefault(slot, {})[nick] = None

    def left(self, slot: int, room: bytes, nick: bytes) -> None:
        workers = self.rooms.get(room, {})
        members = workers.get(slot, {})
        members.pop(nick, None)
        if not members:
            workers.pop(slot, None)
            if not workers:
                self.rooms.pop(room, None)

    def who(self, room: bytes) -> list[bytes]:
        workers = self.rooms.get(room, {})
        return [nick for slot in sorted(workers) for nick in workers[slot]]

    def counts(self) -> dict[bytes, int]:
        return {
            room: sum(len(members) for members in workers.values())
            for room, workers in self.rooms.items()
        }

    def forget(self, slot: int) -> None:
        """Worker `slot` is gone, and its clients with it."""
        for room in list(self.rooms):
            workers = self.rooms[room]
            workers.pop(slot, None)
            if not workers:
                del self.rooms[room]


class ChatDirectory:
    """A worker's side of the supervisor's tables (a `rat.chat.session.NickRegistry`)."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.waiting: dict[int, Callable[[list[bytes]], None]] = {}
        self._tokens = itertools.count(1)

    def _ask(self, question: bytes, answer: Callable[[list[bytes]], None]) -> None:
        token = next(self._tokens)
        self.waiting[token] = answer
        self.send(question % token)

    def claim(self, key: str, answer: Callable[[bool], None]) -> None:
        self._ask(b"nick? %%d %s\n" % key.encode(), lambda words: answer(words == [b"1"]))

    def release(self, key: str) -> None:
        self.send(b"nick- %s\n" % key.encode())

    def entered(self, room: str, nick: str) -> None:
        self.send(b"in %s %s\n" % (room.encode(), nick.encode()))

    def left(self, room: str, nick: str) -> None:
        self.send(b"out %s %s\n" % (room.encode(), nick.encode()))

    def who(self, room: str, answer: Callable[[list[str]], None]) -> None:
        self._ask(
            b"who? %%d %s\n" % room.encode(),
            lambda words: answer([word.decode() for word in words]),
        )

    def rooms(self, answer: Callable[[dict[str, int]], None]) -> None:
        def counts(words: list[bytes]) -> None:
            answer({words[i].decode(): int(words[i + 1]) for i in range(0, len(words) - 1, 2)})

        self._ask(b"rooms? %d\n", counts)

    def answered(self, token: int, words: list[bytes]) -> None:
        answer = self.waiting.pop(token, None)
        if answer is not None:
            answer(words)


class ControlChannel(Stream):
    """A worker's end of its control socket: lines both ways; EOF: the supervisor is gone.

    A `Stream` (its output queue and WRITABLE interest), read with `recv_fds`
    because a `peer N` line comes with a socket attached.
    """

    __slots__ = ("_fds", "_lines", "directory", "on_orphaned", "on_peer")

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_peer: Callable[[int, socket.socket], None],
        on_orphaned: Callable[[], None],
    ) -> None:
        super().__init__(loop, sock, "supervisor")
        self.on_peer = on_peer
        self.on_orphaned = on_orphaned
        self.directory: ChatDirectory | None = None  # chat mode: answers to its questions
        self._lines = bytearray()  # the start of a line
        self._fds: list[int] = []  # received with a `peer N` line, not yet matched

    def read(self) -> None:
        while not self.closed:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, READ_SIZE, 4)
            except BlockingIOError:
                return
            except OSError as err:
                self.lose(err.strerror or str(err))
                return
            self._fds += fds
            if not data:
                self.lose("the supervisor closed its end")
                return
            self._lines += data
            if b"\n" in data:
                *lines, rest = self._lines.split(b"\n")
                self._lines = rest
                for line in lines:
                    self._line(bytes(line).split())

    def _line(self, words: list[bytes]) -> None:
        match words:
            case [b"peer", slot] if slot.isdigit() and self._fds:
                self.on_peer(int(slot), socket.socket(fileno=self._fds.pop(0)))
            case [b"answer", token, *answer] if token.isdigit() and self.directory is not None:
                self.directory.answered(int(token), answer)

    def send(self, message: bytes) -> None:
        """Queue one line (or several) for the supervisor."""
        self.queue([message])

    def on_lost(self, reason: str) -> None:
        del reason
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.on_orphaned()


# -------------------------------------------------------------- the worker


def _worker_main(
    config: Config,
    slot: int,
    control: socket.socket,
    peers: dict[int, socket.socket],
    build: BuildFn,
) -> int:
    """One worker: a whole rat server on SO_REUSEPORT listeners, linked to the others."""
    from rat.logsink import install  # noqa: PLC0415 (the child's own log sink)

    logger = logging.getLogger("rat")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    sink = install(
        getattr(logging, config.log_level.upper()),
        fmt=f"%(asctime)s %(levelname)s worker {slot}: %(message)s",
        json_lines=config.log_format == "json",
    )
    built = build(dataclasses.replace(config, worker=slot), sink, True)
    if isinstance(built, int):
        return built
    server = built[0]
    if config.redis:
        from rat.cluster import attach_redis  # noqa: PLC0415

        backplane = attach_redis(server, config)
    else:
        backplane = Backplane(server, new_origin(), notices=False)
        mesh = MeshLink(server.loop, backplane, slot)
        for peer_slot, sock in peers.items():
            mesh.add_peer(peer_slot, sock)
        backplane.link = mesh

    def orphaned() -> None:
        if not server.stopping:
            server.begin_stop("the supervisor is gone")

    channel = ControlChannel(
        server.loop,
        control,
        on_peer=lambda peer_slot, sock: (
            mesh.add_peer(peer_slot, sock) if not config.redis else sock.close()
        ),
        on_orphaned=orphaned,
    )

    # Chat mode (a rat.chat.server.ChatServer, whose rules are its `chat`; the
    # features do not import each other): its nicks are asked of the supervisor.
    chat = getattr(server, "chat", None) if config.chat else None
    if chat is not None:
        channel.directory = chat.registry = ChatDirectory(channel.send)

    def ready() -> None:
        log.info("serving %s (pid %d)", ", ".join(server.addresses), os.getpid())
        channel.send(b"ready\n")

    try:
        return server.serve_forever(ready=ready)
    finally:
        backplane.close()


# ---------------------------------------------------------- the supervisor


@dataclasses.dataclass
class _Slot:
    index: int
    pid: int = 0
    control: socket.socket | None = None  # the supervisor's end
    ready: bool = False
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    done: bool = False  # exited on purpose (status 0, or during the stop): not restarted
    status: int = 0
    received: bytes = b""  # the start of a line from its control socket


class Supervisor:
    """The parent of `--workers N` (see the module doc)."""

    def __init__(
        self,
        config: Config,
        build: BuildFn,
        held: list[socket.socket],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock  # for restart times and lifetimes (the tests pass a fake one)
        self.build = build
        self.held = held  # the bound, not listening, sockets that keep the port
        self.slots = [_Slot(i + 1) for i in range(config.workers)]
        self.nicks = NickTable()  # chat mode: which worker holds each chosen nick
        self.roster = Roster()  # chat mode: who is in which room
        self.stopping = False
        self._stop_signals = 0
        self.signals: list[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -------------------------------------------------------------- run

    def run(self, announce_line: Callable[[list[int]], None]) -> int:
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        old = {sig: signal.signal(sig, self._record) for sig in HANDLED_SIGNALS}
        announced = False
        try:
            self._start_all()
            while True:
                self._wait()
                self._handle_signals()
                failed = self._reap()
                if failed and not announced:
                    self._stop("a worker failed to start")
                self._read_controls()
                if not announced and all(s.ready for s in self.slots) and not self.stopping:
                    announced = True
                    announce_line([s.pid for s in self.slots])
                self._restart_due()
                if all(s.done for s in self.slots):
                    break
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            for slot in self.slots:
                if slot.control is not None:
                    slot.control.close()
            for sock in self.held:
                sock.close()
            self._wake_r.close()
            self._wake_w.close()
        clean = announced and all(s.status == 0 for s in self.slots)
        log.info("all workers have exited%s", "" if clean else " (not all cleanly)")
        return 0 if clean else 1

    def _record(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signals.append(signum)

    def _wait(self) -> None:
        now = self.clock()
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(due) - now) if due else None
        watched = [self._wake_r] + [s.control for s in self.slots if s.control is not None]
        try:
            select.select(watched, [], [], timeout)
        except InterruptedError:
            pass
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------ signals

    def _handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGCHLD:
                continue  # reaped right after
            if signum in (signal.SIGUSR1, signal.SIGUSR2):
                log.info("%s ignored (rat does nothing on it)", name)
                continue
            if signum == signal.SIGHUP:
                log.info("SIGHUP: passed on to the workers")
                self._kill_all(signum)
                continue
            self._stop_signals += 1
            if self._stop_signals == 1:
                self._stop(name)
            else:
                log.warning("second %s: passed on; workers exit now", name)
                self._kill_all(signum)

    def _stop(self, why: str, signum: int = signal.SIGTERM) -> None:
        if self.stopping:
            return
        self.stopping = True
        live = [s for s in self.slots if s.pid]
        log.info("%s: stopping %d workers (each drains its clients)", why, len(live))
        for slot in self.slots:
            slot.restart_at = None
            if not slot.pid:
                slot.done = True
        self._kill_all(signum)

    def _kill_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid:
                try:
                    os.kill(slot.pid, signum)
                except ProcessLookupError:
                    pass

    # ----------------------------------------------------------- children

    def _start_all(self) -> None:
        """Fork every worker, with the whole mesh made beforehand."""
        ends: dict[int, dict[int, socket.socket]] = {s.index: {} for s in self.slots}
        if not self.config.redis:
            for a in self.slots:
                for b in self.slots:
                    if a.index < b.index:
                        ends[a.index][b.index], ends[b.index][a.index] = _pair()
        for slot in self.slots:
            self._fork(slot, ends[slot.index], others=ends)
        for peers in ends.values():
            for sock in peers.values():
                sock.close()

    def _restart(self, slot: _Slot) -> None:
        """A new worker in `slot`: new socket pairs; the other ends go to the live workers."""
        mine: dict[int, socket.socket] = {}
        if not self.config.redis:
            for other in self.slots:
                if other is slot or not other.pid or other.control is None:
                    continue
                mine[other.index], theirs = _pair()
                try:
                    socket.send_fds(other.control, [b"peer %d\n" % slot.index], [theirs.fileno()])
                except OSError:
                    pass  # it is dying too; its own restart makes its pairs
                theirs.close()
        self._fork(slot, mine, others={})
        for sock in mine.values():
            sock.close()
        log.info("worker %d restarted (pid %d)", slot.index, slot.pid)

    def _fork(
        self,
        slot: _Slot,
        peers: dict[int, socket.socket],
        others: dict[int, dict[int, socket.socket]],
    ) -> None:
        # A stream of lines: an answer to /who can be longer than any one packet.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _drain_logs()
        # The child must not run the supervisor's signal handlers (it would
        # record a SIGTERM in its copy of them and serve on, unstopped, with
        # the supervisor waiting for it): the signals wait, blocked, until
        # `_forget_in_child` has given it the default ones back.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                ours.close()
                self._forget_in_child(slot, peers, others)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
                code = _worker_main(self.config, slot.index, theirs, peers, self.build)
            except BaseException:  # a bug: say where, then exit (never return into the parent)
                traceback.print_exc()
            finally:
                _drain_logs()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        theirs.close()
        slot.pid = pid
        slot.control = ours
        slot.ready = False
        slot.started = self.clock()
        slot.restart_at = None

    def _forget_in_child(
        self,
        slot: _Slot,
        peers: dict[int, socket.socket],
        others: dict[int, dict[int, socket.socket]],
    ) -> None:
        """In a new worker: drop what belongs to the supervisor and to other workers."""
        os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only
        signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:  # until the worker's loop installs its own
            ignored = sig in (signal.SIGUSR1, signal.SIGUSR2)  # (rat ignores them)
            signal.signal(sig, signal.SIG_IGN if ignored else signal.SIG_DFL)
        self._wake_r.close()
        self._wake_w.close()
        for sock in self.held:
            sock.close()
        for other in self.slots:
            if other is not slot and other.control is not None:
                other.control.close()
        for index, socks in others.items():
            if index != slot.index:
                for sock in socks.values():
                    if sock not in peers.values():
                        sock.close()

    def _reap(self) -> bool:
        """Collect exited workers; schedule restarts.  True if one died before it was ready."""
        failed_early = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return failed_early
            if not pid:
                return failed_early
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None and self._exited(slot, status):
                failed_early = True

    def _exited(self, slot: _Slot, status: int) -> bool:
        """`slot`'s worker exited with wait `status`: mark it done or schedule its restart.

        True if it died before it was ready (the whole start failed).
        """
        pid = slot.pid
        was_ready = slot.ready
        slot.pid = 0
        slot.ready = False
        slot.received = b""
        self.nicks.forget(slot.index)  # its clients are gone, and their nicks are free
        self.roster.forget(slot.index)
        if slot.control is not None:
            slot.control.close()
            slot.control = None
        code = os.waitstatus_to_exitcode(status)
        slot.status = code
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if self.stopping or code == 0:
            slot.done = True
            log.info("worker %d (pid %d) exited (%s)", slot.index, pid, how)
            return False
        if not was_ready and slot.failures == 0 and not any(s.ready for s in self.slots):
            log.error("worker %d (pid %d) failed to start (%s)", slot.index, pid, how)
            slot.done = True
            return True
        now = self.clock()
        lived = now - slot.started
        if lived >= STABLE_AFTER:
            slot.failures = 0
        delay = backoff_delay(slot.failures, first=RESTART_FIRST, cap=RESTART_CAP)
        slot.failures += 1
        slot.restart_at = now + delay
        log.warning(
            "worker %d (pid %d) died (%s) after %.1f s; its clients were disconnected;"
            " restarting it in %.1f s",
            slot.index,
            pid,
            how,
            lived,
            delay,
        )
        return False

    def _restart_due(self) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                self._restart(slot)

    def _read_controls(self) -> None:
        """Read every worker's lines; apply the changes, then answer the questions.

        Changes first: a question may follow, in time, a change another
        worker sent before it (bob's worker reports that he left #lobby, he
        sees that he joined #ops, alice asks /who in #lobby): both are in
        the sockets by now, and the answer must not predate the change.
        """
        questions: list[tuple[_Slot, socket.socket, list[bytes]]] = []
        for slot in self.slots:
            sock = slot.control
            if sock is None:
                continue
            while True:
                try:
                    data = sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    break  # it exited: _reap collects it
                *lines, slot.received = (slot.received + data).split(b"\n")
                for line in lines:
                    words = line.split()
                    if words and words[0].endswith(b"?"):  # nick?, who?, rooms?
                        questions.append((slot, sock, words))
                    else:
                        self._control_change(slot, words)
        for slot, sock, words in questions:
            self._control_answer(slot, sock, words)

    def _control_change(self, slot: _Slot, words: list[bytes]) -> None:
        """A line from worker `slot` that needs no answer: ready, or a change to a chat table."""
        match words:
            case [b"ready"]:
                slot.ready = True
            case [b"nick-", key]:
                self.nicks.release(key, slot.index)
            case [b"in", room, nick]:
                self.roster.entered(slot.index, room, nick)
            case [b"out", room, nick]:
                self.roster.left(slot.index, room, nick)

    def _control_answer(self, slot: _Slot, sock: socket.socket, words: list[bytes]) -> None:
        """A question from worker `slot`, answered on its socket."""
        match words:
            case [b"nick?", token, key]:
                answer = [token, b"1" if self.nicks.claim(key, slot.index) else b"0"]
            case [b"who?", token, room]:
                answer = [token, *self.roster.who(room)]
            case [b"rooms?", token]:
                counts = self.roster.counts().items()
                answer = [token, *(word for room, n in counts for word in (room, b"%d" % n))]
            case _:
                return
        try:
            sock.sendall(b"answer " + b" ".join(answer) + b"\n")
        except OSError:
            pass  # it is exiting: _reap collects it


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return a, b


def _drain_logs() -> None:
    """Write out what the log sink holds, so a fork does not write it twice."""
    for handler in logging.getLogger("rat").handlers:
        drain = getattr(handler, "drain", None)
        if drain is not None:
            drain(0.5)


def supervise(config: Config, build: BuildFn, details: DetailsFn) -> int:
    """`rat serve --workers N`: hold the ports, run N workers, print `listening on` once."""
    from rat.logsink import announce  # noqa: PLC0415
    from rat.net import format_addr, open_listeners, raise_nofile_limit  # noqa: PLC0415

    try:
        poller = make_poller(config.backend)
    except ValueError as err:
        print(f"rat: {err}", file=sys.stderr)
        return 2
    poller.close()  # only its name is needed here; each worker makes its own
    # Hold each port (bound, not listening): errors are reported here, once,
    # and --port 0 / --web 0 pick one port that every worker then binds.
    wanted = [("", config.host, config.port)]
    if config.web is not None:
        wanted.append(("web ", config.web[0] or config.host, config.web[1]))
    held: list[socket.socket] = []
    names: list[str] = []
    ports: list[int] = []
    for kind, host, port in wanted:
        try:
            socks = open_listeners(host, port, reuse_port=True, listen=False)
            failure = "" if socks else "no IPv4 or IPv6 address"
        except OSError as err:
            socks, failure = [], err.strerror or str(err)
        if failure:
            where = format_addr((host, port))
            print(f"rat: cannot listen on {kind}{where}: {failure}", file=sys.stderr)
            for sock in held:
                sock.close()
            return 1
        held += socks
        names += [kind + format_addr(sock.getsockname()) for sock in socks]
        ports.append(socks[0].getsockname()[1])
    if config.redis:
        from rat.cluster.redis import parse_url, resolve  # noqa: PLC0415

        try:
            resolve(parse_url(config.redis))
        except OSError as err:
            print(f"rat: cannot resolve the Redis host of {config.redis}: {err}", file=sys.stderr)
            for sock in held:
                sock.close()
            return 1
    nofile = raise_nofile_limit()
    web = (config.web[0], ports[1]) if config.web is not None else None
    worker_config = dataclasses.replace(config, port=ports[0], web=web)
    link = (
        f"each a node on {config.redis} channel {config.redis_channel}"
        if config.redis
        else "linked by socket pairs"
    )

    def announce_line(pids: list[int]) -> None:
        workers = f"{len(pids)} workers (pids {', '.join(map(str, pids))}, {link})"
        extra = details(config, poller, nofile)
        announce(
            f"listening on {', '.join(names)} (pid {os.getpid()}, {workers}, {', '.join(extra)})"
        )

    return Supervisor(worker_config, build, held).run(announce_line)
