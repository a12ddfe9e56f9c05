"""TLSLayer and Stack without sockets: the server layer against a client `SSLObject`.

The way h11 tests a connection pair: bytes from one side are fed to the
other, re-chunked at random (hypothesis), and what comes out must be what
went in.  Certificates come from `trustme`, made fresh for the test session.
"""

from __future__ import annotations

import itertools
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization  # trustme's own dependency
from hypothesis import given, settings
from hypothesis import strategies as st

from rat.hub import Turn
from rat.layer import Layer, LayerError, Stack
from rat.tls import CertificateError, Certificates, TLSLayer, load_context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pem_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A certificate for localhost/127.0.0.1 and its key, as PEM files."""
    where = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def server_context(pem_files: tuple[str, str]) -> ssl.SSLContext:
    return load_context(*pem_files)


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Client:
    """The client end: an SSLObject over memory buffers, driven by hand."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def handshake_step(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def wire(self) -> bytes:
        return self.outgoing.read()

    def feed(self, data: bytes) -> None:
        self.incoming.write(data)

    def read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


def handshake(client: Client, server: Layer) -> None:
    """Run the handshake to completion, feeding each side's bytes to the other."""
    for _ in range(10):
        done = client.handshake_step()
        wire = client.wire()
        if wire:
            assert server.receive(wire) == b""
        client.feed(server.outgoing())
        if done and server.ready:
            client.read_all()  # session tickets
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture
def pair(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> tuple[Client, TLSLayer]:
    client, server = Client(client_context), TLSLayer(server_context)
    handshake(client, server)
    return client, server


def split_at(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        yield data[start:end]


# --------------------------------------------------------------------------- handshake


def test_handshake_makes_the_layer_ready_with_tls_1_2_or_later(
    pair: tuple[Client, TLSLayer],
) -> None:
    client, server = pair
    assert server.ready
    assert not server.finished
    assert server.version in ("TLSv1.2", "TLSv1.3")
    assert client.obj.version() == server.version


def test_not_ready_before_the_handshake(server_context: ssl.SSLContext) -> None:
    layer = TLSLayer(server_context)
    assert not layer.ready
    assert layer.handshake_timeout == 10.0
    assert layer.name == "tls"


def test_tls_1_1_client_is_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
            old.minimum_version = ssl.TLSVersion.TLSv1_1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    client = Client(old)
    try:
        client.handshake_step()
    except ssl.SSLError:
        pytest.skip("this OpenSSL refuses to offer TLS 1.1")
    server = TLSLayer(server_context)
    with pytest.raises(LayerError) as caught:
        server.receive(client.wire())
    assert caught.value.reason == "tls_handshake"


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello, this is plain text\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff",  # a record that is no ClientHello
        bytes(range(256)),
    ],
    ids=["plain-text", "http", "bad-hello", "binary"],
)
def test_garbage_instead_of_a_client_hello_is_a_handshake_error(
    server_context: ssl.SSLContext, garbage: bytes
) -> None:
    layer = TLSLayer(server_context)
    with pytest.raises(LayerError) as caught:
        layer.receive(garbage)
    assert caught.value.reason == "tls_handshake"
    assert "\n" not in caught.value.detail  # one line for the log
    assert not layer.ready


def test_handshake_fed_one_byte_at_a_time(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client, server = Client(client_context), TLSLayer(server_context)
    client.handshake_step()
    for byte in client.wire():
        assert server.receive(bytes([byte])) == b""
    client.feed(server.outgoing())
    assert client.handshake_step()
    for byte in client.wire():
        server.receive(bytes([byte]))
    assert server.ready


# --------------------------------------------------------------------------- data


def test_several_records_in_one_feed_all_come_out_of_one_receive(
    pair: tuple[Client, TLSLayer],
) -> None:
    """The edge-triggered contract: after a feed, nothing may stay inside TLS."""
    client, server = pair
    for n in range(5):
        client.obj.write(b"record %d\n" % n)  # one record each
    wire = client.wire()
    assert server.receive(wire) == b"".join(b"record %d\n" % n for n in range(5))


def test_a_big_write_spanning_many_records_comes_out_whole(
    pair: tuple[Client, TLSLayer],
) -> None:
    client, server = pair
    data = bytes(range(256)) * 1000  # 256 kB: 16 records of 16 KiB
    client.obj.write(data)
    assert server.receive(client.wire()) == data


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=3000), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_any_chunking_of_the_client_stream_gives_the_same_bytes(
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    lines: list[bytes],
    cuts: list[int],
) -> None:
    client, server = Client(client_context), TLSLayer(server_context)
    handshake(client, server)
    for line in lines:
        if line:
            client.obj.write(line)
    wire = client.wire()
    got = b"".join(server.receive(chunk) for chunk in split_at(wire, cuts))
    assert got == b"".join(lines)


def test_first_lines_in_the_same_segment_as_the_finished_message(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """A client may send its first records right behind its Finished: one feed holds both."""
    client, server = Client(client_context), TLSLayer(server_context)
    client.handshake_step()
    server.receive(client.wire())
    client.feed(server.outgoing())
    assert client.handshake_step()
    client.obj.write(b"right behind the handshake\n")
    assert server.receive(client.wire()) == b"right behind the handshake\n"
    assert server.ready


def test_encode_is_one_write_that_the_client_decrypts(pair: tuple[Client, TLSLayer]) -> None:
    client, server = pair
    wire = server.encode(b"line one\nline two\n")
    client.feed(wire)
    assert client.read_all() == b"line one\nline two\n"
    assert server.encode(b"") == b""


def test_each_receiver_gets_its_own_ciphertext(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    pairs = []
    for _ in range(2):
        client, server = Client(client_context), TLSLayer(server_context)
        handshake(client, server)
        pairs.append((client, server))
    turn = Turn(b"shared line\n", 1, False)
    wires = [server.encode_turn(turn) for _, server in pairs]
    assert wires[0] != wires[1]  # different keys: nothing to share
    for (client, _), wire in zip(pairs, wires, strict=True):
        client.feed(wire)
        assert client.read_all() == b"shared line\n"


# --------------------------------------------------------------------------- closing


def test_close_notify_finishes_the_layer_after_the_data_before_it(
    pair: tuple[Client, TLSLayer],
) -> None:
    client, server = pair
    client.obj.write(b"last words\n")
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()  # sends close_notify, waits for ours
    assert server.receive(client.wire()) == b"last words\n"
    assert server.finished


def test_farewell_sends_the_message_then_close_notify(pair: tuple[Client, TLSLayer]) -> None:
    client, server = pair
    client.feed(server.farewell(b"ERR auth failed\n", "auth"))
    assert client.obj.read(100) == b"ERR auth failed\n"
    assert client.obj.read(100) == b""  # SSLObject's word for "close_notify received"


def test_farewell_before_the_handshake_sends_only_what_tls_has(
    server_context: ssl.SSLContext,
) -> None:
    layer = TLSLayer(server_context)
    assert layer.farewell(b"ERR server full\n", "shutdown") == b""


def test_corrupted_record_after_the_handshake_is_a_tls_error(
    pair: tuple[Client, TLSLayer],
) -> None:
    client, server = pair
    client.obj.write(b"good line\n")
    good = client.wire()
    client.obj.write(b"tampered\n")
    bad = bytearray(client.wire())
    bad[-1] ^= 0xFF  # breaks the record's authentication tag
    with pytest.raises(LayerError) as caught:
        server.receive(good + bytes(bad))
    assert caught.value.reason == "tls_error"
    assert caught.value.accepted == b"good line\n"


# --------------------------------------------------------------------------- Stack


class Brackets(Layer):
    """A toy inner layer: wire '[...]' <-> app '...'; its turn encoding is shared."""

    __slots__ = ("encoded_turns", "replies")

    name = "brackets"
    handshake_timeout = 3.0

    def __init__(self) -> None:
        self.encoded_turns = 0
        self.replies = b""

    def receive(self, data: bytes) -> bytes:
        if data == b"ping":
            self.replies += b"pong"
            return b""
        return data.replace(b"[", b"").replace(b"]", b"")

    def outgoing(self) -> bytes:
        out, self.replies = self.replies, b""
        return out

    def encode(self, data: bytes) -> bytes:
        return b"[" + data + b"]"

    def encode_turn(self, turn: Turn) -> bytes:
        def build(t: Turn) -> bytes:
            self.encoded_turns += 1
            return self.encode(t.data)

        result: bytes = turn.encoded("brackets", build)
        return result

    def farewell(self, message: bytes, reason: str) -> bytes:
        return self.encode(message) + b"<close " + reason.encode() + b">"


def stacked(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[Client, Stack, Brackets]:
    inner = Brackets()
    stack = Stack(TLSLayer(server_context), inner, name="brackets-tls")
    client = Client(client_context)
    handshake(client, stack)
    return client, stack, inner


def test_stack_receives_through_outer_then_inner(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client, stack, _ = stacked(server_context, client_context)
    assert stack.ready
    assert stack.name == "brackets-tls"
    assert stack.handshake_timeout == 10.0
    client.obj.write(b"[hello\n]")
    assert stack.receive(client.wire()) == b"hello\n"


def test_stack_wraps_the_inner_replies_in_the_outer_layer(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client, stack, _ = stacked(server_context, client_context)
    client.obj.write(b"ping")
    assert stack.receive(client.wire()) == b""
    client.feed(stack.outgoing())
    assert client.read_all() == b"pong"


def test_stack_shares_the_inner_turn_encoding_and_encrypts_per_receiver(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    receivers = [stacked(server_context, client_context) for _ in range(3)]
    turn = Turn(b"to all\n", 1, False)
    wires = [stack.encode_turn(turn) for _, stack, _ in receivers]
    assert sum(inner.encoded_turns for _, _, inner in receivers) == 1  # built once
    assert len(set(wires)) == 3  # encrypted three times
    for (client, _, _), wire in zip(receivers, wires, strict=True):
        client.feed(wire)
        assert client.read_all() == b"[to all\n]"


def test_stack_farewell_is_the_inner_goodbye_then_close_notify(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client, stack, _ = stacked(server_context, client_context)
    client.feed(stack.farewell(b"bye\n", "shutdown"))
    assert client.obj.read(100) == b"[bye\n]<close shutdown>"
    assert client.obj.read(100) == b""  # SSLObject's word for "close_notify received"


def test_stack_is_finished_when_either_layer_is(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    client, stack, _ = stacked(server_context, client_context)
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    stack.receive(client.wire())
    assert stack.finished


# --------------------------------------------------------------------------- files


def test_load_context_accepts_a_good_pair(pem_files: tuple[str, str]) -> None:
    context = load_context(*pem_files)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_missing_certificate_names_the_file(pem_files: tuple[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(CertificateError, match=r"cannot read .*nope\.pem: No such file"):
        load_context(missing, pem_files[1])


def test_missing_key_names_the_file(pem_files: tuple[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nokey.pem")
    with pytest.raises(CertificateError, match=r"nokey\.pem"):
        load_context(pem_files[0], missing)


def test_certificate_that_is_not_pem_names_the_certificate(
    pem_files: tuple[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad-cert.pem"
    bad.write_text("this is not a certificate\n")
    with pytest.raises(CertificateError, match=r"bad-cert\.pem: not a PEM certificate"):
        load_context(str(bad), pem_files[1])


def test_key_that_is_not_pem_names_the_key(pem_files: tuple[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertificateError, match=r"bad-key\.pem: not a PEM private key"):
        load_context(pem_files[0], str(bad))


def test_key_of_another_certificate_is_named_as_such(
    ca: trustme.CA, pem_files: tuple[str, str], tmp_path: Path
) -> None:
    other = tmp_path / "other-key.pem"
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(other))
    with pytest.raises(CertificateError, match=r"other-key\.pem: this key does not belong to"):
        load_context(pem_files[0], str(other))


def test_encrypted_key_is_refused_without_prompting(
    pem_files: tuple[str, str], tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(Path(pem_files[1]).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CertificateError, match=r"encrypted-key\.pem: the key is encrypted"):
        load_context(pem_files[0], str(encrypted))


def test_reload_swaps_the_context_and_a_bad_reload_keeps_the_old_one(
    ca: trustme.CA, tmp_path: Path
) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = ca.issue_cert("localhost")
    first.cert_chain_pems[0].write_to_path(str(cert_path))
    first.private_key_pem.write_to_path(str(key_path))
    certificates = Certificates(str(cert_path), str(key_path))
    old = certificates.context

    second = ca.issue_cert("localhost")
    second.cert_chain_pems[0].write_to_path(str(cert_path))
    second.private_key_pem.write_to_path(str(key_path))
    assert certificates.reload()
    assert certificates.context is not old

    current = certificates.context
    cert_path.write_text("broken\n")
    assert not certificates.reload()
    assert certificates.context is current


def test_tls_seals_and_so_does_a_stack_over_it(server_context: ssl.SSLContext) -> None:
    """A sealing layer's queued bytes can never be dropped (LayeredConn, "Backlogs")."""
    assert TLSLayer(server_context).seals
    assert not Brackets().seals
    assert Stack(TLSLayer(server_context), Brackets()).seals
