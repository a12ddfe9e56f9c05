"""How a test client reaches rat: plain TCP, or TLS (the suite run again over TLS).

`TLSMaterial` is a throwaway CA and a server certificate for 127.0.0.1
(made by `trustme`), written to PEM files for `rat serve --tls-cert/--tls-key`.

`TLSSocket` is a TLS client with the socket methods the integration tests
use (`sendall`, `recv`, `settimeout`, `shutdown`, `fileno`, ...), built on
an `ssl.SSLObject` over the raw socket rather than on `ssl.SSLSocket`, for
two reasons:

- `shutdown(SHUT_WR)` must be a TCP half-close (what the plain tests mean:
  the server sees EOF), and `SSLSocket.shutdown` drops TLS altogether;
- `recv` decrypts *everything* the socket gave it before it returns, so no
  complete record is left inside OpenSSL where `select()` cannot see it
  (the client-side twin of the server's edge-triggering rule).

After the handshake it also waits for the server's TLS 1.3 session tickets:
they arrive just after the handshake, and a test asserting that nothing
arrives would otherwise see the socket readable with no line in it.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path
from typing import cast

import trustme

TICKET_WAIT = 2.0  # seconds to wait for TLS 1.3 session tickets after the handshake


class TLSMaterial:
    """A CA, a certificate for 127.0.0.1/localhost/::1, and a client context trusting it."""

    def __init__(self, where: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        self.cert = str(where / "cert.pem")
        self.key = str(where / "key.pem")
        cert.cert_chain_pems[0].write_to_path(self.cert)
        cert.private_key_pem.write_to_path(self.key)
        self.client_context = ssl.create_default_context()
        self.ca.configure_trust(self.client_context)

    @property
    def flags(self) -> list[str]:
        return ["--tls-cert", self.cert, "--tls-key", self.key]

    def wrap(self, sock: socket.socket) -> socket.socket:
        """`sock`, speaking TLS; typed as a socket because it is used as one."""
        return cast(socket.socket, TLSSocket(sock, self.client_context))


class TLSSocket:
    """A blocking-or-not TLS client over a connected socket (see the module docstring)."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, hostname: str = "localhost"):
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self._in, self._out, server_hostname=hostname)
        self._plain = bytearray()  # decrypted, not yet returned by recv
        self._eof = False
        self._handshake()

    # ------------------------------------------------------------ setup

    def _handshake(self) -> None:
        timeout = self.raw.gettimeout()
        self.raw.settimeout(10.0 if timeout is None else timeout)
        try:
            while True:
                try:
                    self.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    chunk = self.raw.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("EOF during the TLS handshake") from None
                    self._in.write(chunk)
            self._flush()
            if self.obj.version() == "TLSv1.3":
                self._wait_for_tickets()
        finally:
            self.raw.settimeout(timeout)

    def _wait_for_tickets(self) -> None:
        deadline = time.monotonic() + TICKET_WAIT
        while time.monotonic() < deadline:
            session = self.obj.session
            if session is not None and session.has_ticket:
                return
            ready, _, _ = select.select([self.raw], [], [], deadline - time.monotonic())
            if not ready or not self._pull():
                return

    # ------------------------------------------------------------ I/O

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.raw.sendall(data)

    def _pull(self) -> bool:
        """One raw recv, all of it decrypted; False at EOF.  Raises like socket.recv."""
        chunk = self.raw.recv(65536)
        if not chunk:
            self._eof = True
            return False
        self._in.write(chunk)
        while True:
            try:
                data = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            if not data:  # close_notify
                self._eof = True
                break
            self._plain += data
        self._flush()  # key updates, alerts
        return True

    def recv(self, size: int) -> bytes:
        while not self._plain and not self._eof:
            self._pull()
        data = bytes(self._plain[:size])
        del self._plain[:size]
        return data

    def sendall(self, data: bytes) -> None:
        if data:
            self.obj.write(data)
        self._flush()

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def pending(self) -> int:
        return len(self._plain)

    # ------------------------------------------------------------ socket-like

    def fileno(self) -> int:
        return self.raw.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def setblocking(self, flag: bool) -> None:
        self.raw.setblocking(flag)

    def getsockname(self) -> tuple[str, int]:
        name: tuple[str, int] = self.raw.getsockname()
        return name

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.raw.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)  # TCP half-close: the server sees EOF, TLS stays up

    def close(self) -> None:
        self.raw.close()
