"""The pipe protocol between the coordinator and its worker processes.

Each worker process has one `multiprocessing` pipe to the coordinator.  A
message is a tuple whose first item names it.  Worker to coordinator, every
message carries the worker's index second:

- `("ready", index, sockets)`: every connection of the plan is open (Redis:
  every SUBSCRIBE acknowledged);
- `("synced", index)`: every receiver got the sync line;
- `("published", index, {pubid: lines}, last_tx_ns)`: publishing is over;
- `("result", index, WorkerResult)`: the end;
- `("progress", index, published, delivered)`: a few times a second;
- `("error", index, sentence)`: the worker gives up (a `BenchError`, or a
  crash with its traceback).

Coordinator to worker: `("go", go_ns, end_ns)` (start publishing at that
monotonic time, stop at the other), `("expect", {pubid: lines}, grace_s)`
(what every publisher sent: receive until every receiver has all of it or
the grace period ends), and `("abort",)`.

The worker's end sits in the same epoll set as its sockets, so waiting for
the coordinator never stops the load (`CoordinatorLink`).  The coordinator
waits on all pipes at once, handling progress messages on the way
(`WorkerPool`); a worker that dies closes its pipe, which ends any wait.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from ratbench.errors import BenchError

REPEAT_S = 1.0  # `gather(repeat=...)` calls it this often


class CoordinatorLink:
    """The worker's end of the pipe: queued incoming messages, tagged outgoing ones."""

    def __init__(self, pipe: Connection, index: int) -> None:
        self.pipe = pipe
        self.index = index
        self.messages: deque[tuple[Any, ...]] = deque()
        self.aborted = False  # the coordinator gave up (or went away)

    def fileno(self) -> int:
        return self.pipe.fileno()

    def send(self, kind: str, *fields: Any) -> None:
        self.pipe.send((kind, self.index, *fields))

    def read(self) -> None:
        """Queue every message waiting on the pipe (call when it is readable)."""
        while self.pipe.poll():
            try:
                msg = self.pipe.recv()
            except (EOFError, OSError):
                msg = ("abort",)
            self.messages.append(msg)
            if msg[0] == "abort":
                self.aborted = True
                return

    def has(self, kind: str) -> bool:
        """A `kind` message (or an abort) is waiting."""
        return any(m[0] in (kind, "abort") for m in self.messages)

    def take(self, kind: str) -> tuple[Any, ...]:
        """The first waiting `kind` message; BenchError on abort or if there is none."""
        while self.messages:
            msg = self.messages.popleft()
            if msg[0] == "abort":
                raise BenchError("aborted by the coordinator")
            if msg[0] == kind:
                return msg
        raise BenchError(f"timed out waiting for {kind!r} from the coordinator")

    def report_error(self, message: str) -> None:
        try:
            self.send("error", message)
        except OSError:
            pass  # the coordinator is gone: nobody to tell

    def close(self) -> None:
        self.pipe.close()


class WorkerPool:
    """The coordinator's side: start the workers, gather their answers, stop them."""

    def __init__(self) -> None:
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.progress: dict[int, tuple[int, int]] = {}  # index -> (published, delivered)
        self.on_tick: Callable[[], None] = lambda: None  # called between waits

    def start(self, target: Callable[[Any, Connection], None], plans: list[Any]) -> None:
        """One process per plan running `target(plan, pipe)`."""
        # fork: the workers need nothing re-imported, and the coordinator has no threads.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        ctx: Any = multiprocessing.get_context(method)
        for plan in plans:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=(plan, theirs), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)

    def _receive(self, conn: Connection) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            index = self.pipes.index(conn)
            proc = self.procs[index]
            proc.join(1)
            raise BenchError(
                f"generator process {index} died (exit status {proc.exitcode})"
            ) from None
        if msg[0] == "error":
            raise BenchError(msg[2])
        if msg[0] == "progress":
            self.progress[msg[1]] = (msg[2], msg[3])
        return msg

    def gather(
        self,
        kind: str,
        deadline: float,
        what: str,
        repeat: Callable[[], None] | None = None,
    ) -> list[tuple[Any, ...]]:
        """One `kind` message from every worker, in worker order.

        `what` says what was awaited, for the timeout message.  `repeat`, if
        given, is called every `REPEAT_S` seconds while waiting.
        """
        now = time.monotonic
        got: dict[int, tuple[Any, ...]] = {}
        next_repeat = now() + REPEAT_S
        while len(got) < len(self.pipes):
            if repeat is not None and now() >= next_repeat:
                repeat()
                next_repeat = now() + REPEAT_S
            left = deadline - now()
            if left <= 0:
                raise BenchError(f"timed out: {what}")
            # A worker that answered may close its pipe (after "result"): wait on the rest.
            waiting = [c for i, c in enumerate(self.pipes) if i not in got]
            for conn in wait(waiting, timeout=min(left, 0.1)):
                assert isinstance(conn, Connection)
                msg = self._receive(conn)
                if msg[0] == kind:
                    got[msg[1]] = msg
            self.on_tick()
        return [got[i] for i in sorted(got)]

    def broadcast(self, *msg: Any) -> None:
        for conn in self.pipes:
            conn.send(msg)

    def sleep(self, seconds: float) -> None:
        """Wait, reading progress messages so that no pipe fills up."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for conn in wait(self.pipes, timeout=min(0.05, max(0.0, end - time.monotonic()))):
                assert isinstance(conn, Connection)
                self._receive(conn)
            self.on_tick()

    def stop(self) -> None:
        for conn in self.pipes:
            try:
                conn.send(("abort",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.pipes:
            conn.close()


def worker_entry(body: Callable[[CoordinatorLink], None], pipe: Connection, index: int) -> None:
    """Run a worker's `body(link)`; report a BenchError or a crash to the coordinator."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the coordinator stops us
    link = CoordinatorLink(pipe, index)
    try:
        body(link)
    except BenchError as err:
        link.report_error(str(err))
    except Exception as err:  # a bug: report it rather than hang the coordinator
        link.report_error(f"generator process crashed: {err!r}\n{traceback.format_exc()}")
    finally:
        link.close()
