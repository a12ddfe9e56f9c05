"""The web layer without sockets: real client bytes in (wsproto, h11), cut anywhere.

`WebLayer` is sans-IO, so every rule of SPEC "Web" that is about bytes is
tested here by feeding it what a real client sends, cut at random places
(hypothesis), and decoding what it answers with a real client again.
"""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from rat.hub import Room
from rat.layer import LayerError
from rat.web.http import WebSite, content_policy, normalize_origin
from rat.web.layer import WebLayer
from rat.web.websocket import frame_lines

MAX_LINE = 1000


def site(max_line: int = MAX_LINE, origins: tuple[str, ...] = ()) -> WebSite:
    return WebSite.create(max_line, origins)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length, sorted)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


class Client:
    """A real WebSocket client (wsproto) talking to a `WebLayer` through bytes."""

    def __init__(self, layer: WebLayer, origin: str | None = None) -> None:
        self.layer = layer
        self.ws = WSConnection(ConnectionType.CLIENT)
        headers = [(b"Origin", origin.encode())] if origin else []
        self.handshake = self.ws.send(Request(host="rat.test", target="/ws", extra_headers=headers))

    def events(self) -> list[Event]:
        self.ws.receive_data(self.layer.outgoing())
        return list(self.ws.events())

    def frames(self, *messages: bytes | str, fragment: int = 0) -> bytes:
        """The client's frames for `messages`; with `fragment`, in pieces of that size."""
        out = b""
        for message in messages:
            size = fragment or max(1, len(message))
            pieces = [message[i : i + size] for i in range(0, len(message), size)] or [message]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                if isinstance(piece, str):
                    out += self.ws.send(TextMessage(data=piece, message_finished=last))
                else:
                    out += self.ws.send(BytesMessage(data=piece, message_finished=last))
        return out

    def decode(self, wire: bytes) -> list[Event]:
        self.ws.receive_data(wire)
        return list(self.ws.events())


def upgraded(layer: WebLayer | None = None) -> Client:
    client = Client(layer or WebLayer(site()))
    assert client.layer.receive(client.handshake) == b""
    assert client.layer.ready
    assert isinstance(client.events()[0], AcceptConnection)
    return client


def http(layer: WebLayer, raw: bytes) -> tuple[h11.Response, bytes, LayerError | None]:
    """Send `raw` (a request) to a fresh layer; the parsed response, its body, the error."""
    error = None
    try:
        layer.receive(raw)
    except LayerError as err:
        error = err
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(layer.outgoing())
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    return response, body, error


def header(response: h11.Response, name: bytes) -> bytes | None:
    return dict(response.headers).get(name.lower())


# ------------------------------------------------------------------ handshake and input


messages = st.lists(
    st.one_of(st.binary(max_size=300), st.text(max_size=100)), min_size=1, max_size=12
)


def expected_lines(sent: list[bytes | str]) -> bytes:
    out = b""
    for message in sent:
        data = message.encode() if isinstance(message, str) else message
        out += data if data.endswith(b"\n") else data + b"\n"
    return out


@settings(max_examples=150, deadline=None)
@given(
    sent=messages,
    cuts=st.lists(st.integers(min_value=0), max_size=40),
    fragment=st.sampled_from([0, 1, 7, 200]),
)
def test_any_chunking_of_handshake_and_frames_gives_the_same_lines(
    sent: list[bytes | str], cuts: list[int], fragment: int
) -> None:
    """Handshake and frames, cut anywhere, in one stream: the same lines, a valid 101.

    (The client sends its frames without waiting for the 101: wsproto will
    only make them once it has seen one, so a first layer answers the
    handshake and the layer under test gets the whole stream at once.)
    """
    client = upgraded()
    stream = client.handshake + client.frames(*sent, fragment=fragment)
    stream += client.ws.send(Ping(payload=b"p"))
    layer = WebLayer(site(max_line=100_000))
    lines = b""
    for piece in chunked(stream, cuts):
        lines += layer.receive(piece)
    assert lines == expected_lines(sent)
    answer = layer.outgoing()
    assert answer.startswith(b"HTTP/1.1 101 ")
    events = client.decode(answer.split(b"\r\n\r\n", 1)[1])
    assert [type(e) for e in events] == [Pong]


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.binary(max_size=70_000).map(lambda b: b.replace(b"\n", b"")), max_size=8))
def test_lines_come_back_as_one_message_each_text_or_binary(lines: list[bytes]) -> None:
    """Each relayed line: one message without its newline; text if valid UTF-8, else binary."""
    client = upgraded()
    block = b"".join(line + b"\n" for line in lines)
    events = client.decode(client.layer.encode(block)) if block else []
    assert len(events) == len(lines)
    for line, event in zip(lines, events, strict=True):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            assert isinstance(event, BytesMessage)
            assert event.data == line
        else:
            assert isinstance(event, TextMessage)
            assert event.data == text


@pytest.mark.parametrize(
    "line",
    [b""]
    + [b"a" * size for size in (1, 125, 126, 127, 65535, 65536, 70000)]
    + [b"\xff" * size for size in (1, 125, 126, 127, 65535, 65536, 70000)],
    ids=len,
)
def test_frames_are_exactly_what_wsproto_would_send(line: bytes) -> None:
    text = not line.startswith(b"\xff")
    proto = FrameProtocol(client=False, extensions=[])
    expected = proto.send_data(line.decode() if text else line)
    assert frame_lines(line + b"\n") == bytes(expected)


def test_message_mapping_rules() -> None:
    client = upgraded()
    receive = client.layer.receive
    assert receive(client.frames("no newline")) == b"no newline\n"
    assert receive(client.frames("ends in one\n")) == b"ends in one\n"
    assert receive(client.frames("two\nlines")) == b"two\nlines\n"
    assert receive(client.frames("a\n\nb\n")) == b"a\n\nb\n"
    assert receive(client.frames("")) == b"\n"  # an empty message is an empty line
    assert receive(client.frames(b"\x00\xff\r")) == b"\x00\xff\r\n"  # binary, verbatim


def test_a_message_longer_than_max_line_closes_with_1009() -> None:
    client = upgraded(WebLayer(site(max_line=10)))
    good = client.frames("123456789", "123456789\n")  # 10 bytes with the newline: fits
    bad = client.frames("1234567890")  # 11 bytes once the newline is added
    with pytest.raises(LayerError) as caught:
        client.layer.receive(good + bad)
    assert caught.value.reason == "message_too_big"
    assert caught.value.accepted == b"123456789\n123456789\n"  # earlier messages still count
    (close,) = client.events()
    assert isinstance(close, CloseConnection)
    assert close.code == 1009
    assert client.layer.finished
    assert not client.layer.ready


def test_a_fragmented_message_is_refused_as_soon_as_it_is_too_long() -> None:
    client = upgraded(WebLayer(site(max_line=10)))
    first = client.ws.send(Message(data=b"x" * 8, message_finished=False))
    assert client.layer.receive(first) == b""
    more = client.ws.send(Message(data=b"x" * 8, message_finished=False))
    with pytest.raises(LayerError):
        client.layer.receive(more)  # the message is not finished, but already too long
    assert [e.code for e in client.events() if isinstance(e, CloseConnection)] == [1009]


def test_protocol_violations_close_with_wsprotos_code() -> None:
    client = upgraded()
    unmasked = FrameProtocol(client=False, extensions=[]).send_data("hi")  # server-style frame
    with pytest.raises(LayerError) as caught:
        client.layer.receive(bytes(unmasked))
    assert caught.value.reason == "protocol_error"
    assert [e.code for e in client.events() if isinstance(e, CloseConnection)] == [1002]

    client = upgraded()
    bad_text = bytearray(client.frames("é"))  # make the text frame invalid UTF-8
    masked_byte = bad_text[-1]
    bad_text[-1] = masked_byte ^ 0x40  # 0xa9 -> 0xe9: a lead byte with nothing after it
    with pytest.raises(LayerError):
        client.layer.receive(bytes(bad_text))
    assert [e.code for e in client.events() if isinstance(e, CloseConnection)] == [1007]


def test_a_client_close_is_answered_and_ends_the_conversation() -> None:
    client = upgraded()
    assert client.layer.receive(client.ws.send(CloseConnection(code=1000)) + b"junk") == b""
    events = client.events()
    assert [type(e) for e in events] == [CloseConnection]
    assert client.layer.finished
    assert client.layer.farewell(b"", "eof") == b""  # nothing after the close


def test_farewell_says_why_with_the_close_code() -> None:
    client = upgraded()
    events = client.decode(client.layer.farewell(b"", "shutdown"))
    assert [(type(e), getattr(e, "code", None)) for e in events] == [(CloseConnection, 1001)]

    client = upgraded()
    events = client.decode(client.layer.farewell(b"ERR slow consumer\n", "slow_consumer"))
    assert isinstance(events[0], TextMessage)
    assert events[0].data == "ERR slow consumer"
    assert isinstance(events[1], CloseConnection)
    assert events[1].code == 1008
    assert client.layer.ping() == b""  # nothing may follow a close


def test_ping_is_a_ping() -> None:
    client = upgraded()
    assert [type(e) for e in client.decode(client.layer.ping())] == [Ping]


def test_an_idle_websocket_holds_no_frame_parser() -> None:
    client = upgraded()
    frames = client.frames("hello")
    assert client.layer.receive(frames[:3]) == b""
    assert client.layer.holds_parser  # mid-frame: the parser keeps the partial frame
    assert client.layer.receive(frames[3:]) == b"hello\n"
    assert not client.layer.holds_parser  # between messages: dropped
    partial = client.ws.send(Message(data="a", message_finished=False))
    client.layer.receive(partial)
    assert client.layer.holds_parser  # mid-message (continuation expected)


def test_a_turn_is_encoded_once_for_every_websocket_receiver() -> None:
    room = Room("#lobby")
    room.publish("sender", b"one\ntwo\n")
    turn = room.take_turn()
    assert turn is not None
    first, second = upgraded(), upgraded()
    wire = first.layer.encode_turn(turn)
    assert second.layer.encode_turn(turn) is wire  # the same bytes object, not a copy
    assert [e.data for e in second.decode(wire)] == ["one", "two"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ HTTP


def request(target: bytes = b"/", method: bytes = b"GET", *headers: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: rat.test", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_get_root_serves_the_self_contained_page() -> None:
    layer = WebLayer(site())
    response, body, error = http(layer, request(b"/"))
    assert error is None
    assert response.status_code == 200
    assert header(response, b"content-type") == b"text/html; charset=utf-8"
    assert header(response, b"connection") == b"close"
    assert layer.finished and not layer.ready
    assert b"<script>" in body and b"new WebSocket(" in body
    # Self-contained: nothing is loaded from anywhere else.
    for reference in (b"src=", b'href="http', b"@import", b"url(", b"//cdn"):
        assert reference not in body
    policy = header(response, b"content-security-policy")
    assert policy == content_policy(body).encode()
    assert b"default-src 'none'" in policy and b"'sha256-" in policy


def test_healthz_answers_ok() -> None:
    response, body, error = http(WebLayer(site()), request(b"/healthz"))
    assert (response.status_code, body, error) == (200, b"ok\n", None)


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),  # HTTP/1.1 without Host
        (request(b"/", b"GET", b"X-Big: " + b"a" * 20_000), 431, "header_too_large"),
        (
            request(
                b"/ws",
                b"GET",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Version: 13",
            ),
            400,
            "bad_upgrade",
        ),  # no Sec-WebSocket-Key
        (
            request(
                b"/ws",
                b"GET",
                b"Upgrade: websocket",
                b"Connection: Upgrade",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                b"Sec-WebSocket-Version: 8",
            ),
            426,
            "bad_upgrade",
        ),
        (request(b"/ws"), 400, "bad_upgrade"),  # a plain GET of the WebSocket path
    ],
)
def test_malformed_requests_get_a_status_and_a_close(raw: bytes, status: int, reason: str) -> None:
    layer = WebLayer(site())
    response, _, error = http(layer, raw)
    assert response.status_code == status
    assert error is not None and error.reason == reason
    assert header(response, b"connection") == b"close"
    assert layer.finished and not layer.ready
    if status == 426:
        assert header(response, b"sec-websocket-version") == b"13"


def test_a_header_that_grows_past_the_limit_in_pieces_gets_431() -> None:
    layer = WebLayer(site())
    layer.receive(b"GET / HTTP/1.1\r\nHost: rat.test\r\nX-Slow: ")
    with pytest.raises(LayerError) as caught:
        for _ in range(40):  # 40 KB of one header, never finished
            layer.receive(b"a" * 1000)
    assert caught.value.reason == "header_too_large"
    assert layer.outgoing().startswith(b"HTTP/1.1 431 ")
    assert layer.finished


@pytest.mark.parametrize(
    ("raw", "status"),
    [(request(b"/nothing"), 404), (request(b"/", b"POST", b"Content-Length: 0"), 405)],
)
def test_other_paths_and_methods(raw: bytes, status: int) -> None:
    layer = WebLayer(site())
    response, _, error = http(layer, raw)
    assert response.status_code == status
    assert error is None  # a wrong address is not a protocol violation
    assert layer.finished
    if status == 405:
        assert header(response, b"allow") == b"GET"


@settings(max_examples=100, deadline=None)
@given(junk=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_any_bytes_get_an_answer_or_wait_never_a_traceback(junk: bytes, cuts: list[int]) -> None:
    layer = WebLayer(site())
    try:
        for piece in chunked(junk, cuts):
            layer.receive(piece)
    except LayerError:
        assert layer.finished
        assert layer.outgoing().startswith(b"HTTP/1.1 4")


# ---------------------------------------------------------------------------- Origin


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://rat.test", True),  # the page's own origin
        ("HTTP://RAT.test:80", True),  # the same origin, spelled differently
        ("https://rat.test", False),  # another scheme is another origin
        ("http://rat.test:8081", False),  # another port too
        ("http://evil.example", False),
        ("null", False),  # a file or a sandboxed frame
        ("https://chat.example.org", True),  # listed with --web-origin
    ],
)
def test_origin_rule(origin: str | None, allowed: bool) -> None:
    layer = WebLayer(site(origins=("https://chat.example.org:443",)))
    client = Client(layer, origin)
    try:
        layer.receive(client.handshake)
    except LayerError as err:
        assert err.reason == "forbidden_origin"
    events = client.events()
    if allowed:
        assert isinstance(events[0], AcceptConnection)
        assert layer.ready
    else:
        assert isinstance(events[0], RejectConnection)
        assert events[0].status_code == 403
        assert isinstance(events[1], RejectData)
        assert layer.finished and not layer.ready


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("https://Example.COM", "https://example.com"),
        ("https://example.com:443/", "https://example.com"),
        ("http://example.com:8080", "http://example.com:8080"),
        ("http://[::1]:8081", "http://[::1]:8081"),
        ("example.com", None),
        ("ftp://example.com", None),
        ("https://example.com/path", None),
        ("https://user@example.com", None),
        ("http://example.com:99999", None),
    ],
)
def test_normalize_origin(text: str, normal: str | None) -> None:
    assert normalize_origin(text) == normal


def test_a_bad_origin_in_the_list_is_refused() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        WebSite.create(MAX_LINE, ("example.com",))
