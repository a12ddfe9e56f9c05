"""`--proto ws`: the generator's hand-written WebSocket client, alone and against `websockets`.

The codec is checked without sockets (RFC 6455's own handshake example,
masking, frame headers, the slow path's reader); then the generator runs
briefly against the `websockets` library's broadcast server
(bench/peers/websockets_server.py), which refuses unmasked client frames and
bad handshakes, so a clean run shows the client speaks the protocol.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchkit import (
    CHAT,
    FANOUT,
    FANOUT2,
    IDLE,
    PEERS,
    FaultyRelay,
    PeerProcess,
    assert_clean,
    bench,
    run_ratbench,
)
from ratbench.runner import uses_ws
from ratbench.wire import encode_line
from ratbench.ws import OP_PING, WsReader, WsWire, accept_value, check_upgrade, frame_header, mask

pytest.importorskip("websockets")


def test_accept_value_is_rfc_6455s_example() -> None:
    assert accept_value(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_check_upgrade() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    assert check_upgrade(ok + b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", key) is None
    assert "Accept" in (check_upgrade(ok + b"Sec-WebSocket-Accept: nope", key) or "")
    assert "did not switch" in (check_upgrade(b"HTTP/1.1 404 Not Found", key) or "")


@given(payload=st.binary(max_size=300), key=st.binary(min_size=4, max_size=4))
def test_mask_is_its_own_inverse(payload: bytes, key: bytes) -> None:
    masked = mask(payload, key)
    assert len(masked) == len(payload)
    assert mask(masked, key) == payload
    assert all(masked[i] == payload[i] ^ key[i % 4] for i in range(len(payload)))


def test_frame_headers() -> None:
    assert frame_header(63, masked=False) == b"\x81\x3f"
    assert frame_header(63, masked=True) == b"\x81\xbf"
    assert frame_header(200, masked=True) == b"\x81\xfe\x00\xc8"
    assert frame_header(70000, masked=False) == b"\x81\x7f" + (70000).to_bytes(8, "big")


@pytest.mark.parametrize("size", [64, 200, 70001])
def test_client_frames_decode_to_the_line(size: int) -> None:
    """What the generator sends, unmasked by a server, is the line without its newline."""
    wire = WsWire(size)
    line = encode_line(3, 7, 99, size)
    frame = wire.publish_one(line)
    head = frame_header(size - 1, masked=True)
    assert frame.startswith(head)
    key = frame[len(head) : len(head) + 4]
    assert mask(frame[len(head) + 4 :], key) == line[:-1]
    assert wire.payload_line(wire.received(line)) == line
    assert len(wire.received(line)) == wire.frame_size
    m = wire.frame_re.fullmatch(wire.received(line))
    assert m is not None and (int(m[1]), int(m[2]), int(m[3])) == (3, 7, 99)


def test_reader_skips_control_frames_and_joins_fragments() -> None:
    reader = WsReader()
    stream = (
        b"\x01\x03abc"  # text, not final
        + bytes([0x80 | OP_PING, 2])
        + b"hi"  # a ping in between
        + b"\x80\x04de\nf"  # continuation, final: "abcde\nf" -> two lines
        + b"\x81\x02gh"
    )
    lines: list[bytes | None] = []
    for i in range(len(stream)):  # one byte at a time
        lines += reader.feed(stream[i : i + 1])
    assert lines == [b"abcde\n", b"f\n", b"gh\n"]
    assert WsReader().feed(b"\x88\x00") == [None]  # a close frame is not data


@pytest.fixture(params=["asyncio", "uvloop"])
def websockets_peer(request: pytest.FixtureRequest) -> Iterator[PeerProcess]:
    cmd = [sys.executable, str(PEERS / "websockets_server.py"), "--port", "0"]
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
        cmd.append("--uvloop")
    peer = PeerProcess(cmd)
    yield peer
    peer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, FANOUT, IDLE], ids=["chat", "fanout", "idle"])
def test_smoke_websockets_peer(websockets_peer: PeerProcess, scenario: list[str]) -> None:
    s = bench(websockets_peer.port, *scenario, "--proto", "ws", pid=websockets_peer.proc.pid)
    assert_clean(s)
    assert s["proto"] == "ws"
    if scenario is not IDLE:
        assert s["slow_path_receivers"] == 0  # fixed-size frames: checked on the fast path


@pytest.mark.slow
def test_connect_churn_over_websocket(websockets_peer: PeerProcess) -> None:
    """Every churn connection is upgraded (101) before it is closed; newcomers get a line."""
    s = bench(websockets_peer.port, "connect", "--proto", "ws", "--duration", "0.5",
              "--max-connects", "200", "--newcomer-every", "50")  # fmt: skip
    assert s["proto"] == "ws" and s["anomalies"] == 0, s["newcomers"]["failures"]
    assert s["churn"]["completed"] > 0 and not s["churn"]["failed"]
    assert s["newcomers"]["ok"] == s["newcomers"]["count"] > 0


def test_connect_churn_counts_refused_upgrades() -> None:
    """A plain TCP relay answers no upgrade: the churn counts failures, the beacon says why."""
    relay = FaultyRelay(lambda r, n, line: [line])
    try:
        proc = run_ratbench("connect", "--proto", "ws", "--port", str(relay.port),
                            "--duration", "0.5", "--setup-timeout", "2")  # fmt: skip
    finally:
        relay.stop()
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "the beacon connection" in err and "WebSocket upgrade" in err
    assert "Traceback" not in err


def test_ws_against_a_line_server_is_a_clear_error() -> None:
    """--proto ws against a plain TCP relay: the upgrade fails with a sentence, exit 3."""
    relay = FaultyRelay(lambda r, n, line: [line])
    try:
        proc = run_ratbench("chat", "--proto", "ws", "--port", str(relay.port), "--duration", "1",
                            "--setup-timeout", "2")  # fmt: skip
    finally:
        relay.stop()
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "WebSocket upgrade" in err


class MixedPeer(PeerProcess):
    """The websockets peer with TCP line clients in the same broadcast (--tcp-port)."""

    def __init__(self) -> None:
        cmd = [sys.executable, str(PEERS / "websockets_server.py"), "--port", "0"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.tcp_port = s.getsockname()[1]
        super().__init__([*cmd, "--tcp-port", str(self.tcp_port)])


@pytest.fixture
def mixed_peer() -> Iterator[MixedPeer]:
    peer = MixedPeer()
    yield peer
    peer.stop()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [CHAT, FANOUT2, IDLE], ids=["chat", "fanout", "idle"])
def test_ws_fraction_mixes_tcp_and_websocket(mixed_peer: MixedPeer, scenario: list[str]) -> None:
    s = bench(
        mixed_peer.tcp_port, *scenario, "--ws-port", str(mixed_peer.port), "--ws-fraction", "0.5"
    )
    assert_clean(s)
    assert s["proto"] == "line+ws" and s["params"]["ws_fraction"] == 0.5
    if scenario is not IDLE:
        assert s["slow_path_receivers"] == 0


def test_ws_fraction_needs_a_ws_port() -> None:
    proc = run_ratbench("chat", "--ws-fraction", "0.5")
    assert proc.returncode == 2
    assert "--ws-fraction needs --ws-port" in proc.stderr.decode()
    assert run_ratbench("chat", "--ws-fraction", "1.5").returncode == 2


def test_ws_clients_are_spread_evenly() -> None:
    assert [uses_ws(i, 0.25) for i in range(8)] == [False, False, False, True] * 2
    assert sum(uses_ws(i, 0.3) for i in range(100)) == 30
    assert not any(uses_ws(i, 0.0) for i in range(10)) and all(uses_ws(i, 1.0) for i in range(10))
