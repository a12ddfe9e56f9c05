"""Security and reach for `rat serve`: what `--tls-cert/--tls-key`, `--token-file`,
`--allow/--deny` and `--unix` set up, in the order the command line needs it.

    Security.load(config)      read the certificate, key and token file; parse
                               the rules (a bad file: `StartError`, exit 1)
    open_unix(backlog)         the `--unix` listener (replaces a stale file)
    install(server, sockets)   the TCP listeners speak TLS; the Unix listener;
                               the address rules; the token gate; SIGHUP reloads
    exposure_warning(...)      the loud line for a network address without tokens
    close()                    remove the socket file at exit

The parts are separate modules (rat.tls, rat.auth, rat.access) that know
nothing of each other; this is where they meet the server.  Each is imported
only when its option is given: a plain `rat serve` loads none of them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from rat.config import Config
from rat.connection import UnixConn
from rat.net import UnixSocketFile, open_unix_listener
from rat.server import plural

if TYPE_CHECKING:
    from rat.access import AddressRules
    from rat.auth import Tokens
    from rat.layer import Layer
    from rat.server import Server
    from rat.tls import Certificates

EXPOSURE_WARNING = (
    "listening on {where} without --token-file: anyone who can reach the port can read"
    " and write every line (add --token-file, --allow/--deny, or bind 127.0.0.1)"
)


class StartError(Exception):
    """A file or setting the server cannot start with; one line for the user."""


class Security:
    """The security settings of one `rat serve`, loaded and ready to install."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.certificates: Certificates | None = None
        self.tokens: Tokens | None = None
        self.rules: AddressRules | None = None
        self.unix_socket: socket.socket | None = None
        self.unix_file: UnixSocketFile | None = None

    @classmethod
    def load(cls, config: Config) -> Security:
        """Read every file the options name; raise `StartError` on the first bad one."""
        security = cls(config)
        if config.tls_cert and config.tls_key:
            from rat.tls import CertificateError, Certificates  # noqa: PLC0415 (only with TLS)

            try:
                security.certificates = Certificates(config.tls_cert, config.tls_key)
            except CertificateError as err:
                raise StartError(f"TLS: {err}") from None
        if config.token_file:
            from rat.auth import TokenFileError, Tokens  # noqa: PLC0415 (only with tokens)

            try:
                security.tokens = Tokens(config.token_file)
            except TokenFileError as err:
                raise StartError(str(err)) from None
        if config.allow or config.deny:
            from rat.access import AddressRules  # noqa: PLC0415 (only with rules)

            try:
                security.rules = AddressRules.parse(config.allow, config.deny)
            except ValueError as err:  # the CLI checked already; a Config built by hand
                raise StartError(str(err)) from None
        return security

    def open_unix(self, backlog: int) -> None:
        """Listen on `--unix PATH` if given (raises OSError, see `open_unix_listener`)."""
        if self.config.unix:
            self.unix_socket, self.unix_file = open_unix_listener(self.config.unix, backlog)

    def install(self, server: Server, line_listeners: list[socket.socket]) -> None:
        """Put everything in place on `server`; `line_listeners` are the TCP ones, not
        yet listened on (the server was built without them when TLS is on)."""
        if self.certificates is not None:
            from rat.tls import tls_line_factory  # noqa: PLC0415 (only with TLS)

            # A client beyond --max-clients is closed without a word: a line in
            # the clear would only be garbage to a TLS client.
            server.listen(
                line_listeners, tls_line_factory(self.certificates), refusal=b"", busy=b""
            )  # a TLS client is told nothing in the clear
            server.reloaders.append(self.certificates.reload)
        if self.unix_socket is not None:
            server.listen([self.unix_socket], UnixConn, kind="unix")
        if self.rules is not None:
            server.address_rules = self.rules
        if self.tokens is not None:
            from rat.auth import TokenGate  # noqa: PLC0415 (only with tokens)

            TokenGate(self.tokens).install(server)

    def web_wrapper(self) -> Callable[[Layer], Layer] | None:
        """With TLS, what puts TLS under each web connection (HTTPS/WSS); else None."""
        certificates = self.certificates
        if certificates is None:
            return None
        from rat.layer import Stack  # noqa: PLC0415
        from rat.tls import TLSLayer  # noqa: PLC0415 (only with TLS)

        def wrap(web: Layer) -> Layer:
            return Stack(TLSLayer(certificates.context), web, name=f"{web.name}s")

        return wrap

    def details(self) -> list[str]:
        """What the `listening on` line says about security."""
        details = []
        if self.certificates is not None:
            details.append("TLS")
        if self.tokens is not None:
            details.append(f"AUTH required ({plural(len(self.tokens), 'token')})")
        if self.rules is not None:
            details.append(self.rules.describe())
        return details

    def exposure_warning(self, addresses: list[str]) -> str | None:
        """The warning for listeners on a network address without tokens, or None."""
        if self.tokens is not None:
            return None
        exposed = []
        for address in addresses:
            kind, _, where = address.rpartition(" ")  # 'web 0.0.0.0:8081', 'unix /run/rat.sock'
            # Line and web listeners carry the lines; a Unix socket is not on
            # the network, and the admin endpoint only reads counters.
            if kind in ("", "web") and not _is_loopback(where):
                exposed.append(address)
        if not exposed:
            return None
        return EXPOSURE_WARNING.format(where=", ".join(exposed))

    def close(self) -> None:
        """At exit: remove the Unix socket file (if it is still ours)."""
        if self.unix_file is not None:
            self.unix_file.remove()
            self.unix_file = None


def _is_loopback(address: str) -> bool:
    """'127.0.0.1:8080', '[::1]:8080' -> True; '0.0.0.0:8080', '[::]:8080' -> False."""
    import ipaddress  # noqa: PLC0415 (once, at start)

    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
