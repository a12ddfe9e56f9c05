"""The HTTP/1.1 phase of a web connection: one request, answered or upgraded (h11).

A web connection starts as HTTP.  Its first request decides what it is:

    GET /         the chat page (one self-contained file), then close
    GET /healthz  `200 ok`, then close
    GET /ws       a WebSocket upgrade (validated and answered by wsproto's
                  handshake); the connection becomes a WebSocket
    other paths   404; other methods 405; a malformed request 400 (431 for
                  headers over the size limit); each followed by a close

Every response closes the connection (`Connection: close`): a page load is
one request, and the WebSocket the page opens is a new connection anyway.
Keeping the phase to one request keeps its state to one h11 object, which
is dropped the moment the request is answered or upgraded.

h11 parses and serialises, and never touches a socket: `receive(bytes)`
returns the bytes to send back and leaves `done` (close after sending) or
`upgraded` (with `leftover`, frame bytes that came right behind the request).
It raises nothing for a peer's mistake: a malformed request is a 400, and
`refusal` names it for the log.

The origin rule (cross-site WebSocket hijacking)
------------------------------------------------
A browser attaches `Origin` to a WebSocket request, and any page on the web
may open a WebSocket to any address, including one on the user's loopback.
So a request whose `Origin` is neither the page's own origin (the scheme and
the `Host` it was asked for) nor listed with `--web-origin` gets 403.  A
request without `Origin` comes from a program, not from a page a user was
lured to, and is allowed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources

import h11
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

HEADER_LIMIT = 16 * 1024  # bytes of request line and headers; more gets 431
PAGE_RESOURCE = "page.html"
WS_PATH = "/ws"

Headers = list[tuple[bytes, bytes]]


def normalize_origin(text: str) -> str | None:
    """'HTTP://Example.com:80' -> 'http://example.com'; None if it is not an origin.

    An origin is a scheme, a host and a port; the default port is left out,
    so the same origin always compares equal.
    """
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if (
        scheme not in ("http", "https")
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    shown = f"[{host}]" if ":" in host else host
    default = 80 if scheme == "http" else 443
    return f"{scheme}://{shown}" if port in (None, default) else f"{scheme}://{shown}:{port}"


@dataclass(frozen=True, slots=True)
class WebSite:
    """What every web connection of one listener shares: the page and the rules."""

    max_line: int  # --max-line, for WebSocket messages
    origins: frozenset[str] = frozenset()  # --web-origin, normalised
    scheme: str = "http"  # "https" once TLS sits below
    page: bytes = b""
    page_policy: str = ""  # the page's Content-Security-Policy

    @classmethod
    def create(cls, max_line: int, origins: Iterable[str] = (), scheme: str = "http") -> WebSite:
        """Load the page shipped with the package; normalise the allowed origins."""
        page = resources.files("rat.web").joinpath(PAGE_RESOURCE).read_bytes()
        allowed = set()
        for origin in origins:
            normal = normalize_origin(origin)
            if normal is None:
                raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
            allowed.add(normal)
        return cls(max_line, frozenset(allowed), scheme, page, content_policy(page))

    def origin_allowed(self, origin: bytes | None, host: bytes | None) -> bool:
        """The origin rule (see the module docstring)."""
        if origin is None:
            return True
        claimed = normalize_origin(origin.decode("latin-1"))
        if claimed is None:  # "null" (a file, a sandbox), or garbage
            return False
        if claimed in self.origins:
            return True
        own = normalize_origin(f"{self.scheme}://{host.decode('latin-1')}") if host else None
        return claimed == own


_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_policy(page: bytes) -> str:
    """A Content-Security-Policy that allows the page's own inline code and nothing else.

    The page's script and style are pinned by hash: even if a line from
    another user were ever turned into markup, no script it carried could
    run, and the page can load nothing from elsewhere.
    """
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for kind, body in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    script = " ".join(hashes[b"script"]) or "'none'"
    style = " ".join(hashes[b"style"]) or "'none'"
    return (
        "default-src 'none'; connect-src 'self'; img-src data:; base-uri 'none';"
        f" form-action 'none'; frame-ancestors 'none'; script-src {script}; style-src {style}"
    )


class HttpExchange:
    """One request on a new web connection: its response, or its upgrade."""

    __slots__ = (
        "_h11",
        "_received",
        "_request",
        "detail",
        "done",
        "leftover",
        "refusal",
        "site",
        "upgraded",
    )

    def __init__(self, site: WebSite) -> None:
        self.site = site
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=HEADER_LIMIT)
        self._request: h11.Request | None = None
        self._received = 0  # bytes fed so far
        self.done = False  # answered: close once the response is sent
        self.upgraded = False  # answered with 101: the connection is a WebSocket now
        self.leftover = b""  # bytes that followed an upgrade request (WebSocket frames)
        self.refusal = ""  # why the request was refused (a metrics label), if it was
        self.detail = ""  # and what was wrong with it, for the log

    def receive(self, data: bytes) -> bytes:
        """Request bytes in; response bytes out (b"" while the request is incomplete)."""
        conn = self._h11
        conn.receive_data(data)
        self._received += len(data)
        while not self.done and not self.upgraded:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint
                why = "header_too_large" if status == 431 else "bad_request"
                return self._refuse(why, status, str(err))
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return b""
            if isinstance(event, h11.Request):
                self._request = event
                # h11 limits a head that arrives in pieces; this one came whole.
                head = self._received - len(conn.trailing_data[0])
                if head > HEADER_LIMIT:
                    detail = f"request head of {head} bytes (limit {HEADER_LIMIT})"
                    return self._refuse("header_too_large", 431, detail)
            elif isinstance(event, h11.EndOfMessage):
                return self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                self.done = True  # the client left before finishing its request
            # h11.Data: a request body, which no route wants: dropped.
        return b""

    def _answer(self) -> bytes:
        """The request is complete: route it."""
        request = self._request
        assert request is not None
        headers = {name: value for name, value in request.headers}
        path = request.target.split(b"?", 1)[0]
        if not self.site.origin_allowed(headers.get(b"origin"), headers.get(b"host")):
            origin = headers.get(b"origin", b"").decode("latin-1")
            return self._refuse("forbidden_origin", 403, f"origin {origin} is not allowed here")
        if request.method != b"GET":
            return self._respond(405, b"only GET is served here\n", [(b"Allow", b"GET")])
        if path == b"/":
            policy = self.site.page_policy.encode()
            extra = [(b"Content-Security-Policy", policy), (b"Referrer-Policy", b"no-referrer")]
            return self._respond(200, self.site.page, extra, b"text/html; charset=utf-8")
        if path == b"/healthz":
            return self._respond(200, b"ok\n")
        if path == WS_PATH.encode():
            return self._upgrade(request)
        return self._respond(404, b"not found: try / (the chat page) or /ws (WebSocket)\n")

    def _upgrade(self, request: h11.Request) -> bytes:
        """Validate and accept the WebSocket handshake (RFC 6455, 4.2) with wsproto."""
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.initiate_upgrade_connection(list(request.headers), request.target)
            events = list(handshake.events())
        except RemoteProtocolError as err:
            hint = err.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            extra = list(hint.headers) if isinstance(hint, RejectConnection) else []
            return self._refuse("bad_upgrade", status, f"WebSocket handshake: {err}", extra)
        if not events or not isinstance(events[0], Request):
            return self._refuse("bad_upgrade", 400, "WebSocket handshake: not a WebSocket request")
        response = handshake.send(AcceptConnection())
        # h11 stops at the end of a request that proposes an upgrade and keeps
        # what follows: the client's first frames, if it did not wait for 101.
        self.leftover = self._h11.trailing_data[0]
        self.upgraded = True
        return response

    def _refuse(self, why: str, status: int, detail: str, extra: Headers | None = None) -> bytes:
        """A request rat will not serve: say why (status and text), then close."""
        self.refusal = why
        self.detail = detail
        return self._respond(status, f"{detail}\n".encode(), extra)

    def _respond(
        self,
        status: int,
        body: bytes,
        extra: Headers | None = None,
        content_type: bytes = b"text/plain; charset=utf-8",
    ) -> bytes:
        """A whole response, then close."""
        conn = self._h11
        self.done = True
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        headers: Headers = [
            (b"Content-Type", content_type),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
            (b"Cache-Control", b"no-store"),
            (b"X-Content-Type-Options", b"nosniff"),
            (b"Server", b"rat"),
            *(extra or []),
        ]
        phrase = HTTPStatus(status).phrase.encode()
        out = conn.send(h11.Response(status_code=status, headers=headers, reason=phrase)) or b""
        method = self._request.method if self._request is not None else b"GET"
        if method != b"HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        return out


def canned_response(status: int, body: bytes) -> bytes:
    """A complete response to send without reading a request (a refusal at accept).

    h11 only answers a request it has seen, so it is shown a minimal one.
    """
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: rat\r\n\r\n")
    while conn.next_event() is not h11.NEED_DATA:
        pass
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
        (b"Server", b"rat"),
    ]
    phrase = HTTPStatus(status).phrase.encode()
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=phrase)) or b""
    out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")
