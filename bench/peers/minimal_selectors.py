#!/usr/bin/env python3
"""The simplest correct line-broadcast server on `selectors`: the baseline rat is compared with.

The rat protocol (see SPEC.md): every complete line a client sends is relayed
byte for byte to every *other* connected client; bytes after the last newline
wait for the rest of their line; a client that closes with a partial line has
it relayed with a newline appended; a half-closed client keeps receiving.

What "simplest correct" means here: one `selectors.DefaultSelector`, one
non-blocking socket per client, and per client an output buffer so that a slow
reader never blocks the loop (a blocking `sendall` would stall everyone).  A
write is tried at once and EVENT_WRITE is registered only while bytes are left.
No limits, no batching across reads, no fast paths: the cost a plain Python
server pays, to show what rat's design buys.

    python bench/peers/minimal_selectors.py --port 8080
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys


class Client:
    """One connection: what it has sent without a newline yet, and what waits to go out."""

    __slots__ = ("out", "partial", "reading", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.partial = b""
        self.out = bytearray()
        self.reading = True


class Server:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ)
        self.clients: dict[socket.socket, Client] = {}
        self.running = True

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, or the peer gave up: try later
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.clients[sock] = Client(sock)
            self.sel.register(sock, selectors.EVENT_READ)

    def read(self, client: Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(client)
            return
        if not data:  # EOF: relay a partial line; keep sending to it (half-close)
            if client.partial:
                self.broadcast(client, client.partial + b"\n")
                client.partial = b""
            client.reading = False
            self.watch(client)
            return
        end = data.rfind(b"\n") + 1
        if end == 0:
            client.partial += data
            return
        lines = client.partial + data[:end]
        client.partial = data[end:]
        self.broadcast(client, lines)

    def broadcast(self, sender: Client, lines: bytes) -> None:
        for client in list(self.clients.values()):
            if client is not sender:
                self.send(client, lines)

    def send(self, client: Client, data: bytes) -> None:
        if client.out:  # keep the order: behind what is already waiting
            client.out += data
            return
        try:
            sent = client.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(client)
            return
        if sent < len(data):
            client.out += data[sent:]
            self.watch(client)

    def write(self, client: Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(client)
            return
        del client.out[:sent]
        if not client.out:
            self.watch(client)

    def watch(self, client: Client) -> None:
        """Register what the client waits for: reading, and writing while output is left."""
        events = (selectors.EVENT_READ if client.reading else 0) | (
            selectors.EVENT_WRITE if client.out else 0
        )
        registered = client.sock in self.sel.get_map()
        if events and registered:
            self.sel.modify(client.sock, events)
        elif events:
            self.sel.register(client.sock, events)
        elif registered:
            self.sel.unregister(client.sock)

    def close(self, client: Client) -> None:
        if self.clients.pop(client.sock, None) is None:
            return
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def serve(self) -> None:
        while self.running:
            for key, events in self.sel.select(timeout=0.5):
                if key.fileobj is self.listener:
                    self.accept()
                    continue
                assert isinstance(key.fileobj, socket.socket)
                client = self.clients.get(key.fileobj)
                if client is None:
                    continue
                if events & selectors.EVENT_WRITE:
                    self.write(client)
                if events & selectors.EVENT_READ and client.sock in self.clients:
                    self.read(client)
        for client in list(self.clients.values()):
            self.close(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    args = parser.parse_args()
    try:
        listener = socket.create_server((args.host, args.port), backlog=1024)
    except OSError as err:
        print(f"cannot listen on {args.host}:{args.port}: {err.strerror}", file=sys.stderr)
        return 1
    listener.setblocking(False)
    server = Server(listener)

    def stop(signum: int, frame: object) -> None:
        server.running = False

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = listener.getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    server.serve()
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
